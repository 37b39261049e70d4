"""Tiny parameter trees for end-to-end stage runs, and a tiny clone of this project under DVC and git."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
TRACKED = ["flm", "pipelines", "dvc.yaml", "params.yaml", ".dvc/config", ".dvcignore"]
"""What a clone needs of this checkout to run ``dvc repro``."""

TINY: dict[str, Any] = {
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "cond_dim": 32, "time_freq_dim": 32},
    "train": {"steps": 12, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "ema_decay": 0.9, "val_every": 6,
              "val_batches": 2, "ckpt_every": 6, "log_every": 3, "sample_n": 2, "sample_steps": [4]},
    "distill": {"steps": 6, "batch_size": 8, "warmup_steps": 1, "ema_decay": 0.9, "val_every": 3, "val_batches": 2,
                "ckpt_every": 3, "log_every": 3, "sample_n": 2, "sample_steps": [1, 2]},
    "ar": {"steps": 12, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "ema_decay": 0.9, "val_every": 6,
           "val_batches": 2, "ckpt_every": 6, "log_every": 3, "sample_n": 2, "sample_steps": [1]},
    "mdlm": {"steps": 12, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "ema_decay": 0.9, "val_every": 6,
             "val_batches": 2, "ckpt_every": 6, "log_every": 3, "sample_n": 2, "sample_steps": [1, 4]},
}
TINY_EVAL: dict[str, Any] = {"models": ["flm", "fmlm", "mdlm", "ar"], "n_samples": 2, "batch_size": 2, "n_boot": 20,
                             "max_nfe": 2, "fmlm_nfe": [1, 2], "promote_nfe": 2, "n_show": 1}
"""A tiny ``eval`` section: every model, two samples, NFE 1 and 2."""
LEARNS: dict[str, Any] = TINY | {name: TINY[name] | {"lr": 1e-2, "ema_decay": 0.5} for name in ("train", "ar", "mdlm")}
"""TINY whose 12 steps learn: the EMA weights (what validation and the checkpoints hold) reach a val NLL well
below ln V = ln 512 = 6.24, the score of an untrained, zero-initialized head (TINY's own EMA: 6.21)."""
MARGIN = 0.3
"""Nats below ln V that a stage trained with LEARNS must reach (measured in the tests that use it)."""


def copy_project(repo: Path) -> None:
    """This checkout's code and pipeline files (:data:`TRACKED`, no caches) copied into ``repo``."""
    for name in TRACKED:
        source, target = REPO / name, repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target)


def run(repo: Path, *args: str, env: dict[str, str], timeout: float = 1200) -> str:
    """Run a command in ``repo``; its stdout + stderr (a failure shows both)."""
    # generous: `dvc repro` trains five tiny stages in one call (160 s idle; over 300 s under strace)
    done = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def dvc_clone(repo: Path, tiny_data: dict[str, Path], mlflow_db: Path,
              edit: Callable[[dict[str, Any]], None] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """This project's code, ``dvc.yaml`` and a LEARNS ``params.yaml`` (``workers = 0``, no samples, TINY_EVAL;
    then ``edit(params)``) committed to a new git repository at ``repo``, the tiny data committed to DVC as the
    data stages' outputs. Returns the params tree and the environment to run ``dvc`` in (offline settings,
    this interpreter first on PATH, ``MLFLOW_TRACKING_URI`` on ``mlflow_db``)."""
    from tests.train.conftest import OFFLINE_ENV

    copy_project(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in LEARNS.items():
        params[section] |= values
    for section in ("train", "distill", "ar", "mdlm"):
        params[section]["sample_n"] = 0
    params["eval"] |= TINY_EVAL
    params["cluster"]["workers"] = 0  # the flows run the stage in their own process (no Ray cluster)
    if edit is not None:
        edit(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_db}"}
    git = ("git", "-c", "user.name=t", "-c", "user.email=t@t")
    run(repo, "git", "init", "-q", env=env)
    run(repo, "git", "add", ".", env=env)
    run(repo, *git, "commit", "-q", "-m", "clone", env=env)
    for name in ("corpus", "tokenizer", "tokens"):  # the tiny data stands in for the data stages' outputs
        shutil.copytree(tiny_data[name], repo / "data" / name)
    (repo / "data" / "metrics").mkdir()
    for name in ("corpus", "tokens"):
        (repo / "data" / "metrics" / f"{name}.json").write_text("{}")
    run(repo, sys.executable, "-m", "dvc", "commit", "-f", "corpus", "tokenizer", "pack", env=env)
    return params, env
