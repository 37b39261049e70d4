"""Fixtures of the flow tests: a tiny project (packed real text, dvc.lock), Prefect's test harness."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flm.config import BPETokenizer, FilesSource, PackingParams, Params

TINY_MODEL = {"d_model": 32, "n_layers": 2, "n_heads": 2, "cond_dim": 32, "time_freq_dim": 32}
TINY_LOOP = {
    "steps": 8, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "ema_decay": 0.9, "val_every": 4,
    "val_batches": 2, "ckpt_every": 4, "keep_last": 2, "log_every": 2, "sample_n": 1, "sample_steps": [2],
}
TOKENS_MD5 = "0123456789abcdef0123456789abcdef.dir"


def tiny_params(**sections: dict) -> Params:
    """A tiny parameter tree; ``workers = 1`` CPU."""
    tree = {"model": TINY_MODEL, "train": TINY_LOOP, "distill": TINY_LOOP | {"sample_steps": [1]},
            "cluster": {"workers": 1, "cpus_per_worker": 1}}
    for name, values in sections.items():
        tree[name] = tree.get(name, {}) | values
    return Params.model_validate(tree)


@pytest.fixture(scope="session")
def project() -> Iterator[Path]:
    """A project directory: ``data/tokens`` + ``data/tokenizer`` of 200 BBC articles, dvc.yaml/lock.

    Short (under /tmp): Ray's socket paths live under its ``.state``.
    """
    from flm.data.corpus import build_corpus
    from flm.data.packaged import iter_packaged
    from flm.data.packing import pack
    from flm.data.tokenizer import build_tokenizer

    root = Path(tempfile.mkdtemp(prefix="flmp-", dir="/tmp"))
    docs = list(iter_packaged("bbc_news"))[::11][:200]
    src = root / "in" / "docs.jsonl"
    src.parent.mkdir(parents=True)
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    build_corpus(FilesSource(paths=(str(src),), val_fraction=0.1), root / "data" / "corpus", progress=False)
    build_tokenizer(BPETokenizer(vocab_size=384), root / "data" / "corpus", progress=False).save(
        root / "data" / "tokenizer")
    pack(root / "data" / "corpus", root / "data" / "tokenizer", root / "data" / "tokens",
         PackingParams(seq_len=16), progress=False)
    shutil.copy(Path(__file__).parents[2] / "dvc.yaml", root / "dvc.yaml")
    (root / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  pack:\n    cmd: x\n    outs:\n"
        f"    - path: data/tokens\n      hash: md5\n      md5: {TOKENS_MD5}\n", encoding="utf-8")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _hermetic(project: Path) -> Iterator[None]:
    """Telemetry off, tool state in the tiny project; the environment is restored after."""
    from flm.environment import hermetic

    saved = dict(os.environ)
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "PREFECT_API_URL"):
        os.environ.pop(key, None)
    hermetic(project / ".state")
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def prefect_harness(_hermetic: None) -> Iterator[None]:
    """Prefect's test harness (a temporary API server and database), once per session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def mlflow_client(project: Path) -> object:
    """A client of the tiny project's MLflow store."""
    from mlflow import MlflowClient

    from flm.tracking import default_tracking_uri

    return MlflowClient(default_tracking_uri(project / ".state"))


@pytest.fixture(scope="session")
def trained(prefect_harness: None, project: Path) -> dict[str, Any]:
    """train_flm then distill_fmlm, in-process (``workers=0``), each through the Prefect engine."""
    from pipelines.flows import distill_fmlm, train_flm

    params = tiny_params()
    flm = train_flm(params=params, root=str(project), workers=0)
    fmlm = distill_fmlm(params=params, root=str(project), workers=0)
    return {"flm": flm, "fmlm": fmlm, "root": str(project)}
