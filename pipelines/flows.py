"""Prefect flows, one per DVC stage (``train_*``, ``distill_fmlm``, ``evaluate``), ``promote`` and ``pipeline``.

Each training flow is thin; its phases are Prefect tasks, so the UI shows each one's state:

1. parse the parameters once (:func:`resolve_params`: ``params.yaml`` + ``profile``, then a ``params``
   tree, then ``overrides`` in ``dvc exp run -S`` style; a :class:`flm.config.Params` object is taken as it
   is; :mod:`pipelines.overrides`), make the process hermetic (:func:`flm.environment.hermetic`);
2. task ``check_inputs``: the outputs, distillation's teacher and this machine's cores/GPUs, before
   Ray and MLflow start; then an MLflow parent run tagged with the git commit, the DVC hashes of the
   stage's inputs and the Prefect flow run (``prefect.flow_run_id``, ``prefect.flow_run_url``), and a
   child run for the Ray job (rank 0 logs step metrics, samples and checkpoints into it);
3. task ``train_on_ray``: the stage on Ray Train (:func:`flm.distributed.run_stage`, sized by the
   ``cluster`` params); its progress lines go to the flow-run log;
4. task ``write_outputs``: the final checkpoint (``models/<name>``, copied from Ray's persisted
   checkpoint) and the metrics JSON (``metrics/<name>.json``), ``<name>`` one of ``flm``, ``fmlm``,
   ``ar``, ``mdlm`` (:data:`MODEL_NAMES`);
5. task ``log_and_register``: the metrics and the model (a text-generating pyfunc, registered as
   ``<name>``); the flow run gets a markdown artifact with the metrics and the MLflow run's URL
   (``$FLM_MLFLOW_UI``, default http://127.0.0.1:5000), which is also in its log.

Where the outputs go keeps DVC's lineage honest: a run given a ``Params`` object (the DVC stages,
Python callers) or whose resolved tree equals ``params.yaml``'s for its profile writes the workspace's
DVC outputs as ``dvc repro`` does; a run with any other values (a UI or API run with ``overrides`` or an
edited ``params`` field) writes them under ``.state/experiments/<flow-run name>-<id>/`` and still logs and
registers its model in MLflow. ``evaluate`` refuses values other than ``params.yaml``'s (it writes the DVC
output ``reports/eval``). To change parameters of the pipeline itself, the ``pipeline`` flow runs
``dvc exp run --temp -S key=value ...`` (a DVC experiment that ``dvc exp show`` and MLflow both see).

Flow runs are named ``<stage>-<profile>`` (plus the overrides), whether ``dvc repro`` or the UI started them.

``evaluate`` (:mod:`pipelines.evaluate_stage`) samples every model at every NFE, judges the texts
and writes ``reports/eval/`` and ``metrics/eval.json``; it tags the registered versions holding the
evaluated weights with their Gen PPL and entropy, which ``promote`` decides on (MATH.md §4).

Command line (the DVC stages call this): ``python -m pipelines.run train_flm [--workers N]``
(:mod:`pipelines.run` makes the process hermetic *before* Prefect and MLflow are imported).
"""

from __future__ import annotations

import contextlib
import functools
import io
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE as NO_CACHE

from flm.config import ConfigError, Params

__all__ = [
    "FLOWS", "MODEL_NAMES", "distill_fmlm", "evaluate", "pipeline", "promote", "resolve_params", "run_training",
    "train_ar", "train_flm", "train_mdlm",
]

MODEL_NAMES = {"train_flm": "flm", "distill_fmlm": "fmlm", "train_ar": "ar", "train_mdlm": "mdlm"}
"""Training flow -> model name (``models/<name>``, ``metrics/<name>.json``, the registered model)."""


def resolve_params(
    params: Params | Mapping[str, Any] | None, params_file: str, profile: str | None,
    overrides: Mapping[str, Any] | None = None,
) -> Params:
    """The one place parameters are parsed: ``params_file`` + ``profile``, then ``params``, then ``overrides``.

    A ``Params`` object is taken as it is; a complete tree too; a partial tree is merged onto
    ``params_file`` (never onto class defaults); see :func:`pipelines.overrides.resolve`.
    """
    from pipelines.overrides import resolve

    return resolve(params, params_file, profile, overrides)


def _log(message: str) -> None:
    try:
        get_run_logger().info(message)
    except Exception:  # outside a flow run (``.fn()``)
        print(message)


def _file_profile(params_file: Path) -> str:
    """The ``profile`` key of a parameter file (``laptop`` when it sets none; ``params`` when unreadable)."""
    import yaml

    from flm.config import BASE_PROFILE

    try:
        raw = yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return "params"
    return str(raw.get("profile", BASE_PROFILE)) if isinstance(raw, dict) else "params"


def _run_name(stage: str) -> Callable[[], str]:
    """``flow_run_name`` of a stage's flow: ``<stage>-<profile>``, plus ``-key=value`` per override."""
    def name() -> str:
        from prefect.runtime import flow_run

        parameters = flow_run.parameters
        params = parameters.get("params")
        profile = parameters.get("profile") or (params.get("profile") if isinstance(params, Mapping) else None)
        profile = profile or getattr(params, "profile", None) or _file_profile(
            Path(parameters.get("root", ".")) / parameters.get("params_file", "params.yaml"))
        overrides = parameters.get("overrides") or {}
        return "-".join([stage, str(profile), *(f"{key}={value}" for key, value in overrides.items())])[:120]
    return name


class _LogLines(io.TextIOBase):
    """A text stream that writes through to ``stream`` and logs each complete line to ``logger``."""

    def __init__(self, stream: Any, logger: Any) -> None:
        self.stream, self.logger, self.pending = stream, logger, ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        lines = (self.pending + text).split("\n")
        self.pending = lines.pop()
        for line in lines:
            if line.strip():
                self.logger.info(line)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


@contextlib.contextmanager
def _progress_to_run_log() -> Iterator[None]:
    """Inside a Prefect run, this process's stdout (the stage's progress lines, relayed from Ray) is also logged."""
    try:
        logger = get_run_logger()
    except Exception:  # outside a run: nothing to log to
        yield
        return
    with contextlib.redirect_stdout(_LogLines(sys.stdout, logger)):
        yield


_TASK = {"cache_policy": NO_CACHE, "persist_result": False}  # results stay in memory: no data through Prefect


@task(name="check_inputs", task_run_name="check_inputs", **_TASK)
def _check_inputs(stage: str, params: Params, root: Path, workers: int | None, ray_address: str | None) -> None:
    """The outputs and the teacher (:func:`pipelines.train_stages.preflight`), and this machine's resources."""
    from flm.distributed import check_local_resources
    from pipelines import train_stages

    train_stages.preflight(stage, root)  # outputs and the teacher, before Ray and MLflow start
    cluster = params.cluster  # before Ray and MLflow start: the local machine must hold the workers
    check_local_resources(cluster.workers if workers is None else workers, cluster.cpus_per_worker,
                          cluster.gpus_per_worker, ray_address)


@task(name="train_on_ray", task_run_name="train_on_ray", **_TASK)
def _train_on_ray(stage_fn: Callable[..., Any], params: Params, spec: Any, uri: str, run_id: str, state: Path) -> Any:
    """:func:`flm.distributed.run_stage`, its progress lines in the flow-run log."""
    from flm.distributed import run_stage

    with _progress_to_run_log():
        return run_stage(stage_fn, params, spec, tracking_uri=uri, run_id=run_id, state_dir=state)


@task(name="write_outputs", task_run_name="write_outputs", **_TASK)
def _write_outputs(outcome: Any, out: Path, name: str) -> tuple[Path, dict[str, Any], Path]:
    """``<out>/models/<name>`` (the final checkpoint) and ``<out>/metrics/<name>.json``, each written atomically."""
    from flm.data.atomic import atomic_dir, write_json_atomic
    from flm.train.checkpoint import FORMAT as CHECKPOINT_FORMAT

    final = out / "models" / name
    with atomic_dir(final, "checkpoint.json", CHECKPOINT_FORMAT) as tmp:
        outcome.checkpoint.to_directory(str(tmp))
    metrics = {k: v for k, v in outcome.metrics.items() if k != "world_size"}
    metrics_file = out / "metrics" / f"{name}.json"
    write_json_atomic(metrics_file, {name: metrics})
    return final, metrics, metrics_file


@task(name="log_and_register", task_run_name="log_and_register", **_TASK)
def _log_and_register(
    parent: Any, metrics: dict[str, Any], metrics_file: Path, final: Path, root: Path, name: str, stage: str,
    uri: str, register_model: bool,
) -> str | None:
    """The metrics into the parent run; the model logged and registered as ``name`` (its version, else ``None``)."""
    parent.log_metrics(metrics, step=int(metrics.get("step", 0)))
    parent.log_artifact(metrics_file)
    if not register_model:
        return None
    from flm.registry.publish import log_text_model

    tokenizer = root / "data" / "tokenizer"
    registered = log_text_model(parent.run_id, final, tokenizer if tokenizer.is_dir() else None, name, uri,
                                tags={"stage": stage})
    _log(f"{stage}: registered {registered.model_uri}")
    return registered.version


def _markdown_artifact(key: str, markdown: str, description: str) -> None:
    """A markdown artifact of the current flow run (none outside a run)."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.runtime import flow_run

    if flow_run.id:
        create_markdown_artifact(markdown=markdown, key=key, description=description)


def _training_report(stage: str, params: Params, run_url: str, metrics: dict[str, Any], checkpoint: Path,
                     version: str | None) -> str:
    """The training flow's markdown artifact: where the model went, its MLflow run and metrics."""
    rows = "\n".join(f"| {key} | {value:.6g} |" if isinstance(value, float) else f"| {key} | {value} |"
                     for key, value in sorted(metrics.items()))
    registered = f"version {version} of `{MODEL_NAMES[stage]}`" if version else "not registered"
    return (f"# {stage} ({params.profile})\n\nMLflow run: [{run_url}]({run_url})\n\n"
            f"Checkpoint: `{checkpoint}`; model: {registered}\n\n| metric | value |\n|---|---|\n{rows}\n")


STAGE_SECTIONS = {"train_flm": ("model", "train"), "distill_fmlm": ("distill",), "train_ar": ("model", "ar"),
                  "train_mdlm": ("model", "mdlm")}
"""The params sections each training stage reads (as ``dvc.yaml`` lists them; the last is its loop section)."""


def ray_run_name(stage: str, params: Params, root: str | Path) -> str:
    """The stage's Ray run name, ``<stage>-<16 hex>``, fixed by what the stage computes: its params sections and
    its inputs now (:func:`pipelines.lineage.stage_inputs`: the data and teacher as ``dvc.lock`` has them, the
    code by content). Rerunning the same stage after a lost driver, head node or cluster (``ray job submit``,
    ``dvc repro`` or a Prefect retry again) finds this run in ``cluster.storage_path`` and resumes from its
    newest checkpoint; any change gives a new name, so a run is never resumed from another's checkpoint."""
    from flm.distributed import stable_run_name
    from pipelines.lineage import stage_inputs

    sections = {name: getattr(params, name).model_dump(mode="json") for name in STAGE_SECTIONS[stage]}
    return stable_run_name(stage, {"params": sections, "inputs": stage_inputs(root, stage)})


def run_training(
    stage: str, params: Params, root: str | Path = ".", workers: int | None = None, max_failures: int = 1,
    ray_address: str | None = None, register_model: bool = True, outputs: str | Path | None = None,
) -> dict[str, Any]:
    """Run one training stage end to end (the body of every training flow); see the module docstring.

    Args:
        outputs: where ``models/<name>`` and ``metrics/<name>.json`` go (default ``root``: the DVC outputs).

    Returns:
        ``run_id`` (parent), ``ray_run_id`` (child), ``metrics``, ``checkpoint`` (the written model),
        ``model_version`` (registered version, or ``None``), ``mlflow_url`` (the parent run's page).
    """
    from flm.distributed import RayJobSpec
    from flm.environment import hermetic
    from flm.tracking import default_tracking_uri, make_tracker
    from pipelines import train_stages
    from pipelines.lineage import lineage_tags, mlflow_run_url

    root = Path(root).resolve()
    out = root if outputs is None else Path(outputs).resolve()
    _check_inputs(stage, params, root, workers, ray_address)
    state = hermetic(root / ".state")
    name = MODEL_NAMES[stage]
    uri = default_tracking_uri(state)
    tags = lineage_tags(root, stage) | {"stage": stage, "profile": params.profile}
    if out != root:
        tags["outputs"] = str(out)
    parent = make_tracker("flm", run_name=stage, state_dir=state, tracking_uri=uri, tags=tags)
    child = make_tracker("flm", run_name=f"{stage}/ray", state_dir=state, tracking_uri=uri,
                         tags={"mlflow.parentRunId": parent.run_id, "stage": stage})
    run_url = mlflow_run_url(parent.client.get_run(parent.run_id).info.experiment_id, parent.run_id)
    try:
        parent.log_params(params.model_dump(mode="json"))
        job_name = ray_run_name(stage, params, root)
        overrides: dict[str, Any] = {"max_failures": max_failures,
                                     "keep_checkpoints": max(2, getattr(params, STAGE_SECTIONS[stage][-1]).keep_last)}
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
        _log(f"{stage}: Ray run {job_name} on {spec.workers} worker(s) (storage {spec.storage_path}; the same stage, "
             f"parameters and inputs resume its newest checkpoint there), MLflow run {parent.run_id}")
        _log(f"{stage}: MLflow run page {run_url}")
        outcome = _train_on_ray(stage_fn, params, spec, uri, child.run_id, state)
        final, metrics, metrics_file = _write_outputs(outcome, out, name)
        version = _log_and_register(parent, metrics, metrics_file, final, root, name, stage, uri, register_model)
    except BaseException:
        child.close("FAILED")
        parent.close("FAILED")
        raise
    child.close("FINISHED")
    parent.close("FINISHED")
    _markdown_artifact(f"{name}-training", _training_report(stage, params, run_url, metrics, final, version),
                       f"{stage}: metrics and the MLflow run")
    return {"run_id": parent.run_id, "ray_run_id": child.run_id, "metrics": metrics, "checkpoint": str(final),
            "model_version": version, "mlflow_url": run_url}


def _train(stage: str, params: Params | Mapping[str, Any] | None, overrides: Mapping[str, Any] | None,
           params_file: str, profile: str | None, root: str, **options: Any) -> dict[str, Any]:
    """A training flow's body: resolve the parameters, choose where the outputs go, :func:`run_training`."""
    from pipelines.overrides import matches_params_file

    file = str(Path(root) / params_file)
    p = resolve_params(params, file, profile, overrides)
    outputs = None
    if not isinstance(params, Params) and not matches_params_file(p, file):
        from prefect.runtime import flow_run

        run = f"{flow_run.name or stage}-{(flow_run.id or uuid.uuid4().hex)[:8]}"
        outputs = Path(root).resolve() / ".state" / "experiments" / run
        _log(f"{stage}: parameters differ from {params_file} (profile {p.profile}): outputs go to {outputs}, "
             "not to the workspace's DVC outputs")
    return run_training(stage, p, root, outputs=outputs, **options)


@flow(name="train_flm", flow_run_name=_run_name("train_flm"))
def train_flm(
    params: dict[str, Any] | Params | None = None, params_file: str = "params.yaml", profile: str | None = None,
    root: str = ".", workers: int | None = None, max_failures: int = 1, ray_address: str | None = None,
    register_model: bool = True, overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """FLM pretraining on Ray Train: ``data/tokens`` -> ``models/flm``, ``metrics/flm.json``, model ``flm``.

    Args:
        params: the parameter tree: a ``Params`` object or a complete tree as it is, a partial tree merged
            onto ``params_file`` with ``profile`` (default: that file as it is).
        root: the project directory (``data/``, ``models/``, ``metrics/``, ``.state/``).
        workers: override ``cluster.workers`` (0: in-process, no Ray cluster).
        max_failures: worker-group restarts Ray Train tolerates.
        ray_address: a Ray cluster (default ``$RAY_ADDRESS``, else an embedded local Ray).
        register_model: log and register the MLflow model.
        overrides: dotted keys set last, as ``dvc exp run -S`` does (``{"train.steps": 100}``). Values other
            than ``params_file``'s send the outputs to ``.state/experiments/`` (module docstring).
    """
    return _train("train_flm", params, overrides, params_file, profile, root, workers=workers,
                  max_failures=max_failures, ray_address=ray_address, register_model=register_model)


@flow(name="distill_fmlm", flow_run_name=_run_name("distill_fmlm"))
def distill_fmlm(
    params: dict[str, Any] | Params | None = None, params_file: str = "params.yaml", profile: str | None = None,
    root: str = ".", workers: int | None = None, max_failures: int = 1, ray_address: str | None = None,
    register_model: bool = True, overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """FMLM distillation on Ray Train: ``models/flm`` -> ``models/fmlm``, ``metrics/fmlm.json``, model ``fmlm``.

    Arguments as for :func:`train_flm`.
    """
    return _train("distill_fmlm", params, overrides, params_file, profile, root, workers=workers,
                  max_failures=max_failures, ray_address=ray_address, register_model=register_model)


@flow(name="train_ar", flow_run_name=_run_name("train_ar"))
def train_ar(
    params: dict[str, Any] | Params | None = None, params_file: str = "params.yaml", profile: str | None = None,
    root: str = ".", workers: int | None = None, max_failures: int = 1, ray_address: str | None = None,
    register_model: bool = True, overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The AR baseline on Ray Train: ``data/tokens`` -> ``models/ar``, ``metrics/ar.json``, model ``ar``.

    Arguments as for :func:`train_flm`.
    """
    return _train("train_ar", params, overrides, params_file, profile, root, workers=workers,
                  max_failures=max_failures, ray_address=ray_address, register_model=register_model)


@flow(name="train_mdlm", flow_run_name=_run_name("train_mdlm"))
def train_mdlm(
    params: dict[str, Any] | Params | None = None, params_file: str = "params.yaml", profile: str | None = None,
    root: str = ".", workers: int | None = None, max_failures: int = 1, ray_address: str | None = None,
    register_model: bool = True, overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The MDLM baseline on Ray Train: ``data/tokens`` -> ``models/mdlm``, ``metrics/mdlm.json``, model ``mdlm``.

    Arguments as for :func:`train_flm`.
    """
    return _train("train_mdlm", params, overrides, params_file, profile, root, workers=workers,
                  max_failures=max_failures, ray_address=ray_address, register_model=register_model)


@flow(name="evaluate", flow_run_name=_run_name("evaluate"))
def evaluate(
    params: dict[str, Any] | Params | None = None, params_file: str = "params.yaml", profile: str | None = None,
    root: str = ".", device: str | None = None, overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Gen PPL and entropy of every model at every NFE: ``models/*`` -> ``reports/eval/``, ``metrics/eval.json``.

    The report (``reports/eval/report.md``) becomes the flow run's markdown artifact ``evaluation``.

    Args:
        params: the parameter tree (default: ``params_file`` with ``profile``); reads ``eval``.
        root: the project directory (``data/``, ``models/``, ``reports/``, ``metrics/``, ``.state/``).
        device: where models and judge run (default: CUDA if available, else CPU).
        overrides: dotted keys set last; the result must equal ``params_file``'s values (the report is a DVC
            output): other values are refused, pointing at the ``pipeline`` flow.
    """
    from pipelines.evaluate_stage import run_evaluate
    from pipelines.overrides import matches_params_file

    file = str(Path(root) / params_file)
    p = resolve_params(params, file, profile, overrides)
    if not isinstance(params, Params) and not matches_params_file(p, file):
        raise ConfigError(f"evaluate: these parameters differ from {params_file} (profile {p.profile}) and the "
                          "report is a DVC output; change parameters through the pipeline flow (dvc exp run -S)")
    result = run_evaluate(p, root, device, log=_log)
    report = Path(root) / "reports" / "eval" / "report.md"
    if report.is_file():
        _markdown_artifact("evaluation", report.read_text(encoding="utf-8"), "reports/eval/report.md")
    return result


@flow(name="promote")
def promote(
    model: str = "flm", version: int | None = None, metric: str = "gen_ppl", lower_is_better: bool = True,
    root: str = ".", params: Params | None = None, params_file: str = "params.yaml", profile: str | None = None,
    all_models: bool = False,
) -> dict[str, Any]:
    """Move ``@champion`` of registered model ``model`` to ``version`` (default newest) only if it is better.

    ``metric="gen_ppl"`` (default): the evaluate stage's Gen PPL at ``eval.promote_nfe`` (from
    ``params``, else ``params_file`` + ``profile``), refusing a version never evaluated or whose
    entropy is below ``eval.entropy_floor`` x the held-out entropy (:mod:`flm.registry.promote`);
    ``metric="val_loss"``: the training run's loss (``lower_is_better``), no params read.

    ``all_models=True`` is the DVC stage ``promote``: every model of ``eval.models``, each with the
    version holding ``models/<name>``'s weights, by the Gen PPL rule; writes ``metrics/promote.json``
    (:mod:`pipelines.promote_stage`; ``model``, ``version`` and ``metric`` are not read).
    """
    from flm.environment import hermetic

    if all_models:
        from pipelines.promote_stage import run_promote

        return run_promote(resolve_params(params, str(Path(root) / params_file), profile), root, log=_log)
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


def _experiment_name() -> str:
    """The DVC experiment's name: the flow run's name, as a git ref allows (``[A-Za-z0-9_-]``)."""
    import re

    from prefect.runtime import flow_run

    return re.sub(r"[^A-Za-z0-9_-]+", "-", flow_run.name or f"ui-{uuid.uuid4().hex[:8]}").strip("-")


@flow(name="pipeline")
def pipeline(overrides: dict[str, Any] | None = None, root: str = ".", name: str | None = None) -> dict[str, Any]:
    """The whole DVC pipeline as a DVC experiment: ``dvc exp run --temp -n <name> -S key=value ...`` in ``root``.

    The way to change parameters from the UI without touching what ``dvc repro`` made: the experiment
    runs in a temporary copy of the workspace (``--temp``), so the workspace's outputs and ``dvc.lock``
    stay as they are; its results are in ``dvc exp show`` (``dvc exp apply <name>`` brings them into the
    workspace) and its stages' runs in the workspace's MLflow store (``$MLFLOW_TRACKING_URI``, else
    ``.state/mlflow``). DVC's output is streamed to the flow-run log.

    Args:
        overrides: dotted keys of ``params.yaml`` as ``-S`` takes them (``{"train.steps": 100}``,
            ``{"profile": "smoke"}``); checked against ``params.yaml`` before DVC starts (an unknown key,
            an invalid value: a clear error); a parameter ``params.yaml`` leaves at its default is added
            (``-S +key=value``). As with ``-S``, a value the chosen profile sets itself wins over a
            top-level override (set ``profiles.<profile>.train.steps`` then).
        root: the project (a git repository with ``dvc.yaml`` and ``params.yaml``).
        name: the experiment's name (default: the flow run's name).
    """
    import os
    import subprocess

    import yaml

    from flm.config import UniqueKeyLoader, params_from_dict
    from flm.tracking import default_tracking_uri
    from pipelines.overrides import apply_overrides, dvc_set_args

    root_path = Path(root).resolve()
    overrides = dict(overrides or {})
    raw = yaml.load((root_path / "params.yaml").read_text(encoding="utf-8"), Loader=UniqueKeyLoader) or {}
    params_from_dict(apply_overrides(raw, overrides, create=True), origin="params.yaml with overrides")
    name = name or _experiment_name()
    command = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", name, *dvc_set_args(overrides, raw)]
    env = os.environ | {  # stage commands find this `python`; their MLflow runs land in the workspace's store
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root_path / ".state"),
    }
    _log(f"pipeline: {' '.join(command[1:])} in {root_path}")
    lines: list[str] = []
    with subprocess.Popen(command, cwd=root_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as process:
        for line in process.stdout or ():
            lines.append(line.rstrip())
            if line.strip():
                _log(line.rstrip())
    if process.returncode != 0:
        tail = "\n".join(lines[-20:])
        raise RuntimeError(f"dvc exp run failed (exit status {process.returncode}):\n{tail}")
    _log(f"pipeline: experiment {name} done; `dvc exp show` lists it, `dvc exp apply {name}` takes it")
    return {"experiment": name, "overrides": overrides}


FLOWS = {"train_flm": train_flm, "distill_fmlm": distill_fmlm, "train_ar": train_ar, "train_mdlm": train_mdlm,
         "evaluate": evaluate, "promote": promote}
