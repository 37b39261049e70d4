"""Where a run comes from: the git commit, the DVC hashes of a stage's inputs, the Prefect flow run.

All three become MLflow tags of a stage's parent run (``git.commit``, ``git.dirty``,
``dvc.<path>``, ``prefect.flow_run_id``, ``prefect.flow_run_url``), so a logged model can be traced back
to the code, the data and the orchestration run that made it. The other way, a flow run links to its
MLflow run (:func:`mlflow_run_url`, in its log and a markdown artifact).

The UIs' addresses: ``$FLM_PREFECT_UI`` (default http://127.0.0.1:4200, ``make ui``) and
``$FLM_MLFLOW_UI`` (default http://127.0.0.1:5000, ``make mlflow``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "dvc_input_hashes", "git_state", "lineage_tags", "mlflow_run_url", "prefect_flow_run_id", "prefect_flow_run_url",
    "stage_inputs",
]

PREFECT_UI = "http://127.0.0.1:4200"
"""Default address of the Prefect UI (``$FLM_PREFECT_UI`` overrides it)."""
MLFLOW_UI = "http://127.0.0.1:5000"
"""Default address of the MLflow UI (``$FLM_MLFLOW_UI`` overrides it)."""


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


def _content_hash(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (relative names and contents, sorted; caches skipped)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and
                                                  "__pycache__" not in p.parts)
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()


def stage_inputs(root: str | Path, stage: str) -> dict[str, str]:
    """``{path: hash}`` of everything a stage reads, as it is now: what fixes its Ray run name.

    A dependency that another stage produces (``data/tokens``, ``models/flm``) takes the hash
    ``dvc.lock`` records for that output (current under ``dvc repro``, which runs the producer
    first; hashing gigabytes of tokens at every start would cost minutes); every other dependency
    (the code) is hashed from its content now, so a changed file gives a new run, not the resumption
    of a finished one. Empty outside a DVC project.
    """
    root = Path(root)
    try:
        spec = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    produced = {str(out) for entry in spec.get("stages", {}).values() for out in entry.get("outs", [])}
    deps = [str(dep) for dep in spec.get("stages", {}).get(stage, {}).get("deps", [])]
    recorded = dvc_input_hashes(root, stage)
    found = {dep: recorded.get(dep, "") if dep in produced else _content_hash(root / dep)
             for dep in deps if dep in produced or (root / dep).exists()}
    return found


def prefect_flow_run_id() -> str | None:
    """The id of the Prefect flow run this code runs in, or ``None`` outside one."""
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


def prefect_flow_run_url(flow_run_id: str) -> str:
    """The flow run's page in the Prefect UI: ``<$FLM_PREFECT_UI>/runs/flow-run/<id>``."""
    return f"{os.environ.get('FLM_PREFECT_UI', PREFECT_UI).rstrip('/')}/runs/flow-run/{flow_run_id}"


def mlflow_run_url(experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI: ``<$FLM_MLFLOW_UI>/#/experiments/<experiment>/runs/<run>``."""
    return f"{os.environ.get('FLM_MLFLOW_UI', MLFLOW_UI).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def lineage_tags(root: str | Path, stage: str) -> dict[str, str]:
    """All lineage tags of a stage's parent run."""
    tags = git_state(root) | {f"dvc.{path}": value for path, value in dvc_input_hashes(root, stage).items()}
    flow_run_id = prefect_flow_run_id()
    if flow_run_id:
        tags["prefect.flow_run_id"] = flow_run_id
        tags["prefect.flow_run_url"] = prefect_flow_run_url(flow_run_id)
    return tags
