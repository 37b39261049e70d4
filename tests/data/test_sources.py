"""Every source kind, read for real: packaged corpora, the user's files, HF datasets on local files."""

from __future__ import annotations

from pathlib import Path

from flm.config import FilesSource, HFSource, PackagedSource
from flm.data.corpus import build_corpus, iter_corpus_batches, read_corpus_meta
from flm.data.detokenize import lm1b, wikitext
from flm.data.documents import hash_split, val_score
from flm.data.packaged import iter_packaged
from flm.data.sources import iter_documents

from .conftest import write_jsonl, write_parquet


def corpus_texts(folder: Path, split: str) -> list[str]:
    return [text for batch in iter_corpus_batches(folder, split) for text in batch]


# ----------------------------------------------------------------------------- packaged
def test_bbc_news(bbc_docs: list[str]) -> None:
    assert len(bbc_docs) == 2225
    assert 4_900_000 < sum(map(len, bbc_docs)) < 5_100_000
    assert bbc_docs[0].startswith("Ad sales boost Time Warner profit\n\n")
    assert not any("\ufffd" in text for text in bbc_docs)  # the one Windows-1252 file decoded right
    assert sum("£" in text for text in bbc_docs) > 100


def test_shakespeare_scenes() -> None:
    scenes = list(iter_packaged("shakespeare"))
    assert 750 < len(scenes) < 850
    assert 4_800_000 < sum(map(len, scenes)) < 5_200_000
    hamlet = [s for s in scenes if s.startswith("Hamlet\nACT I\nSCENE I.")]
    assert len(hamlet) == 1 and "BERNARDO:\nWho's there?" in hamlet[0]
    assert not any("**" in s for s in scenes)


def test_wikipedia_articles() -> None:
    articles = list(iter_packaged("wikipedia"))
    assert len(articles) == 106
    assert 2_700_000 < sum(map(len, articles)) < 3_100_000
    autism = next(a for a in articles if a.startswith("Autism\n\n"))
    assert "neurodevelopmental disorder" in autism
    markup = sum(a.count("{{") + a.count("[[") + a.count("thumb|") + a.count("<ref") for a in articles)
    assert markup == 0


def test_packaged_source_is_hash_split() -> None:
    source = PackagedSource(corpora=("bbc_news",), val_fraction=0.1)
    docs = list(iter_documents(source))
    assert len(docs) == 2225
    assert all(doc.split == hash_split(doc.text, 0.1) for doc in docs)
    share = sum(doc.split == "val" for doc in docs) / len(docs)
    assert 0.08 < share < 0.12


def test_val_score_is_uniform_and_content_only() -> None:
    scores = [val_score(f"document number {i}") for i in range(4000)]
    assert all(0.0 <= s < 1.0 for s in scores)
    assert abs(sum(scores) / len(scores) - 0.5) < 0.02
    # the BLAKE2b-64 digest 6744541113ccf498 of b"same text" (hashlib, outside the project): no salt, no process state
    assert val_score("same text") == 0x6744541113CCF498 / 2.0**64


# ----------------------------------------------------------------------------- files
def test_txt_modes(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("first line\nsecond line\n\n\nthird para\nstill third\n", encoding="utf-8")
    read = {
        mode: [d.text for d in iter_documents(FilesSource(paths=(str(path),), txt_docs=mode, val_fraction=0.5))]
        for mode in ("file", "line", "paragraph")
    }
    assert read["file"] == [path.read_text()]
    assert read["line"] == ["first line", "second line", "", "", "third para", "still third"]
    assert read["paragraph"] == ["first line\nsecond line", "third para\nstill third"]


def test_jsonl_parquet_and_globs(tmp_path: Path, bbc_docs: list[str]) -> None:
    texts = bbc_docs[:30]
    write_jsonl(tmp_path / "in" / "a.jsonl", texts[:10], field="body")
    write_parquet(tmp_path / "in" / "sub" / "b.parquet", texts[10:20], field="body")
    (tmp_path / "in" / "sub" / "c.txt").write_text(texts[20], encoding="utf-8")
    source = FilesSource(paths=(f"{tmp_path}/in/**/*.*",), text_field="body")
    got = [d.text for d in iter_documents(source)]
    assert got == texts[:10] + texts[10:20] + [texts[20]]  # a.jsonl, sub/b.parquet, sub/c.txt


def test_explicit_val_files(tmp_path: Path, bbc_docs: list[str]) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", bbc_docs[:20])
    val = write_jsonl(tmp_path / "val.jsonl", bbc_docs[20:25])
    docs = list(iter_documents(FilesSource(paths=(str(train),), val_paths=(str(val),))))
    assert [d.split for d in docs] == ["train"] * 20 + ["val"] * 5
    assert [d.text for d in docs] == bbc_docs[:25]


# ----------------------------------------------------------------------------- hf (local files)
def test_hf_json_with_named_val_split(tmp_path: Path, bbc_docs: list[str]) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", bbc_docs[:50], field="content")
    test = write_jsonl(tmp_path / "test.jsonl", bbc_docs[50:60], field="content")
    source = HFSource(
        path="json", data_files={"train": str(train), "test": str(test)}, val_split="test", text_field="content"
    )
    docs = list(iter_documents(source))
    assert [d.text for d in docs] == bbc_docs[:60]
    assert [d.split for d in docs] == ["train"] * 50 + ["val"] * 10


def test_hf_parquet_last_n_held_out_and_cap(tmp_path: Path, bbc_docs: list[str]) -> None:
    data = write_parquet(tmp_path / "owt.parquet", bbc_docs[:100])
    source = HFSource(path="parquet", data_files=str(data), val_last_n=10)
    docs = list(iter_documents(source))
    assert [d.text for d in docs if d.split == "train"] == bbc_docs[:90]
    assert [d.text for d in docs if d.split == "val"] == bbc_docs[90:100]
    capped = list(iter_documents(source.model_copy(update={"max_docs": 3})))
    assert [d.text for d in capped] == bbc_docs[:3] + bbc_docs[90:93]


def test_hf_hash_split_streaming_and_detokenize(tmp_path: Path) -> None:
    lines = [f"It 's line {i} , he said ." for i in range(200)]
    data = tmp_path / "lm1b.txt"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for streaming in (False, True):
        source = HFSource(path="text", data_files=str(data), detokenize="lm1b", streaming=streaming, val_fraction=0.2)
        docs = list(iter_documents(source))
        assert [d.text for d in docs] == [f"It's line {i}, he said." for i in range(200)]
        assert all(d.split == hash_split(d.text, 0.2) for d in docs)


def test_detokenizers() -> None:
    assert lm1b("He said : \" it 's fine , isn 't it ? \" ( really ) $ 5 .") == (
        "He said: \"it's fine, isn't it?\" (really) $5."
    )
    assert wikitext(" The 1 @,@ 000 @-@ year war ( 1337 – 1453 ) ended . \n") == (
        " The 1,000-year war (1337 – 1453) ended.\n"
    )


# ----------------------------------------------------------------------------- corpus on disk
def test_build_corpus_round_trip(tmp_path: Path, small_docs: list[str]) -> None:
    source = FilesSource(paths=(str(write_jsonl(tmp_path / "d.jsonl", [*small_docs, "   ", ""])),))
    meta = build_corpus(source, tmp_path / "corpus", progress=False)
    train, val = corpus_texts(tmp_path / "corpus", "train"), corpus_texts(tmp_path / "corpus", "val")
    assert sorted(train + val) == sorted(small_docs)  # every non-blank document, once
    assert not set(train) & set(val)
    assert meta["blank_docs_skipped"] == 2
    assert meta["splits"]["train"]["docs"] == len(train)
    assert meta["splits"]["val"]["chars"] == sum(map(len, val))
    assert read_corpus_meta(tmp_path / "corpus")["fingerprint"] == meta["fingerprint"]


def test_corpus_cap_per_split(tmp_path: Path, bbc_docs: list[str]) -> None:
    source = PackagedSource(corpora=("bbc_news",), val_fraction=0.2, max_docs=40)
    meta = build_corpus(source, tmp_path / "corpus", progress=False)
    assert meta["splits"]["train"]["docs"] == meta["splits"]["val"]["docs"] == 40
    assert corpus_texts(tmp_path / "corpus", "train") == [t for t in bbc_docs if hash_split(t, 0.2) == "train"][:40]
