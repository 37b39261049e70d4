"""A hermetic process: every tool's telemetry off, every tool's state under the project's ``.state/``.

Nothing happens when this module is imported. Each entry point (a Prefect flow, a DVC stage, a
Ray job's driver, the Prefect server launcher) calls :func:`hermetic` first. It sets

* the telemetry switches of DVC, MLflow, Prefect and Ray (``DO_NOT_TRACK`` must be the literal
  ``true`` for MLflow), always, whatever the caller's environment says;
* ``PREFECT_HOME``, ``HF_HOME``, ``MPLCONFIGDIR`` and the compiler caches of ``torch.compile``
  (``TORCHINDUCTOR_CACHE_DIR``, ``TRITON_CACHE_DIR``) under the state directory, unless already set,
  so no sqlite database or cache lands in ``~`` or ``/tmp``;
* a generous startup timeout for Prefect's temporary API server (20 s times out on a busy 2-core
  machine);
* ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` unless set: a Ray *driver* then takes 127.0.0.1 as its
  address before it joins a node, instead of connecting a socket to ``8.8.8.8`` to find one. Ray
  reads it once, when first imported, so call :func:`hermetic` before ``import ray``. Never pass
  it to ``ray start`` of a worker node (it refuses to join a cluster with it);
* ``RAY_TMPDIR`` under the state directory (``<state>/ray``), unless set: Ray Train's lock files
  (``_ray_lockfiles``) and Ray's default temporary directory go there instead of ``/tmp``. Every
  process Ray starts from this one inherits it.

:func:`tool_home` makes the directory Ray's processes use as ``HOME``: it holds
``ray_bootstrap_config.yaml`` (``provider: {type: local}``), without which Ray's dashboard probes
cloud-metadata addresses at start, and Ray's token ``.ray/auth_token``, which :func:`ray_token` creates
readable by its owner only (mode 0600, in a 0700 folder; a token Ray writes itself is world-readable).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["TELEMETRY_OFF", "hermetic", "ray_token", "tool_home"]

TELEMETRY_OFF: dict[str, str] = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DVC_NO_ANALYTICS": "1",
}
"""Environment variables that switch each tool's telemetry off (set, never merely defaulted)."""

BOOTSTRAP = "ray_bootstrap_config.yaml"


def hermetic(state_dir: str | Path = ".state") -> Path:
    """Switch telemetry off and point tool state into ``state_dir``; return it, absolute and created.

    Idempotent; call it at the start of every entry point (never at import time).
    """
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    os.environ.update(TELEMETRY_OFF)
    defaults = {
        "PREFECT_HOME": state / "prefect",
        "HF_HOME": state / "hf",
        "MPLCONFIGDIR": state / "matplotlib",
        "TORCHINDUCTOR_CACHE_DIR": state / "torch" / "inductor",
        "TRITON_CACHE_DIR": state / "torch" / "triton",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_TMPDIR": state / "ray",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, str(value))
    return state


def tool_home(state_dir: str | Path = ".state") -> Path:
    """``<state>/home``: a ``HOME`` for Ray's processes, holding ``ray_bootstrap_config.yaml``.

    With that file present Ray's dashboard takes the cluster for a local one and makes no
    cloud-metadata request. Ray reads its token (``.ray/auth_token``, made by :func:`ray_token`)
    here instead of ``~``.
    """
    home = Path(state_dir).resolve() / "home"
    home.mkdir(parents=True, exist_ok=True)
    bootstrap = home / BOOTSTRAP
    if not bootstrap.is_file():
        bootstrap.write_text("provider: {type: local}\n", encoding="utf-8")
    ray_token(home)
    return home


def ray_token(home: str | Path) -> Path:
    """``<home>/.ray/auth_token``, Ray's authentication token file, readable by its owner only.

    A missing token is created with mode 0600 (never world-readable, not even for an instant) in a
    0700 folder, 256 random bits as Ray makes them, so Ray finds it instead of writing its own file
    with the default mode (0644). An existing token keeps its value; group and other permissions on
    it are removed.
    """
    folder = Path(home) / ".ray"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = folder / "auth_token"
    if token.exists():
        if token.stat().st_mode & 0o077:
            token.chmod(0o600)
        return token
    draft = folder / f".auth_token.{os.getpid()}"
    draft.unlink(missing_ok=True)
    with os.fdopen(os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as out:
        out.write(secrets.token_hex(32))
    try:
        os.link(draft, token)  # publishes the complete file; never replaces a token another process made
    except FileExistsError:
        pass
    finally:
        draft.unlink()
    return token
