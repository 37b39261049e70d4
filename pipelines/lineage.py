"""Where a run comes from: the git commit, the DVC hashes of a stage's inputs, the Prefect flow run.

All three become MLflow tags of a stage's parent run (``git.commit``, ``git.dirty``,
``dvc.<path>``, ``prefect.flow_run_id``), so a logged model can be traced back to the code, the
data and the orchestration run that made it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

__all__ = ["dvc_input_hashes", "git_state", "lineage_tags", "prefect_flow_run_id"]


def git_state(root: str | Path) -> dict[str, str]:
    """``git.commit`` (``unknown`` outside a repository) and ``git.dirty`` (``true`` | ``false``)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"git.commit": commit, "git.dirty": str(dirty).lower()}


def _hash(entry: dict[str, Any]) -> str | None:
    return entry.get("md5") or entry.get("etag") or entry.get("checksum")


def dvc_input_hashes(root: str | Path, stage: str) -> dict[str, str]:
    """``{path: hash}`` of the stage's dependencies in ``dvc.yaml`` as ``dvc.lock`` records them.

    A dependency that is another stage's output (``data/tokens``, ``models/flm``) takes the hash
    of that output, which is current when this stage runs under ``dvc repro``; other
    dependencies take the hash recorded for this stage's last run, if any.
    """
    root = Path(root)
    try:
        spec = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))
        lock = yaml.safe_load((root / "dvc.lock").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    deps = [str(dep) for dep in spec.get("stages", {}).get(stage, {}).get("deps", [])]
    outs: dict[str, str] = {}
    own: dict[str, str] = {}
    for name, entry in (lock or {}).get("stages", {}).items():
        for out in entry.get("outs", []):
            if _hash(out):
                outs[out["path"]] = _hash(out)
        if name == stage:
            own = {dep["path"]: _hash(dep) for dep in entry.get("deps", []) if _hash(dep)}
    found = {dep: outs.get(dep) or own.get(dep) for dep in deps}
    return {path: value for path, value in found.items() if value}


def prefect_flow_run_id() -> str | None:
    """The id of the Prefect flow run this code runs in, or ``None`` outside one."""
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


def lineage_tags(root: str | Path, stage: str) -> dict[str, str]:
    """All lineage tags of a stage's parent run."""
    tags = git_state(root) | {f"dvc.{path}": value for path, value in dvc_input_hashes(root, stage).items()}
    flow_run_id = prefect_flow_run_id()
    if flow_run_id:
        tags["prefect.flow_run_id"] = flow_run_id
    return tags
