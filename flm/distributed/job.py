"""The Ray Train shell: a ``TorchTrainer`` sized by the ``cluster`` params, and running it.

:class:`RayJobSpec` holds what Ray needs to know (workers, their CPUs and GPUs, how many failures
to survive, where results and checkpoints persist, which cluster); :func:`build_trainer` turns it
into a ``ray.train.torch.TorchTrainer`` whose workers run :func:`flm.distributed.worker.train_worker`
(gloo on CPU, NCCL on GPUs); :func:`run_stage` connects to Ray, fits, and returns the persisted
final checkpoint with the reported metrics.

Storage: ``RunConfig(storage_path)`` is ``cluster.storage_path`` (a shared path or an object-store
URI; default ``<state>/ray/results``), with a pyarrow ``S3FileSystem`` at ``cluster.storage_endpoint``
for an S3-compatible store (:mod:`flm.distributed.storage`). :func:`run_stage` writes, reads and
deletes a probe object there before Ray starts, so a storage that cannot work fails in seconds.

Fault tolerance and resume (Ray Train V2): rank 0 reports every periodic checkpoint (every
``ckpt_every`` steps) to Ray, which uploads it to the storage (the newest ``keep_checkpoints``
are kept). ``FailureConfig(max_failures)`` restarts the whole worker group after a worker error
or a lost node, wherever Ray places it; every worker then installs ``ray.train.get_checkpoint()``
(the newest checkpoint in the storage) in its node's local run directory, a cache, and resumes
from it exactly, so a failure costs at most ``ckpt_every`` steps. Resuming a killed *driver*, head
node or cluster is rerunning the same ``RunConfig(name, storage_path)``: Ray restores the run's
checkpoint list from the storage. Keep ``name`` stable (:func:`~flm.distributed.storage.stable_run_name`
of the stage and its inputs). ``resume_from_checkpoint=`` raises in V2.

``workers=0`` runs the training function in this process (Ray's local mode: no actors, no
process group): a fast path for tests and debugging.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flm.distributed.relay import relay_lines
from flm.distributed.runtime import ray_address, ray_session
from flm.distributed.storage import check_storage, storage_filesystem
from flm.distributed.worker import StageOutput, TrackerFactory, WorkerTask, train_worker

__all__ = ["JobOutcome", "RayJobSpec", "build_trainer", "run_stage"]


@dataclass(frozen=True)
class RayJobSpec:
    """One Ray Train run.

    Attributes:
        name: ``RunConfig.name``; rerunning the same name and storage resumes that run.
        storage_path: where Ray persists results and reported checkpoints (a shared path or a
            cloud URI such as ``s3://bucket/flm`` on a multi-node cluster).
        storage_endpoint: the ``http(s)://`` endpoint of an S3-compatible store (``None``: AWS or
            the URI's own filesystem).
        keep_checkpoints: reported checkpoints kept in the storage (``CheckpointConfig.num_to_keep``).
        workers: data-parallel workers (``0``: run in this process, Ray's local mode).
        cpus_per_worker, gpus_per_worker: resources of each worker (GPUs > 0 selects NCCL).
        max_failures: worker-group restarts tolerated before the run fails.
        address: a Ray cluster (default ``$RAY_ADDRESS``, else an embedded local Ray).
        local_cpus: CPUs of the embedded local Ray (default: this machine's).
    """

    name: str
    storage_path: str
    storage_endpoint: str | None = None
    keep_checkpoints: int = 2
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 1
    address: str | None = None
    local_cpus: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables for the workers (``RunConfig.worker_runtime_env``)."""

    @property
    def use_gpu(self) -> bool:
        """Whether the workers hold GPUs (then NCCL is the backend, else gloo)."""
        return self.gpus_per_worker > 0

    @classmethod
    def from_cluster(cls, cluster: Any, name: str, storage_path: str | Path, **overrides: Any) -> RayJobSpec:
        """A spec from the ``cluster`` params section (``workers``, ``cpus_per_worker``, ...).

        ``storage_path`` is the default storage: ``cluster.storage_path`` replaces it when set.
        Fields this section does not (yet) have keep their defaults unless given in ``overrides``.
        """
        known = {"workers", "cpus_per_worker", "gpus_per_worker", "max_failures", "address", "storage_path",
                 "storage_endpoint"}
        values = {key: getattr(cluster, key) for key in known if getattr(cluster, key, None) is not None}
        return cls(name=name, **({"storage_path": str(storage_path)} | values | overrides))


@dataclass(frozen=True)
class JobOutcome:
    """A finished Ray run: the persisted final checkpoint and the metrics rank 0 reported."""

    checkpoint: Any
    """``ray.train.Checkpoint`` (``.path`` on local storage; ``.to_directory(dest)`` anywhere)."""
    metrics: dict[str, float]
    path: str
    """The run's folder in the storage (``<storage_path>/<name>``)."""


def build_trainer(task: WorkerTask, spec: RayJobSpec) -> Any:
    """A ``TorchTrainer`` running ``task`` on ``spec.workers`` workers (gloo on CPU, NCCL on GPU)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    resources = {"CPU": spec.cpus_per_worker} | ({"GPU": spec.gpus_per_worker} if spec.use_gpu else {})
    scaling = ScalingConfig(num_workers=spec.workers, use_gpu=spec.use_gpu,
                            resources_per_worker=resources if spec.workers else None)
    storage_path, filesystem = storage_filesystem(spec.storage_path, spec.storage_endpoint)
    run = RunConfig(
        name=spec.name,
        storage_path=storage_path,
        storage_filesystem=filesystem,
        failure_config=FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=max(1, spec.keep_checkpoints)),
        worker_runtime_env={"env_vars": dict(spec.env)} if spec.env else None,
    )
    return TorchTrainer(
        train_worker,
        train_loop_config={"task": task},
        torch_config=TorchConfig(backend="nccl" if spec.use_gpu else "gloo"),
        scaling_config=scaling,
        run_config=run,
    )


def _raise_resource_error(error: BaseException, spec: RayJobSpec) -> None:
    """Ray's "the cluster cannot hold these workers" as one :class:`~flm.errors.UsageError` line."""
    from ray.train.v2._internal.exceptions import InsufficientClusterResourcesError, WorkerGroupStartupTimeoutError

    cause = getattr(error, "controller_failure", error)
    if isinstance(cause, InsufficientClusterResourcesError | WorkerGroupStartupTimeoutError):
        from flm.errors import UsageError, one_line

        where = ray_address(spec.address) or "the local Ray"
        raise UsageError(f"{where} cannot hold {spec.workers} worker(s) x {spec.cpus_per_worker:g} CPU, "
                         f"{spec.gpus_per_worker:g} GPU (--workers, cluster.*_per_worker): {one_line(cause)}") \
            from error


def run_stage(
    stage: Callable[..., StageOutput],
    params: Any,
    spec: RayJobSpec,
    *,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    tracker_factory: TrackerFactory | None = None,
    state_dir: str | Path = ".state",
) -> JobOutcome:
    """Run one training stage on Ray and wait for it.

    Args:
        stage: picklable ``stage(params, tracker=, rank=, world_size=, device=, checkpoints=)`` (see
            :mod:`flm.distributed.worker`); paths inside it must be absolute.
        params: the validated :class:`flm.config.Params` (sent to the workers as JSON).
        spec: workers, resources, failures, storage, cluster.
        tracking_uri, run_id: the MLflow run rank 0 logs into (``None``: no tracking).
        tracker_factory: replaces the default tracker choice (tests inject failures this way).
        state_dir: the project's state directory (the embedded Ray's files go there).

    Raises:
        ray.train.TrainingFailedError: the run failed more than ``spec.max_failures`` times.
        flm.errors.UsageError: the cluster cannot hold the requested workers, or the storage cannot be
            written (one line naming ``cluster.storage_path``), before any training.
        flm.errors.UnreachableError: the storage's endpoint does not answer (before any training).
    """
    check_storage(spec.storage_path, spec.storage_endpoint)  # creates a local storage directory
    # an embedded Ray shares this filesystem: rank 0's output reaches this process through a file
    local = ray_address(spec.address) is None
    progress = Path(state_dir).resolve() / "ray" / "progress" / f"{spec.name}.log" if local else None
    task = WorkerTask(stage=stage, params=params.model_dump(mode="json"), tracking_uri=tracking_uri,
                      run_id=run_id, tracker_factory=tracker_factory,
                      progress_file=str(progress) if progress and spec.workers > 0 else None,
                      share_checkpoints=spec.workers > 0)
    cpus = spec.local_cpus or max(2, int(spec.cpus_per_worker * max(spec.workers, 1)))
    if spec.workers == 0 and spec.address is None:
        result = build_trainer(task, spec).fit()          # local mode: in this process, no Ray needed
    else:
        with ray_session(spec.address, state_dir, num_cpus=cpus), relay_lines(task.progress_file):
            result = build_trainer(task, spec).fit()
    if result.error is not None:
        _raise_resource_error(result.error, spec)
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"Ray run {spec.name} finished without a checkpoint")
    return JobOutcome(checkpoint=result.checkpoint, metrics=dict(result.metrics or {}), path=str(result.path))
