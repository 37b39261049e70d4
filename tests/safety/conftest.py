"""Fixtures of the safety tests: the training tests' offline switches, tiny packed real text and one thread;
folders a careless path could point at; file hashes to prove nothing changed."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from tests.train.conftest import _offline_env, _one_thread, mlflow_state, tiny_data

__all__ = ["_offline_env", "_one_thread", "mlflow_state", "tiny_data"]


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (``.git`` included): relative path -> SHA-256 of a file, ``dir`` or ``link``."""
    out: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            out[key] = f"link {os.readlink(path)}"
        elif path.is_dir():
            out[key] = "dir"
        else:
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def make_target(kind: str, folder: Path) -> Path:
    """A folder a wrong ``--out``/``--models`` could name: ``unrelated`` files (also under ``flm/``, the name a
    models folder gets written into), a ``project`` root (``pyproject.toml`` + an ``flm`` package) or a ``git``
    repository with a commit."""
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes\n", encoding="utf-8")
    if kind == "unrelated":
        (folder / "flm").mkdir()
        (folder / "flm" / "results.csv").write_text("a,b\n1,2\n", encoding="utf-8")
        (folder / "meta.json").write_text('{"format": "someone.else/1"}\n', encoding="utf-8")
    elif kind == "project":
        (folder / "pyproject.toml").write_text('[project]\nname = "flm"\n', encoding="utf-8")
        (folder / "flm").mkdir()
        (folder / "flm" / "__init__.py").write_text('"""The package."""\n', encoding="utf-8")
    elif kind == "git":
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@t"}
        for cmd in (["init", "-q"], ["add", "notes.txt"], ["commit", "-q", "-m", "notes"]):
            subprocess.run(["git", "-C", str(folder), *cmd], check=True, env=env, capture_output=True)
    else:
        raise ValueError(kind)
    return folder

