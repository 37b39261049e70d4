"""The Ray Train shell: a ``TorchTrainer`` sized by the ``cluster`` params, and running it.

:class:`RayJobSpec` holds what Ray needs to know (workers, their CPUs and GPUs, how many failures
to survive, where results and checkpoints persist, which cluster); :func:`build_trainer` turns it
into a ``ray.train.torch.TorchTrainer`` whose workers run :func:`flm.distributed.worker.train_worker`
(gloo on CPU, NCCL on GPUs); :func:`run_stage` connects to Ray, fits, and returns the persisted
final checkpoint with the reported metrics.

Fault tolerance (Ray Train V2): ``FailureConfig(max_failures)`` restarts the whole worker group
after a worker error; the stage then resumes from the newest checkpoint in its run directory
(``<state>/runs/...``, on the shared filesystem of a local run or a cluster with shared storage).
Resuming a killed *driver* is rerunning the same ``RunConfig(name, storage_path)``: keep ``name``
stable (the Prefect flow uses its flow-run id). ``resume_from_checkpoint=`` raises in V2.

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
from flm.distributed.worker import StageOutput, TrackerFactory, WorkerTask, train_worker

__all__ = ["JobOutcome", "RayJobSpec", "build_trainer", "run_stage"]


@dataclass(frozen=True)
class RayJobSpec:
    """One Ray Train run.

    Attributes:
        name: ``RunConfig.name``; rerunning the same name and storage resumes that run.
        storage_path: where Ray persists results and reported checkpoints (a shared path or a
            cloud URI such as ``s3://bucket/flm`` on a multi-node cluster).
        workers: data-parallel workers (``0``: run in this process, Ray's local mode).
        cpus_per_worker, gpus_per_worker: resources of each worker (GPUs > 0 selects NCCL).
        max_failures: worker-group restarts tolerated before the run fails.
        address: a Ray cluster (default ``$RAY_ADDRESS``, else an embedded local Ray).
        local_cpus: CPUs of the embedded local Ray (default: this machine's).
    """

    name: str
    storage_path: str
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

        Fields this section does not (yet) have keep their defaults unless given in ``overrides``.
        """
        known = {"workers", "cpus_per_worker", "gpus_per_worker", "max_failures", "address"}
        values = {key: getattr(cluster, key) for key in known if getattr(cluster, key, None) is not None}
        return cls(name=name, storage_path=str(storage_path), **(values | overrides))


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
    run = RunConfig(
        name=spec.name,
        storage_path=spec.storage_path,
        failure_config=FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=1),
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
        stage: picklable ``stage(params, tracker=, rank=, world_size=, device=)`` (see
            :mod:`flm.distributed.worker`); paths inside it must be absolute.
        params: the validated :class:`flm.config.Params` (sent to the workers as JSON).
        spec: workers, resources, failures, storage, cluster.
        tracking_uri, run_id: the MLflow run rank 0 logs into (``None``: no tracking).
        tracker_factory: replaces the default tracker choice (tests inject failures this way).
        state_dir: the project's state directory (the embedded Ray's files go there).

    Raises:
        ray.train.TrainingFailedError: the run failed more than ``spec.max_failures`` times.
        flm.errors.UsageError: the cluster cannot hold the requested workers (one line).
    """
    if "://" not in spec.storage_path:
        Path(spec.storage_path).mkdir(parents=True, exist_ok=True)
    # an embedded Ray shares this filesystem: rank 0's output reaches this process through a file
    local = ray_address(spec.address) is None
    progress = Path(state_dir).resolve() / "ray" / "progress" / f"{spec.name}.log" if local else None
    task = WorkerTask(stage=stage, params=params.model_dump(mode="json"), tracking_uri=tracking_uri,
                      run_id=run_id, tracker_factory=tracker_factory,
                      progress_file=str(progress) if progress and spec.workers > 0 else None)
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
