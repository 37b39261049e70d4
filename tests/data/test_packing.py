"""Packing invariants: round trips, every token in exactly one block, disjoint splits, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from flm.config import BPETokenizer, FilesSource, HFTokenizer, PackagedSource, PackingParams
from flm.data.blocks import TokenBlocks, load_tokens_meta
from flm.data.corpus import build_corpus, iter_corpus_batches
from flm.data.errors import DataError
from flm.data.packing import pack, shard_dtype
from flm.data.tokenizer import build_tokenizer, load_tokenizer

from .conftest import leftovers, write_jsonl


def corpus_texts(folder: Path, split: str) -> list[str]:
    return [text for batch in iter_corpus_batches(folder, split) for text in batch]


def content(blocks: TokenBlocks, split_meta: dict) -> np.ndarray:
    """The split's stream without the PAD tail."""
    stream = blocks.stream()
    assert stream.size == split_meta["blocks"] * blocks.seq_len
    return stream[: split_meta["tokens"]]


@pytest.mark.parametrize("split", ["train", "val"])
def test_decoding_packed_documents_gives_their_text(built: dict[str, Path], split: str) -> None:
    tok = load_tokenizer(built["tokenizer"])
    meta = load_tokens_meta(built["tokens"])
    stream = content(TokenBlocks(built["tokens"], split), meta["splits"][split])
    eos = tok.info.eos_id
    assert stream[-1] == eos
    cuts = np.flatnonzero(stream == eos)
    pieces = np.split(stream, cuts + 1)[:-1]  # each piece is one document followed by its EOS
    assert [tok.decode(p[:-1].tolist()) for p in pieces] == corpus_texts(built["corpus"], split)


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_token_lands_in_exactly_one_block(built: dict[str, Path], split: str) -> None:
    tok = load_tokenizer(built["tokenizer"])
    meta = load_tokens_meta(built["tokens"])
    info = meta["splits"][split]
    blocks = TokenBlocks(built["tokens"], split)
    texts = corpus_texts(built["corpus"], split)
    expected = np.array([t for ids in tok.encode_batch(texts) for t in tok.wrap(ids)], dtype=np.int64)
    assert info["tokens"] == expected.size
    assert info["blocks"] == len(blocks) == -(-expected.size // 64)
    assert info["pad_tokens"] == len(blocks) * 64 - expected.size < 64
    joined = np.concatenate([blocks[i] for i in range(len(blocks))]).astype(np.int64)
    assert np.array_equal(joined[: expected.size], expected)  # in order, none lost, none twice
    assert np.all(joined[expected.size :] == tok.info.pad_id)
    assert joined.max() < meta["V"]


def test_no_document_in_both_splits(built: dict[str, Path], small_docs: list[str]) -> None:
    train, val = corpus_texts(built["corpus"], "train"), corpus_texts(built["corpus"], "val")
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(small_docs)
    assert 0.05 < len(val) / len(small_docs) < 0.16  # val_fraction = 0.1


def test_meta_describes_the_shards(built: dict[str, Path]) -> None:
    meta = load_tokens_meta(built["tokens"])
    corpus = json.loads((built["corpus"] / "meta.json").read_text())
    tok = json.loads((built["tokenizer"] / "meta.json").read_text())
    assert (meta["V"], meta["L"], meta["dtype"]) == (1024, 64, "uint16")
    assert meta["source_fingerprint"] == corpus["fingerprint"]
    assert meta["tokenizer"]["sha256"] == tok["sha256"]
    for split in ("train", "val"):
        files = [built["tokens"] / s["file"] for s in meta["splits"][split]["shards"]]
        assert sum(f.stat().st_size for f in files) == meta["splits"][split]["blocks"] * 64 * 2


def build_all(root: Path, docs: Path, **packing: int) -> Path:
    source = FilesSource(paths=(str(docs),), val_fraction=0.1)
    build_corpus(source, root / "corpus", progress=False)
    build_tokenizer(BPETokenizer(vocab_size=600), root / "corpus", progress=False).save(root / "tokenizer")
    pack(root / "corpus", root / "tokenizer", root / "tokens", PackingParams(seq_len=32, **packing), progress=False)
    return root


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_input_gives_byte_identical_outputs(tmp_path: Path, small_docs: list[str]) -> None:
    docs = write_jsonl(tmp_path / "in.jsonl", small_docs[:150])
    first = build_all(tmp_path / "a", docs)
    second = build_all(tmp_path / "b", docs)
    a, b = file_bytes(first), file_bytes(second)
    assert a.keys() == b.keys() and any(k.endswith(".bin") for k in a)
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]


def test_shards_split_the_same_stream(tmp_path: Path, small_docs: list[str]) -> None:
    docs = write_jsonl(tmp_path / "in.jsonl", small_docs[:150])
    one = build_all(tmp_path / "one", docs)
    many = build_all(tmp_path / "many", docs, shard_tokens=32 * 100)
    shards = load_tokens_meta(many / "tokens")["splits"]["train"]["shards"]
    assert len(shards) > 3 and all(s["blocks"] == 100 for s in shards[:-1])
    a, b = TokenBlocks(one / "tokens", "train"), TokenBlocks(many / "tokens", "train")
    assert len(a) == len(b)
    assert np.array_equal(a.stream(), b.stream())
    assert np.array_equal(a[len(a) - 1], b[-1]) and np.array_equal(a[150], b[150])


def test_distinct_bos_wraps_each_document(tmp_path: Path, small_docs: list[str]) -> None:
    """A BERT-like tokenizer (as for LM1B): [CLS] doc [SEP] [CLS] doc [SEP] ..."""
    from .test_tokenizers import bert_like

    folder = bert_like(tmp_path / "bert")
    source = FilesSource(paths=(str(write_jsonl(tmp_path / "in.jsonl", small_docs[:40])),), val_fraction=0.3)
    build_corpus(source, tmp_path / "corpus", progress=False)
    build_tokenizer(HFTokenizer(name=str(folder))).save(tmp_path / "tok")
    meta = pack(tmp_path / "corpus", tmp_path / "tok", tmp_path / "tokens", PackingParams(seq_len=16), progress=False)
    stream = content(TokenBlocks(tmp_path / "tokens", "val"), meta["splits"]["val"])
    docs = meta["splits"]["val"]["docs"]
    assert stream[0] == 2 and stream[-1] == 3
    assert (stream == 2).sum() == (stream == 3).sum() == docs
    assert meta["splits"]["val"]["separator_tokens"] == 2 * docs


def word_level(folder: Path, size: int) -> Path:
    """A word-level tokenizer with ``size`` ids: real words first, then filler entries."""
    from .conftest import EDGE_DOCS

    words = sorted({w for text in EDGE_DOCS for w in text.split()})
    vocab = {w: i for i, w in enumerate(["<unk>", "</s>", "<pad>", *words])}
    vocab |= {f"w{i}": i for i in range(len(vocab), size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<unk>", "</s>", "<pad>"])
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_large_vocabulary_goes_to_uint32(tmp_path: Path, bbc_docs: list[str]) -> None:
    word_level(tmp_path / "big", 70_000)
    source = FilesSource(paths=(str(write_jsonl(tmp_path / "in.jsonl", bbc_docs[:60])),), val_fraction=0.3)
    build_corpus(source, tmp_path / "corpus", progress=False)
    tok = build_tokenizer(HFTokenizer(name=str(tmp_path / "big")))
    assert (tok.vocab_size, tok.info.eos_id, tok.info.pad_id) == (70_000, 1, 2)
    tok.save(tmp_path / "tok")
    meta = pack(tmp_path / "corpus", tmp_path / "tok", tmp_path / "tokens", PackingParams(seq_len=16), progress=False)
    assert meta["dtype"] == "uint32"
    size = sum((tmp_path / "tokens" / s["file"]).stat().st_size for s in meta["splits"]["train"]["shards"])
    assert size == meta["splits"]["train"]["blocks"] * 16 * 4
    assert TokenBlocks(tmp_path / "tokens", "train")[0].dtype == np.uint32


def test_shard_dtype_boundaries() -> None:
    assert shard_dtype(4096) == np.uint16
    assert shard_dtype(65_536) == np.uint16  # ids 0..65,535 fit
    assert shard_dtype(65_537) == np.uint32
    assert shard_dtype(100, "uint32") == np.uint32
    with pytest.raises(DataError, match=r"data\.packing\.dtype: uint16 .* V = 65,537"):
        shard_dtype(65_537, "uint16")


def test_packaged_source_end_to_end(tmp_path: Path) -> None:
    """Packaged corpora -> bpe -> pack, capped at 60 documents per split."""
    source = PackagedSource(corpora=("shakespeare", "bbc_news"), max_docs=60)
    build_corpus(source, tmp_path / "corpus", progress=False)
    build_tokenizer(BPETokenizer(vocab_size=2000), tmp_path / "corpus", progress=False).save(tmp_path / "tok")
    meta = pack(tmp_path / "corpus", tmp_path / "tok", tmp_path / "tokens", PackingParams(), progress=False)
    assert meta["splits"]["train"]["docs"] == meta["splits"]["val"]["docs"] == 60
    assert meta["splits"]["train"]["blocks"] > 100
    assert leftovers(tmp_path) == []
