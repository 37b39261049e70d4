"""The function every Ray Train worker runs: one training stage on this worker's rank.

Ray touches the training in four named places only, all here:

1. **who am I** — rank and world size from ``ray.train.get_context()``; the device from
   ``ray.train.torch.get_device()`` (``cuda:<local rank>`` on GPU workers, else CPU);
2. **the tracker** — rank 0 logs into the MLflow run whose id the driver opened (so a restarted
   worker group keeps appending to the same run); every other rank gets the no-op tracker;
3. **the stage** — the stage function trains (the loop wraps the objective in DDP when the world
   is larger than one, each rank reading its own slice of every global batch, and resumes from the
   newest checkpoint in its run directory after a restart);
4. **the report** — the final checkpoint directory goes to ``ray.train.report`` (rank 0), with
   the stage's numeric metrics (every rank reports: Ray Train's report is collective).

The stage function is passed in (``flm`` never imports ``pipelines``): any picklable callable
``stage(params, tracker=..., rank=..., world_size=..., device=...)`` returning an object with
``checkpoint`` (a directory) and ``metrics`` (a dict).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from flm.distributed.relay import lines_to_file
from flm.environment import TELEMETRY_OFF
from flm.tracking import NullTracker, Tracker

__all__ = ["StageOutput", "WorkerTask", "mlflow_rank0_tracker", "numeric", "train_worker"]


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
    """

    stage: Callable[..., StageOutput]
    params: dict[str, Any]
    tracking_uri: str | None = None
    run_id: str | None = None
    tracker_factory: TrackerFactory | None = None
    progress_file: str | None = None


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
        output = task.stage(params, tracker=tracker, rank=rank, world_size=world_size, device=device)
    metrics = numeric(output.metrics) | {"world_size": float(world_size)}
    if rank == 0 and output.checkpoint is not None:
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(output.checkpoint)))
    else:
        ray.train.report(metrics)
