"""The ``pipeline`` flow runs ``dvc exp run --temp -S ...``: an experiment in ``dvc exp show``, the workspace as it was.

A one-stage DVC project stands in for the real pipeline (which takes minutes): the flow's part is the
command, the overrides and the streaming, the same whatever ``dvc.yaml`` holds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flm.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
STAGE = {"cmd": "python -c \"import yaml; p = yaml.safe_load(open('params.yaml')); "
                "open('out.txt', 'w').write(str(p['train']['steps']))\"",
         "params": ["train.steps"], "outs": ["out.txt"]}


def sh(repo: Path, *args: str) -> str:
    done = subprocess.run(args, cwd=repo, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def exp_params(repo: Path) -> dict[str, int]:
    """``{experiment name: train.steps}`` of the experiments ``dvc exp show --json`` lists."""
    shown = json.loads(sh(repo, sys.executable, "-m", "dvc", "exp", "show", "--json"))
    found = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for revision in exp.get("revs", []):
                params = revision["data"]["params"]["params.yaml"]["data"]
                found[revision["name"]] = params["train"]["steps"]
    return found


def test_pipeline_runs_a_dvc_experiment_with_the_overrides(prefect_harness: None, tmp_path: Path) -> None:
    from pipelines.flows import pipeline

    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / "params.yaml", repo / "params.yaml")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"steps": STAGE}}))
    (repo / ".gitignore").write_text(".state/\n")
    git = ("git", "-c", "user.name=t", "-c", "user.email=t@t")
    sh(repo, "git", "init", "-q")
    sh(repo, sys.executable, "-m", "dvc", "init", "-q")
    sh(repo, "git", "add", ".")
    sh(repo, *git, "commit", "-q", "-m", "tiny")

    with pytest.raises(ConfigError, match=r"train\.stepz: Extra inputs are not permitted"):  # checked before DVC starts
        pipeline(overrides={"train.stepz": 5}, root=str(repo), name="bad")
    result = pipeline(overrides={"train.steps": 1234, "train.beta1": 0.8}, root=str(repo), name="ui-steps")
    assert result["experiment"] == "ui-steps"
    assert exp_params(repo) == {"ui-steps": 1234}
    assert not (repo / "out.txt").exists()                 # --temp: the workspace's outputs are untouched
    assert sh(repo, "git", "status", "--porcelain") == ""
