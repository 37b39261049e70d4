"""A DVC remote on object storage: the data stages' outputs and a trained model, recorded in ``dvc.lock``,
pushed to the loopback S3 server after the documented ``dvc remote`` commands; a fresh ``git clone`` +
``dvc pull`` gets them back byte for byte, and ``dvc repro`` there has nothing to do."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.pipelines.helpers import copy_project

from .conftest import S3Server
from .tiny_project import build_data, tiny_tree

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = ["data/corpus", "data/tokenizer", "data/tokens", "data/metrics", "models/flm", "metrics/flm.json"]
"""What ``dvc push`` sends and ``dvc pull`` brings back: the data stages' outputs and the FLM model."""
GIT = ("git", "-c", "user.name=t", "-c", "user.email=t@t")
DVC = (sys.executable, "-m", "dvc")


def run(cwd: Path, *args: str, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def files(root: Path, outputs: list[str]) -> list[str]:
    """Every file under ``outputs`` (relative to ``root``), sorted."""
    found = []
    for out in outputs:
        path = root / out
        found += [str(p.relative_to(root)) for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() else [out]
    return found


def test_push_then_a_fresh_clone_pulls_identical_data_and_model(s3_server: S3Server, s3_bucket: str,
                                                                 tmp_path: Path) -> None:
    repo, clone = tmp_path / "repo", tmp_path / "clone"
    copy_project(repo)
    (repo / ".gitignore").write_text(".state/\n__pycache__/\n", encoding="utf-8")
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    for section, values in tiny_tree(train={"sample_n": 0}).items():
        params[section] |= values
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "DVC_NO_ANALYTICS": "1",
           "DO_NOT_TRACK": "true", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run(repo, "git", "init", "-q", env=env)
    # the documented command (docs/PIPELINE.md, "Running on a cluster"): the remote, then its endpoint
    run(repo, *DVC, "remote", "add", "-d", "storage", f"s3://{s3_bucket}/dvc", env=env)
    run(repo, *DVC, "remote", "modify", "storage", "endpointurl", s3_server.endpoint, env=env)
    run(repo, "git", "add", ".", env=env)
    run(repo, *GIT, "commit", "-q", "-m", "project", env=env)

    build_data(repo)  # the data stages' outputs, recorded as if `dvc repro pack` had made them
    (repo / "data" / "metrics").mkdir()
    for name in ("corpus", "tokens"):
        (repo / "data" / "metrics" / f"{name}.json").write_text("{}")
    shutil.rmtree(repo / "in")
    run(repo, *DVC, "commit", "-f", "corpus", "tokenizer", "pack", env=env)
    # the model: the train_flm stage's own training (no Prefect, MLflow or Ray: those are tested elsewhere),
    # recorded in dvc.lock like the data
    run(repo, sys.executable, "-m", "pipelines.train_stages", "train_flm", "--no-tracking", "--quiet", "--device",
        "cpu", "--threads", "1", env=env)
    run(repo, *DVC, "commit", "-f", "train_flm", env=env)
    run(repo, "git", "add", "-A", env=env)
    run(repo, *GIT, "commit", "-q", "-m", "outputs", env=env)
    assert "files pushed" in run(repo, *DVC, "push", env=env)
    pushed = s3_server.client().list_objects_v2(Bucket=s3_bucket, Prefix="dvc/")
    assert pushed["KeyCount"] >= len(files(repo, OUTPUTS))

    run(tmp_path, "git", "clone", "-q", str(repo), str(clone), env=env)
    assert not (clone / "models" / "flm").exists() and not (clone / "data" / "tokens").exists()
    run(clone, *DVC, "pull", "corpus", "tokenizer", "pack", "train_flm", env=env)
    assert files(clone, OUTPUTS) == files(repo, OUTPUTS) and "models/flm/ema.safetensors" in files(repo, OUTPUTS)
    for name in files(repo, OUTPUTS):
        assert filecmp.cmp(repo / name, clone / name, shallow=False), name
    assert "up to date" in run(clone, *DVC, "status", "train_flm", env=env)
    assert "Running stage" not in run(clone, *DVC, "repro", "train_flm", env=env)
