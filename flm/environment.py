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
  it to ``ray start`` of a worker node (it refuses to join a cluster with it).

:func:`tool_home` makes the directory Ray's processes use as ``HOME``: it holds
``ray_bootstrap_config.yaml`` (``provider: {type: local}``), without which Ray's dashboard probes
cloud-metadata addresses at start, and receives Ray's ``~/.ray/auth_token``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["TELEMETRY_OFF", "hermetic", "tool_home"]

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
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, str(value))
    return state


def tool_home(state_dir: str | Path = ".state") -> Path:
    """``<state>/home``: a ``HOME`` for Ray's processes, holding ``ray_bootstrap_config.yaml``.

    With that file present Ray's dashboard takes the cluster for a local one and makes no
    cloud-metadata request; Ray also writes its token (``.ray/auth_token``) here instead of ``~``.
    """
    home = Path(state_dir).resolve() / "home"
    home.mkdir(parents=True, exist_ok=True)
    bootstrap = home / BOOTSTRAP
    if not bootstrap.is_file():
        bootstrap.write_text("provider: {type: local}\n", encoding="utf-8")
    return home
