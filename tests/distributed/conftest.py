"""Fixtures of the Ray tests: offline switches, tiny packed real text, one embedded Ray per session."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flm.config import BPETokenizer, FilesSource, PackingParams, Params

TINY_MODEL = {"d_model": 32, "n_layers": 2, "n_heads": 2, "cond_dim": 32, "time_freq_dim": 32}
TINY_LOOP = {
    "steps": 12, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "ema_decay": 0.9, "val_every": 0,
    "val_batches": 2, "ckpt_every": 4, "keep_last": 2, "log_every": 2, "sample_n": 1, "sample_steps": [2],
}


def tiny_params(**sections: dict) -> Params:
    """A tiny FLM/FMLM parameter tree (sections override the tiny defaults key by key)."""
    tree = {"model": TINY_MODEL, "train": TINY_LOOP, "distill": TINY_LOOP | {"sample_steps": [1]}}
    for name, values in sections.items():
        tree[name] = tree.get(name, {}) | values
    return Params.model_validate(tree)


@pytest.fixture(scope="session")
def state_root() -> Iterator[Path]:
    """A short path for Ray's files (unix socket paths must stay under 107 characters)."""
    root = Path(tempfile.mkdtemp(prefix="flm-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """200 BBC articles -> BPE (V = 384) -> blocks of L = 16, with the project's data code."""
    from flm.data.corpus import build_corpus
    from flm.data.packaged import iter_packaged
    from flm.data.packing import pack
    from flm.data.tokenizer import build_tokenizer

    root = tmp_path_factory.mktemp("tiny_data")
    docs = list(iter_packaged("bbc_news"))[::11][:200]
    source_file = root / "in" / "docs.jsonl"
    source_file.parent.mkdir(parents=True)
    source_file.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in docs), encoding="utf-8")
    build_corpus(FilesSource(paths=(str(source_file),), val_fraction=0.1), root / "corpus", progress=False)
    build_tokenizer(BPETokenizer(vocab_size=384), root / "corpus", progress=False).save(root / "tokenizer")
    pack(root / "corpus", root / "tokenizer", root / "tokens", PackingParams(seq_len=16), progress=False)
    return {"root": root, "tokenizer": root / "tokenizer", "tokens": root / "tokens"}


@pytest.fixture(scope="session", autouse=True)
def _hermetic(state_root: Path) -> Iterator[None]:
    """Telemetry off and tool state in a temporary directory, before Ray is first imported."""
    import os

    from flm.environment import hermetic

    saved = dict(os.environ)
    hermetic(state_root / "state")
    yield
    os.environ.clear()
    os.environ.update(saved)
