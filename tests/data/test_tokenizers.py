"""Every tokenizer kind: char (fixed), bpe (trained here), gpt2 (offline file), hf (local stand-ins)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from flm.config import BPETokenizer, CharTokenizer, DataParams, FilesSource, GPT2Tokenizer, HFTokenizer
from flm.data.corpus import build_corpus
from flm.data.errors import DataError
from flm.data.tokenizer import TextTokenizer, build_tokenizer, load_tokenizer

from .conftest import EDGE_DOCS, write_jsonl


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory, small_docs: list[str]) -> Path:
    root = tmp_path_factory.mktemp("tok")
    source = FilesSource(paths=(str(write_jsonl(root / "docs.jsonl", small_docs)),), val_fraction=0.1)
    build_corpus(source, root / "corpus", progress=False)
    return root / "corpus"


@pytest.fixture(scope="module")
def gpt2() -> TextTokenizer:
    return build_tokenizer(GPT2Tokenizer(), progress=False)


# ----------------------------------------------------------------------------- char
def test_char_ids_are_printable_ascii_codes(tmp_path: Path) -> None:
    tok = build_tokenizer(CharTokenizer(), progress=False)
    info = tok.info
    assert (info.kind, info.name, info.vocab_size, info.bos_id, info.eos_id, info.pad_id) == (
        "char", "char-ascii", 97, 95, 95, 96)
    text = "The cat, 42 ~ {ok}!"
    assert tok.encode_batch([text])[0] == [ord(c) - 32 for c in text]
    assert tok.decode(tok.wrap(tok.encode_batch([text])[0])) == text  # separators dropped when decoding
    assert DataParams(tokenizer="char").tokenizer == CharTokenizer()
    tok.save(tmp_path / "tok")
    assert load_tokenizer(tmp_path / "tok").info == info


@pytest.mark.parametrize(("text", "normalized"), [
    ("Café déjà vu", "Cafe deja vu"),                      # NFKD: the accent is dropped, the letter kept
    ("one\n\ntwo\t three", "one two three"),               # every run of white space is one space
    ("a — b “quoted” ﬁne", "a b quoted fine"),             # other non-ASCII goes (the ligature decomposes)
    ("fake <|endoftext|> separator", "fake <|endoftext|> separator"),  # specials in text stay text
])
def test_char_normalization(text: str, normalized: str) -> None:
    tok = build_tokenizer(CharTokenizer(), progress=False)
    ids = tok.encode_batch([text])[0]
    assert tok.decode(ids) == normalized
    assert ids == [ord(c) - 32 for c in normalized] and max(ids) < 95


# ----------------------------------------------------------------------------- bpe
def test_bpe_vocabulary_specials_and_round_trip(corpus_dir: Path, small_docs: list[str]) -> None:
    tok = build_tokenizer(BPETokenizer(vocab_size=1024), corpus_dir, progress=False)
    info = tok.info
    assert (info.kind, info.vocab_size, info.bos_id, info.eos_id, info.pad_id) == ("bpe", 1024, 0, 0, 1)
    ids = tok.encode_batch(small_docs)
    assert all(tok.decode(i) == text for i, text in zip(ids, small_docs, strict=True))  # byte-level: lossless
    assert all(0 <= t < 1024 for doc in ids for t in doc)
    assert sum(map(len, ids)) < sum(map(len, small_docs)) / 2.2  # it learned merges: > 2.2 chars a token
    literal = tok.encode_batch([EDGE_DOCS[1]])[0]
    assert 0 not in literal and 1 not in literal  # "<|endoftext|>" written in text is not a separator
    assert tok.wrap([5, 6]) == [5, 6, 0]


def test_bpe_is_deterministic_and_saves(corpus_dir: Path, tmp_path: Path) -> None:
    first = build_tokenizer(BPETokenizer(vocab_size=700), corpus_dir, progress=False)
    second = build_tokenizer(BPETokenizer(vocab_size=700), corpus_dir, progress=False)
    assert first.info == second.info  # same sha256 of tokenizer.json
    first.save(tmp_path / "tok")
    assert load_tokenizer(tmp_path / "tok").info == first.info
    assert json.loads((tmp_path / "tok" / "meta.json").read_text())["vocab_size"] == 700


def test_bpe_on_fewer_documents_differs(corpus_dir: Path) -> None:
    full = build_tokenizer(BPETokenizer(vocab_size=700), corpus_dir, progress=False)
    few = build_tokenizer(BPETokenizer(vocab_size=700, max_train_docs=5), corpus_dir, progress=False)
    assert few.info.sha256 != full.info.sha256


# ----------------------------------------------------------------------------- gpt2
def test_gpt2_known_ids(gpt2: TextTokenizer) -> None:
    assert gpt2.vocab_size == 50257
    assert (gpt2.info.bos_id, gpt2.info.eos_id, gpt2.info.pad_id) == (50256, 50256, 50256)
    assert gpt2.encode_batch(["Hello world", " the", "<|endoftext|>"]) == [
        [15496, 995],
        [262],
        [27, 91, 437, 1659, 5239, 91, 29],  # the literal string, not the special token
    ]
    assert gpt2.wrap([15496, 995]) == [15496, 995, 50256]


def test_gpt2_matches_tiktoken(gpt2: TextTokenizer, bbc_docs: list[str]) -> None:
    tiktoken = pytest.importorskip("tiktoken")
    from flm.data.gpt2 import gpt2_tiktoken_path, load_ranks

    pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    reference = tiktoken.Encoding(
        "gpt2", pat_str=pattern, mergeable_ranks=load_ranks(gpt2_tiktoken_path()), special_tokens={}
    )
    texts = bbc_docs[::10] + EDGE_DOCS
    assert gpt2.encode_batch(texts) == [reference.encode_ordinary(t) for t in texts]


def test_gpt2_round_trip(gpt2: TextTokenizer, small_docs: list[str]) -> None:
    ids = gpt2.encode_batch(small_docs)
    assert [gpt2.decode(i) for i in ids] == small_docs


# ----------------------------------------------------------------------------- hf (local stand-ins)
def test_hf_local_stand_in_for_gpt2(gpt2: TextTokenizer, tmp_path: Path) -> None:
    """What ``hf:gpt2`` fetches from the Hub is a tokenizer.json: here, the offline one."""
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "tokenizer.json").write_text(gpt2.tokenizer.to_str(), encoding="utf-8")
    tok = build_tokenizer(HFTokenizer(name=str(tmp_path / "gpt2")))
    assert (tok.info.kind, tok.vocab_size, tok.info.eos_id, tok.info.pad_id) == ("hf", 50257, 50256, 50256)
    assert tok.wrap([1]) == [1, 50256]  # BOS is EOS: not repeated
    assert tok.encode_batch(["Hello world"]) == [[15496, 995]]


def test_hf_added_pad_is_the_last_id_as_in_the_reference_gpt2(gpt2: TextTokenizer, tmp_path: Path) -> None:
    """The paper's OWT tokenizer is GPT-2 plus an added [PAD]: V = 50,258, saved and reloaded."""
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "tokenizer.json").write_text(gpt2.tokenizer.to_str(), encoding="utf-8")
    tok = build_tokenizer(HFTokenizer(name=str(tmp_path / "gpt2"), add_pad=True))
    assert (tok.vocab_size, tok.info.eos_id, tok.info.pad_id) == (50258, 50256, 50257)
    assert tok.encode_batch(["Hello world [PAD]"])[0][:2] == [15496, 995]  # text never makes the pad id
    assert 50257 not in tok.encode_batch(["Hello world [PAD]"])[0]
    tok.save(tmp_path / "saved")
    assert load_tokenizer(tmp_path / "saved").info == tok.info


def bert_like(folder: Path, truncate: int | None = None, config: dict | None = None) -> Path:
    """A small uncased WordPiece tokenizer with BERT's special tokens, saved like a Hub repo."""
    words = ["the", "a", "of", "to", "and", "in", "is", "was", "he", "she", "it", "said"]
    words += ["year", "government", "people", "new"]
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *"abcdefghij"])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    if truncate:
        tok.enable_truncation(truncate)
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def test_hf_bert_like_specials_and_no_truncation(tmp_path: Path) -> None:
    folder = bert_like(tmp_path / "bert", truncate=4, config={"do_lower_case": True})
    tok = build_tokenizer(HFTokenizer(name=str(folder)))
    assert (tok.info.bos_id, tok.info.eos_id, tok.info.pad_id) == (2, 3, 0)  # [CLS], [SEP], [PAD]
    ids = tok.encode_batch(["The government said the people was new in the year"])[0]
    assert len(ids) == 10  # the tokenizer.json's truncation (4) was switched off
    assert tok.wrap(ids[:2]) == [2, *ids[:2], 3]
    assert tok.decode(ids) == "the government said the people was new in the year"


def test_hf_specials_from_config_and_overrides(tmp_path: Path) -> None:
    config = {"bos_token": {"content": "[MASK]"}, "eos_token": "[CLS]"}
    folder = bert_like(tmp_path / "cfg", config=config)
    tok = build_tokenizer(HFTokenizer(name=str(folder)))
    assert (tok.info.bos_id, tok.info.eos_id) == (4, 2)
    tok = build_tokenizer(HFTokenizer(name=str(folder), bos="[SEP]", eos="[PAD]", pad="[UNK]"))
    assert (tok.info.bos_id, tok.info.eos_id, tok.info.pad_id) == (3, 0, 1)
    with pytest.raises(DataError, match=r"data\.tokenizer\.eos: '<eos>' is not in the tokenizer's vocabulary"):
        build_tokenizer(HFTokenizer(name=str(folder), eos="<eos>"))


def test_hf_hub_name_offline_says_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).parent)  # "bert-base-uncased" is no local folder here
    with pytest.raises(DataError, match=r"data\.tokenizer\.name: cannot fetch 'bert-base-uncased'.*network"):
        build_tokenizer(HFTokenizer(name="bert-base-uncased"))
