"""`python -m pipelines.run`: a stage from the command line, writing nothing outside the project."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from flm.train.checkpoint import read_meta

from .conftest import TINY_LOOP, TINY_MODEL


def test_cli_runs_a_stage_and_leaves_home_untouched(project: Path, tmp_path: Path) -> None:
    root, home = tmp_path / "project", tmp_path / "home"
    shutil.copytree(project / "data", root / "data")
    home.mkdir()
    params = {"model": TINY_MODEL, "train": TINY_LOOP | {"steps": 2, "val_every": 0, "ckpt_every": 0, "sample_n": 0}}
    (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "RAY_", "HF_", "MPLCONFIGDIR", "DO_NOT_TRACK",
                                       "TORCHINDUCTOR_", "TRITON_"))}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.run", "train_flm", "--root", str(root), "--workers", "0", "--no-register"],
        env=env | {"HOME": str(home)}, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["metrics"]["step"] == 2 and result["model_version"] is None
    assert read_meta(root / "models" / "flm")["step"] == 2
    assert sorted(p.name for p in home.iterdir()) == []                 # nothing written to ~
    assert (root / ".state" / "prefect").is_dir() and (root / ".state" / "mlflow" / "mlflow.db").is_file()

    bad = subprocess.run([sys.executable, "-m", "pipelines.run", "train_flm", "--root", str(root), "--params", "nope"],
                         env=env | {"HOME": str(home)}, cwd=root, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "nope" in bad.stderr
