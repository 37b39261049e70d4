"""``dvc repro`` of the data stages in a fresh repository: build, no-op, rerun only what changed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.pipelines.helpers import copy_project

from .conftest import OFFLINE_ENV

REPO = Path(__file__).resolve().parents[2]


def run(repo: Path, *args: str) -> str:
    env = {**os.environ, **OFFLINE_ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["HF_HOME"] = str(repo / ".state" / "hf")
    done = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def dvc(repo: Path, *args: str) -> str:
    return run(repo, sys.executable, "-m", "dvc", *args)


def set_params(repo: Path, **data: dict) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in data.items():
        params["data"][section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def ran(output: str) -> set[str]:
    return {stage for stage in ("corpus", "tokenizer", "pack") if f"Running stage '{stage}'" in output}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fresh git + DVC repository holding the project's code and pipeline files."""
    repo = tmp_path / "clone"
    copy_project(repo)
    # the laptop pipeline, made lighter: BBC News only, a small trained BPE (a parameter that can change), short blocks
    set_params(repo, source={"corpora": ["bbc_news"]}, tokenizer={"kind": "bpe", "vocab_size": 512},
               packing={"seq_len": 64})
    run(repo, "git", "init", "-q")
    run(repo, "git", "add", ".")
    run(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "clone")
    return repo


def test_repro_builds_then_does_nothing_then_reruns_only_what_changed(repo: Path) -> None:
    first = dvc(repo, "repro", "pack")  # the data stages only (the training stages follow them)
    assert ran(first) == {"corpus", "tokenizer", "pack"}
    meta = yaml.safe_load((repo / "data" / "tokens" / "meta.json").read_text())
    assert (meta["V"], meta["L"], meta["splits"]["train"]["docs"] + meta["splits"]["val"]["docs"]) == (512, 64, 2225)

    second = dvc(repo, "repro", "pack")
    assert ran(second) == set()
    assert "Data and pipelines are up to date" in dvc(repo, "status", "pack")

    set_params(repo, tokenizer={"vocab_size": 600})
    third = dvc(repo, "repro", "pack")
    assert ran(third) == {"tokenizer", "pack"}
    assert yaml.safe_load((repo / "data" / "tokens" / "meta.json").read_text())["V"] == 600

    metrics = dvc(repo, "metrics", "show")
    assert "tokens.train_tokens" in metrics and "corpus.train_docs" in metrics
    untracked = run(repo, "git", "status", "--porcelain", "--untracked-files=all").splitlines()
    assert not [line for line in untracked if line.startswith("??") and "data/" in line and ".gitignore" not in line]
