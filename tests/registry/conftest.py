"""Fixtures of the generation tests: telemetry off, a tiny BPE tokenizer, tiny FLM and FMLM checkpoints."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from flm.environment import TELEMETRY_OFF
from tests.threads import _one_thread  # noqa: F401  (this directory's autouse fixture)

from .helpers import tiny_checkpoint

VOCAB = 320


@pytest.fixture(scope="session", autouse=True)
def _offline_env() -> Iterator[None]:
    """Telemetry off; MLflow never falls back to ``./mlruns`` (every test names its store)."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in TELEMETRY_OFF.items():
            patch.setenv(key, value)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer (``V = 320``) trained on 60 packaged BBC articles (~0.2 s)."""
    from flm.data.bpe import EOT, PAD, train_bpe
    from flm.data.packaged import iter_packaged
    from flm.data.tokenizer import finish

    docs = list(itertools.islice(iter_packaged("bbc_news"), 60))
    bpe = train_bpe([docs], VOCAB, 2, num_docs=len(docs), progress=False)
    eot = bpe.token_to_id(EOT)
    out = tmp_path_factory.mktemp("tokenizer") / "tokenizer"
    finish(bpe, "bpe", f"bpe-{VOCAB}", eot, eot, bpe.token_to_id(PAD)).save(out)
    return out


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random tiny checkpoints: ``flm`` (one time input) and ``fmlm`` (two), ``V = 320``, ``L = 16``."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {"flm": tiny_checkpoint(root / "flm", VOCAB, n_times=1, seed=1),
            "fmlm": tiny_checkpoint(root / "fmlm", VOCAB, n_times=2, seed=2)}
