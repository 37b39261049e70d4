"""Prefect flows, one per DVC stage (``train_*``, ``distill_fmlm``, ``evaluate``), and ``promote``.

Each training flow is thin:

1. parse the parameters once (``params`` given as a validated :class:`flm.config.Params` or its
   dict, else ``params_file`` + ``profile``), make the process hermetic (:func:`flm.environment.hermetic`);
2. open an MLflow parent run tagged with the git commit, the DVC hashes of the stage's inputs and
   the Prefect flow-run id, and a child run for the Ray job (rank 0 logs step metrics, samples and
   checkpoints into it);
3. run the stage on Ray Train (:func:`flm.distributed.run_stage`, sized by the ``cluster`` params);
4. write the DVC outputs: the final checkpoint (``models/<name>``, copied from Ray's persisted
   checkpoint) and the metrics JSON (``metrics/<name>.json``), ``<name>`` one of ``flm``, ``fmlm``,
   ``ar``, ``mdlm`` (:data:`MODEL_NAMES`);
5. log the metrics and the model (a text-generating pyfunc, registered as ``<name>``).

``evaluate`` (:mod:`pipelines.evaluate_stage`) samples every model at every NFE, judges the texts
and writes ``reports/eval/`` and ``metrics/eval.json``; it tags the registered versions holding the
evaluated weights with their Gen PPL and entropy, which ``promote`` decides on (MATH.md §4).

Command line (the DVC stages call this): ``python -m pipelines.run train_flm [--workers N]``
(:mod:`pipelines.run` makes the process hermetic *before* Prefect and MLflow are imported).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flm.config import Params, load_params

__all__ = [
    "FLOWS", "MODEL_NAMES", "distill_fmlm", "evaluate", "promote", "resolve_params", "run_training", "train_ar",
    "train_flm", "train_mdlm",
]

MODEL_NAMES = {"train_flm": "flm", "distill_fmlm": "fmlm", "train_ar": "ar", "train_mdlm": "mdlm"}
"""Training flow -> model name (``models/<name>``, ``metrics/<name>.json``, the registered model)."""


def resolve_params(params: Params | dict[str, Any] | None, params_file: str, profile: str | None) -> Params:
    """The one place parameters are parsed: a ``Params``, its dict, or ``params_file`` (+ ``profile``)."""
    if isinstance(params, Params):
        return params
    if params is not None:
        return Params.model_validate(params)
    return load_params(params_file, profile=profile)


def _log(message: str) -> None:
    try:
        get_run_logger().info(message)
    except Exception:  # outside a flow run (``.fn()``)
        print(message)


def run_training(
    stage: str, params: Params, root: str | Path = ".", workers: int | None = None, max_failures: int = 1,
    ray_address: str | None = None, register_model: bool = True,
) -> dict[str, Any]:
    """Run one training stage end to end (the body of every training flow); see the module docstring.

    Returns:
        ``run_id`` (parent), ``ray_run_id`` (child), ``metrics``, ``checkpoint`` (the DVC output),
        ``model_version`` (registered version, or ``None``).
    """
    from flm.data.atomic import atomic_dir, write_json_atomic
    from flm.distributed import RayJobSpec, check_local_resources, run_stage
    from flm.environment import hermetic
    from flm.tracking import default_tracking_uri, make_tracker
    from flm.train.checkpoint import FORMAT as CHECKPOINT_FORMAT
    from pipelines import train_stages
    from pipelines.lineage import lineage_tags, prefect_flow_run_id

    root = Path(root).resolve()
    train_stages.preflight(stage, root)  # outputs and the teacher, before Ray and MLflow start
    cluster = params.cluster  # before Ray and MLflow start: the local machine must hold the workers
    check_local_resources(cluster.workers if workers is None else workers, cluster.cpus_per_worker,
                          cluster.gpus_per_worker, ray_address)
    state = hermetic(root / ".state")
    name = MODEL_NAMES[stage]
    uri = default_tracking_uri(state)
    tags = lineage_tags(root, stage) | {"stage": stage, "profile": params.profile}
    parent = make_tracker("flm", run_name=stage, state_dir=state, tracking_uri=uri, tags=tags)
    child = make_tracker("flm", run_name=f"{stage}/ray", state_dir=state, tracking_uri=uri,
                         tags={"mlflow.parentRunId": parent.run_id, "stage": stage})
    try:
        parent.log_params(params.model_dump(mode="json"))
        job_name = f"{stage}-{prefect_flow_run_id() or uuid.uuid4().hex[:12]}"
        overrides: dict[str, Any] = {"max_failures": max_failures}
        if workers is not None:
            overrides["workers"] = workers
        if ray_address is not None:
            overrides["address"] = ray_address
        spec = RayJobSpec.from_cluster(params.cluster, job_name, state / "ray" / "results", **overrides)
        scratch = state / "ray" / "out" / job_name
        paths = train_stages.StagePaths(
            tokens=root / "data" / "tokens", tokenizer=root / "data" / "tokenizer", models=scratch / "models",
            metrics=scratch / "metrics", state=state,
        )
        if stage == "distill_fmlm":  # the teacher is this project's DVC output models/flm
            (scratch / "models").mkdir(parents=True, exist_ok=True)
            teacher = scratch / "models" / "flm"
            if not teacher.exists():
                teacher.symlink_to(root / "models" / "flm", target_is_directory=True)
        stage_fn: Callable[..., Any] = functools.partial(getattr(train_stages, stage), paths=paths,
                                                         progress="lines")
        _log(f"{stage}: Ray job {job_name} on {spec.workers} worker(s), MLflow run {parent.run_id}")
        outcome = run_stage(stage_fn, params, spec, tracking_uri=uri, run_id=child.run_id, state_dir=state)

        final = root / "models" / name
        with atomic_dir(final, "checkpoint.json", CHECKPOINT_FORMAT) as tmp:
            outcome.checkpoint.to_directory(str(tmp))
        metrics = {k: v for k, v in outcome.metrics.items() if k != "world_size"}
        metrics_file = root / "metrics" / f"{name}.json"
        write_json_atomic(metrics_file, {name: metrics})
        parent.log_metrics(metrics, step=int(metrics.get("step", 0)))
        parent.log_artifact(metrics_file)
        version = None
        if register_model:
            from flm.registry.publish import log_text_model

            tokenizer = root / "data" / "tokenizer"
            registered = log_text_model(parent.run_id, final, tokenizer if tokenizer.is_dir() else None, name, uri,
                                        tags={"stage": stage})
            version = registered.version
            _log(f"{stage}: registered {registered.model_uri}")
    except BaseException:
        child.close("FAILED")
        parent.close("FAILED")
        raise
    child.close("FINISHED")
    parent.close("FINISHED")
    return {"run_id": parent.run_id, "ray_run_id": child.run_id, "metrics": metrics, "checkpoint": str(final),
            "model_version": version}


@flow(name="train_flm")
def train_flm(
    params: Params | None = None, params_file: str = "params.yaml", profile: str | None = None, root: str = ".",
    workers: int | None = None, max_failures: int = 1, ray_address: str | None = None, register_model: bool = True,
) -> dict[str, Any]:
    """FLM pretraining on Ray Train: ``data/tokens`` -> ``models/flm``, ``metrics/flm.json``, model ``flm``.

    Args:
        params: the parameter tree (default: ``params_file`` with ``profile``).
        root: the project directory (``data/``, ``models/``, ``metrics/``, ``.state/``).
        workers: override ``cluster.workers`` (0: in-process, no Ray cluster).
        max_failures: worker-group restarts Ray Train tolerates.
        ray_address: a Ray cluster (default ``$RAY_ADDRESS``, else an embedded local Ray).
        register_model: log and register the MLflow model.
    """
    p = resolve_params(params, str(Path(root) / params_file), profile)
    return run_training("train_flm", p, root, workers, max_failures, ray_address, register_model)


@flow(name="distill_fmlm")
def distill_fmlm(
    params: Params | None = None, params_file: str = "params.yaml", profile: str | None = None, root: str = ".",
    workers: int | None = None, max_failures: int = 1, ray_address: str | None = None, register_model: bool = True,
) -> dict[str, Any]:
    """FMLM distillation on Ray Train: ``models/flm`` -> ``models/fmlm``, ``metrics/fmlm.json``, model ``fmlm``.

    Arguments as for :func:`train_flm`.
    """
    p = resolve_params(params, str(Path(root) / params_file), profile)
    return run_training("distill_fmlm", p, root, workers, max_failures, ray_address, register_model)


@flow(name="train_ar")
def train_ar(
    params: Params | None = None, params_file: str = "params.yaml", profile: str | None = None, root: str = ".",
    workers: int | None = None, max_failures: int = 1, ray_address: str | None = None, register_model: bool = True,
) -> dict[str, Any]:
    """The AR baseline on Ray Train: ``data/tokens`` -> ``models/ar``, ``metrics/ar.json``, model ``ar``.

    Arguments as for :func:`train_flm`.
    """
    p = resolve_params(params, str(Path(root) / params_file), profile)
    return run_training("train_ar", p, root, workers, max_failures, ray_address, register_model)


@flow(name="train_mdlm")
def train_mdlm(
    params: Params | None = None, params_file: str = "params.yaml", profile: str | None = None, root: str = ".",
    workers: int | None = None, max_failures: int = 1, ray_address: str | None = None, register_model: bool = True,
) -> dict[str, Any]:
    """The MDLM baseline on Ray Train: ``data/tokens`` -> ``models/mdlm``, ``metrics/mdlm.json``, model ``mdlm``.

    Arguments as for :func:`train_flm`.
    """
    p = resolve_params(params, str(Path(root) / params_file), profile)
    return run_training("train_mdlm", p, root, workers, max_failures, ray_address, register_model)


@flow(name="evaluate")
def evaluate(
    params: Params | None = None, params_file: str = "params.yaml", profile: str | None = None, root: str = ".",
    device: str | None = None,
) -> dict[str, Any]:
    """Gen PPL and entropy of every model at every NFE: ``models/*`` -> ``reports/eval/``, ``metrics/eval.json``.

    Args:
        params: the parameter tree (default: ``params_file`` with ``profile``); reads ``eval``.
        root: the project directory (``data/``, ``models/``, ``reports/``, ``metrics/``, ``.state/``).
        device: where models and judge run (default: CUDA if available, else CPU).
    """
    from pipelines.evaluate_stage import run_evaluate

    p = resolve_params(params, str(Path(root) / params_file), profile)
    return run_evaluate(p, root, device, log=_log)


@flow(name="promote")
def promote(
    model: str = "flm", version: int | None = None, metric: str = "gen_ppl", lower_is_better: bool = True,
    root: str = ".", params: Params | None = None, params_file: str = "params.yaml", profile: str | None = None,
) -> dict[str, Any]:
    """Move ``@champion`` of registered model ``model`` to ``version`` (default newest) only if it is better.

    ``metric="gen_ppl"`` (default): the evaluate stage's Gen PPL at ``eval.promote_nfe`` (from
    ``params``, else ``params_file`` + ``profile``), refusing a version never evaluated or whose
    entropy is below ``eval.entropy_floor`` x the held-out entropy (:mod:`flm.registry.promote`);
    ``metric="val_loss"``: the training run's loss (``lower_is_better``), no params read.
    """
    from flm.environment import hermetic

    state = hermetic(Path(root).resolve() / ".state")
    from mlflow import MlflowClient

    from flm.registry.promote import promote as decide
    from flm.tracking import check_store, default_tracking_uri

    uri = default_tracking_uri(state)
    check_store(uri)
    rule: dict[str, Any] = {}
    if metric == "gen_ppl":
        spec = resolve_params(params, str(Path(root) / params_file), profile).eval
        rule = {"nfe": spec.promote_nfe, "entropy_floor": spec.entropy_floor}
    decision = decide(MlflowClient(uri), model, version, metric, lower_is_better, **rule)
    _log(f"promote {model} v{decision.candidate}: {'promoted' if decision.promoted else 'refused'} ({decision.reason})")
    return {"promoted": decision.promoted, "version": decision.candidate, "reason": decision.reason,
            "champion_before": decision.champion_before}


FLOWS = {"train_flm": train_flm, "distill_fmlm": distill_fmlm, "train_ar": train_ar, "train_mdlm": train_mdlm,
         "evaluate": evaluate, "promote": promote}
