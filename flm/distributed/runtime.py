"""Where Ray runs: an embedded local Ray by default, a cluster when an address is given.

:func:`ray_session` is a context manager around ``ray.init`` / ``ray.shutdown``:

* already connected (inside a ``ray job submit`` driver that called ``ray.init``, or a test that
  owns a session): nothing is started or stopped;
* an address (the argument, else the ``RAY_ADDRESS`` environment variable; ``auto`` finds a
  ``ray start`` on this machine): connect to that cluster;
* otherwise: start an embedded local Ray on loopback with the settings measured on a 2-core
  machine (no dashboard, 512 MiB object store, worker logs not forwarded), its temporary and
  session files under ``<state>/ray``, and ``HOME`` of its processes set to :func:`tool_home`
  (``ray_bootstrap_config.yaml`` there stops the cloud-metadata probes; Ray's token goes there).
  ``HOME`` is restored when the session ends. (:func:`flm.environment.hermetic`, called first,
  keeps Ray from guessing its address by connecting a socket to ``8.8.8.8``.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flm.environment import hermetic, tool_home

__all__ = ["LOCAL_RAY", "ray_address", "ray_session"]

LOCAL_RAY = {"num_cpus": 2, "include_dashboard": False, "object_store_memory": 512 * 1024**2, "log_to_driver": False}
"""``ray.init`` keywords of the embedded local Ray (``num_cpus`` is overridden by the caller)."""


def ray_address(address: str | None = None) -> str | None:
    """The cluster to use: ``address`` if given, else ``$RAY_ADDRESS``, else ``None`` (embedded Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or None


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables inside the block; restore the previous values after."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextmanager
def ray_session(address: str | None = None, state_dir: str | Path = ".state", num_cpus: int | None = None,
                log_to_driver: bool = False) -> Iterator[str]:
    """Connect to Ray for the duration of the block; yield ``"existing"``, the address, or ``"local"``.

    Args:
        address: a Ray cluster (``ray://...``, ``host:port``, ``auto``); default ``$RAY_ADDRESS``.
        state_dir: the project's state directory (Ray's files go to ``<state>/ray``).
        num_cpus: CPUs of the embedded Ray (default: all of this machine's, at least 2).
        log_to_driver: forward the workers' output to this process (off: Ray's own log files only).
    """
    state = hermetic(state_dir)
    import ray

    if ray.is_initialized():
        yield "existing"
        return
    target = ray_address(address)
    if target is not None:
        ray.init(address=target, log_to_driver=log_to_driver)
        try:
            yield target
        finally:
            ray.shutdown()
        return
    temp_dir = state / "ray"
    temp_dir.mkdir(parents=True, exist_ok=True)
    settings = LOCAL_RAY | {"num_cpus": num_cpus or max(2, os.cpu_count() or 2), "log_to_driver": log_to_driver}
    with _environ(HOME=str(tool_home(state))):
        ray.init(_temp_dir=str(temp_dir), _node_ip_address="127.0.0.1", **settings)
        try:
            yield "local"
        finally:
            ray.shutdown()
