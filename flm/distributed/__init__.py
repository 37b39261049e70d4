"""The Ray Train shell around the training stages: runtime (where Ray runs), job (the trainer), worker."""

from flm.distributed.job import JobOutcome, RayJobSpec, build_trainer, run_stage
from flm.distributed.runtime import check_local_resources, ray_address, ray_session
from flm.distributed.storage import check_storage, stable_run_name
from flm.distributed.worker import WorkerTask, train_worker

__all__ = ["JobOutcome", "RayJobSpec", "WorkerTask", "build_trainer", "check_local_resources", "check_storage",
           "ray_address", "ray_session", "run_stage", "stable_run_name", "train_worker"]
