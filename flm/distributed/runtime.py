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
  keeps Ray from guessing its address by connecting a socket to ``8.8.8.8``, and points
  ``RAY_TMPDIR`` at ``<state>/ray`` so Ray Train's lock files stay there instead of ``/tmp``.)
  A cluster that does not answer is a one-line :class:`flm.errors.UnreachableError`.

:func:`check_local_resources` refuses, before anything starts, a job the embedded Ray on this
machine cannot hold (more CPUs or GPUs than the machine has).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flm.environment import hermetic, tool_home
from flm.errors import UnreachableError, UsageError

__all__ = ["LOCAL_RAY", "check_local_resources", "machine_cpus", "ray_address", "ray_session"]

LOCAL_RAY = {"num_cpus": 2, "include_dashboard": False, "object_store_memory": 512 * 1024**2, "log_to_driver": False}
"""``ray.init`` keywords of the embedded local Ray (``num_cpus`` is overridden by the caller)."""


def ray_address(address: str | None = None) -> str | None:
    """The cluster to use: ``address`` if given, else ``$RAY_ADDRESS``, else ``None`` (embedded Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def machine_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_local_resources(workers: int, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
                          address: str | None = None) -> None:
    """Refuse a Ray job this machine cannot hold, before Ray (or anything else) starts.

    Only an embedded local Ray is checked (no ``address``, no ``$RAY_ADDRESS``): a remote
    cluster's resources are Ray's to check. ``workers = 0`` runs in this process and needs nothing.

    Raises:
        UsageError: negative workers, more CPUs or GPUs than this machine has; the message names
            ``--workers`` / ``cluster.workers`` and the per-worker setting to lower.
    """
    if workers < 0:
        raise UsageError(f"--workers {workers}: must be 0 (in this process) or more")
    if workers == 0 or ray_address(address) is not None:
        return
    cpus = machine_cpus()
    if workers * cpus_per_worker > cpus:
        raise UsageError(f"--workers {workers} x cluster.cpus_per_worker {cpus_per_worker:g} = "
                         f"{workers * cpus_per_worker:g} CPUs, but this machine has {cpus}; lower --workers "
                         f"(cluster.workers) or cluster.cpus_per_worker, or give --ray-address")
    if gpus_per_worker > 0:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if workers * gpus_per_worker > gpus:
            raise UsageError(f"--workers {workers} x cluster.gpus_per_worker {gpus_per_worker:g} = "
                             f"{workers * gpus_per_worker:g} GPUs, but this machine has {gpus}; lower --workers "
                             f"(cluster.workers) or cluster.gpus_per_worker, or give --ray-address")


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
        try:
            ray.init(address=target, log_to_driver=log_to_driver)
        except ConnectionError as err:
            first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
            raise UnreachableError(f"Ray cluster {target} is unreachable: {first.strip()}") from err
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
