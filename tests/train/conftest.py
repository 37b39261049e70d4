"""Fixtures of the training tests: offline switches, tiny packed real text, tiny models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flm.config import BPETokenizer, FilesSource, PackingParams, TrainParams
from tests.threads import _one_thread  # noqa: F401  (this directory's autouse fixture)

OFFLINE_ENV = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}

TINY_MODEL = {"d_model": 32, "n_layers": 2, "n_heads": 2, "cond_dim": 32, "time_freq_dim": 32}


@pytest.fixture(scope="session", autouse=True)
def _offline_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The network switches of ENVIRONMENT.md; MLflow must never fall back to ./mlruns or ~."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in OFFLINE_ENV.items():
            patch.setenv(key, value)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
        yield


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """300 BBC articles -> BPE (V = 512) -> blocks of L = 32, with the project's data code."""
    import json

    from flm.data.corpus import build_corpus
    from flm.data.packaged import iter_packaged
    from flm.data.packing import pack
    from flm.data.tokenizer import build_tokenizer

    root = tmp_path_factory.mktemp("tiny_data")
    docs = list(iter_packaged("bbc_news"))[::7][:300]
    source_file = root / "in" / "docs.jsonl"
    source_file.parent.mkdir(parents=True)
    source_file.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in docs), encoding="utf-8")
    source = FilesSource(paths=(str(source_file),), val_fraction=0.1)
    build_corpus(source, root / "corpus", progress=False)
    build_tokenizer(BPETokenizer(vocab_size=512), root / "corpus", progress=False).save(root / "tokenizer")
    pack(root / "corpus", root / "tokenizer", root / "tokens", PackingParams(seq_len=32), progress=False)
    return {"root": root, "corpus": root / "corpus", "tokenizer": root / "tokenizer", "tokens": root / "tokens"}


@pytest.fixture(scope="session")
def mlflow_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state directory (sqlite store + artifacts) for the session: creating a store costs ~5 s."""
    return tmp_path_factory.mktemp("state")


def tiny_train(**changes: object) -> TrainParams:
    """Train settings for tiny, fast runs (no samples unless asked)."""
    base = {
        "steps": 20, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "ema_decay": 0.9, "val_every": 0,
        "val_batches": 2, "ckpt_every": 0, "keep_last": 2, "log_every": 5, "sample_n": 0,
    }
    return TrainParams(**(base | changes))
