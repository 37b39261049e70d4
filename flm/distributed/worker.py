"""The function every Ray Train worker runs: one training stage on this worker's rank.

Ray touches the training in four named places only, all here:

1. **who am I** — rank and world size from ``ray.train.get_context()``; the device from
   ``ray.train.torch.get_device()`` (``cuda:<local rank>`` on GPU workers, else CPU);
2. **the tracker** — rank 0 logs into the MLflow run whose id the driver opened (so a restarted
   worker group keeps appending to the same run); every other rank gets the no-op tracker;
3. **the stage** — the stage function trains (the loop wraps the objective in DDP when the world
   is larger than one, each rank reading its own slice of every global batch); its ``checkpoints=``
   is a :class:`RayCheckpoints`: on (re)start every rank installs the newest checkpoint Ray's storage
   holds (``ray.train.get_checkpoint()``) in its node's local run directory, a cache, and resumes
   from it; every periodic checkpoint goes to ``ray.train.report`` (rank 0 with the directory);
4. **the report** — the final checkpoint directory goes to ``ray.train.report`` (rank 0), with
   the stage's numeric metrics (every rank reports: Ray Train's report is collective, so every
   rank reports at the same steps). Ray's result is the last reported checkpoint with its metrics.

The stage function is passed in (``flm`` never imports ``pipelines``): any picklable callable
``stage(params, tracker=..., rank=..., world_size=..., device=..., checkpoints=...)`` returning an
object with ``checkpoint`` (a directory) and ``metrics`` (a dict).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from flm.distributed.relay import lines_to_file
from flm.environment import TELEMETRY_OFF
from flm.tracking import NullTracker, Tracker

__all__ = ["RayCheckpoints", "StageOutput", "WorkerTask", "mlflow_rank0_tracker", "numeric", "train_worker"]


class StageOutput(Protocol):
    """What a stage function returns (``pipelines.train_stages.StageResult`` fits)."""

    checkpoint: Path | None
    metrics: dict[str, Any]


TrackerFactory = Callable[[int], Tracker]


@dataclass(frozen=True)
class WorkerTask:
    """Everything a worker needs, sent by value through ``train_loop_config`` (must pickle).

    Attributes:
        stage: the stage function (e.g. ``functools.partial(train_flm, paths=..., progress=False)``).
        params: the validated parameter tree as JSON (``Params.model_dump(mode="json")``).
        tracking_uri: the MLflow store the driver uses (a server URI on a real cluster).
        run_id: the MLflow run rank 0 logs into (``None``: no tracking).
        tracker_factory: ``rank -> Tracker``, replacing the default MLflow/no-op choice (tests).
        progress_file: rank 0 prints the stage's output (progress lines) into this file, which the
            driver relays (:mod:`flm.distributed.relay`); ``None``: the worker's own stdout.
        share_checkpoints: periodic checkpoints go through Ray's storage (:class:`RayCheckpoints`);
            off in Ray's local mode (``workers=0``), which keeps no checkpoint between runs: the stage
            then resumes from its local run directory alone.
    """

    stage: Callable[..., StageOutput]
    params: dict[str, Any]
    tracking_uri: str | None = None
    run_id: str | None = None
    tracker_factory: TrackerFactory | None = None
    progress_file: str | None = None
    share_checkpoints: bool = True


def mlflow_rank0_tracker(rank: int, tracking_uri: str | None, run_id: str | None) -> Tracker:
    """An MLflow tracker bound to the existing run ``run_id`` on rank 0; the no-op tracker elsewhere."""
    if rank != 0 or run_id is None:
        return NullTracker()
    os.environ.update(TELEMETRY_OFF)
    from mlflow.tracking import MlflowClient

    from flm.tracking import MLflowTracker

    return MLflowTracker(MlflowClient(tracking_uri=tracking_uri), run_id)


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The entries of ``metrics`` that are numbers (Ray and MLflow take floats only)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


class RayCheckpoints:
    """:class:`flm.train.checkpoint.CheckpointSync` through Ray Train: its storage holds the shared copies."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def fetch(self, run_dir: Path, run_key: str | None) -> Path | None:
        """Install ``ray.train.get_checkpoint()`` (the run's newest reported checkpoint) in ``run_dir``."""
        import ray.train

        from flm.train.checkpoint import adopt_checkpoint

        shared = ray.train.get_checkpoint()
        if shared is None:
            return adopt_checkpoint(None, run_dir, run_key)
        with shared.as_directory() as folder:  # downloaded from an object store; the folder itself on a filesystem
            return adopt_checkpoint(folder, run_dir, run_key)

    def saved(self, step: int, checkpoint: Path | None, metrics: dict[str, float]) -> None:
        """``ray.train.report`` (collective) of a periodic checkpoint, uploaded by rank 0 as ``ckpt-<step>-<unique>``
        (unique: a run restarted from an older step, or started fresh, never writes into a kept checkpoint)."""
        import ray.train
        from ray.train import Checkpoint

        shared = Checkpoint.from_directory(str(checkpoint)) if self.rank == 0 and checkpoint is not None else None
        name = f"ckpt-{step:08d}-{uuid.uuid4().hex[:8]}"  # rank 0's name is the one Ray uses
        ray.train.report(numeric(metrics), checkpoint=shared, checkpoint_dir_name=name,
                         delete_local_checkpoint_after_upload=False)


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``: ``config["task"]`` is a :class:`WorkerTask`."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from flm.config import Params

    task: WorkerTask = config["task"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if task.tracker_factory is not None:
        tracker = task.tracker_factory(rank)
    else:
        tracker = mlflow_rank0_tracker(rank, task.tracking_uri, task.run_id)
    params = Params.model_validate(task.params)
    with lines_to_file(task.progress_file if rank == 0 else None):
        output = task.stage(params, tracker=tracker, rank=rank, world_size=world_size, device=device,
                            checkpoints=RayCheckpoints(rank) if task.share_checkpoints else None)
    metrics = numeric(output.metrics) | {"world_size": float(world_size)}
    if rank == 0 and output.checkpoint is not None:
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(output.checkpoint)),
                         delete_local_checkpoint_after_upload=False)
    else:
        ray.train.report(metrics)
