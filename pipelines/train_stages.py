"""DVC training stages: ``python -m pipelines.train_stages {train_flm,distill_fmlm,train_ar,train_mdlm}``.

* ``train_flm``: ``model`` + ``train`` params, ``data/tokens`` -> ``models/flm`` (the final
  checkpoint) and ``metrics/flm.json``.
* ``distill_fmlm``: ``distill`` params, ``models/flm`` (the teacher, rebuilt from its own saved
  config with its EMA weights) -> ``models/fmlm`` and ``metrics/fmlm.json``.
* ``train_ar`` / ``train_mdlm``: the baselines (MATH.md §6), ``model`` + ``ar`` / ``mdlm`` params,
  ``data/tokens`` -> ``models/ar`` / ``models/mdlm`` and ``metrics/ar.json`` / ``metrics/mdlm.json``.

Every checkpoint's meta records its ``model_kind`` (``flm``, ``fmlm``, ``ar``, ``mdlm``;
:func:`flm.train.checkpoint.model_kind`), so a generator needs nothing but the directory.

Each stage opens an MLflow run (experiment ``flm``; sqlite store under ``.state/mlflow`` unless
``MLFLOW_TRACKING_URI`` says otherwise), logs its params, per-step metrics, sample snapshots and
the final checkpoint directory. Intermediate checkpoints live in ``.state/runs/<stage>/<run_key>``
(not a DVC output, so DVC never deletes them; ``$FLM_RUN_CACHE/<stage>/<run_key>`` where that
variable is set, e.g. to a node's local disk on a cluster): ``run_key`` hashes everything the run
depends on, so rerunning a killed stage resumes exactly where it stopped, and a changed parameter
starts a fresh run. Under Ray, ``checkpoints=`` (:class:`flm.train.checkpoint.CheckpointSync`)
makes Ray's storage the shared copy and that directory a cache. The stage functions are importable
(Prefect flows and Ray workers call them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flm.config import ConfigError, Params, load_params
from flm.data.atomic import atomic_dir, check_output_dir, project_marker, write_json_atomic
from flm.data.blocks import TokenBlocks
from flm.data.errors import DataError, OutputError
from flm.tracking import NullTracker, Tracker, make_tracker
from flm.train.checkpoint import FORMAT as CHECKPOINT_FORMAT
from flm.train.checkpoint import CheckpointSync, load_backbone, read_meta, require_kind
from flm.train.loop import LoopResult, train_loop

MODEL_NAMES = {"train_flm": "flm", "distill_fmlm": "fmlm", "train_ar": "ar", "train_mdlm": "mdlm"}
"""Stage -> model name: ``models/<name>``, ``metrics/<name>.json`` and the checkpoint's ``model_kind``."""


@dataclass(frozen=True)
class StagePaths:
    """Where a stage reads and writes (defaults match ``dvc.yaml``)."""

    tokens: Path = Path("data/tokens")
    tokenizer: Path = Path("data/tokenizer")
    models: Path = Path("models")
    metrics: Path = Path("metrics")
    state: Path = Path(".state")


@dataclass
class StageResult:
    """A finished stage: its final checkpoint, metrics and the loop's record."""

    checkpoint: Path
    metrics: dict[str, Any]
    loop: LoopResult
    run_id: str | None


def _run_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_cache(paths: StagePaths) -> Path:
    """Where the runs' checkpoints are kept on this machine: ``$FLM_RUN_CACHE``, else ``<state>/runs``."""
    return Path(os.environ.get("FLM_RUN_CACHE") or paths.state / "runs")


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_outputs(stage: str, paths: StagePaths) -> None:
    """Before any work: ``models/<name>`` must be missing or a previous checkpoint, ``metrics/<name>.json`` no folder,
    and ``models`` no project or repository (``--models .`` in a checkout would write ``./flm``).

    Raises:
        OutputError: a path holds something else (:func:`flm.data.atomic.check_output_dir`).
    """
    name = MODEL_NAMES[stage]
    marker = project_marker(paths.models)
    if marker is not None:
        raise OutputError(f"{paths.models}: holds {marker} (a project or repository), not a models folder; "
                          "choose another --models")
    check_output_dir(paths.models / name, "checkpoint.json", CHECKPOINT_FORMAT)
    if (paths.metrics / f"{name}.json").is_dir():
        raise OutputError(f"{paths.metrics / f'{name}.json'}: is a directory; refusing to replace it with a JSON file")


def preflight(stage: str, root: str | Path) -> None:
    """What a training flow in project ``root`` checks before Ray or MLflow start: its outputs
    (:func:`check_outputs`) and, for ``distill_fmlm``, that ``models/flm`` is an FLM checkpoint.

    Raises:
        OutputError: an output path holds something else.
        CheckpointError: the teacher is missing, corrupt or of another kind (the message names both kinds).
    """
    root = Path(root)
    check_outputs(stage, StagePaths(models=root / "models", metrics=root / "metrics"))
    if stage == "distill_fmlm":
        require_kind(root / "models" / "flm", "flm")


def _decoder(paths: StagePaths) -> Any:
    from flm.data.tokenizer import load_tokenizer

    if not (paths.tokenizer / "tokenizer.json").is_file():
        return None
    return load_tokenizer(paths.tokenizer).decode


def _run(
    stage: str,
    objective: torch.nn.Module,
    backbone_name: str,
    params: Params,
    settings: Any,
    key_parts: dict[str, Any],
    paths: StagePaths,
    tracker: Tracker | None,
    progress: bool,
    rank: int,
    world_size: int,
    checkpoints: CheckpointSync | None = None,
) -> StageResult:
    """Train, export the final checkpoint to ``models/<name>``, write the metrics, log everything."""
    name = MODEL_NAMES[stage]
    train = TokenBlocks(paths.tokens, "train")
    val = TokenBlocks(paths.tokens, "val")
    run_key = _run_key(key_parts)
    meta = {"params": params.model_dump(mode="json"), "run_key": run_key, "stage": stage, "model_kind": name,
            **key_parts}
    own = tracker is None and rank == 0
    if tracker is None:
        tracker = make_tracker("flm", run_name=stage, state_dir=paths.state) if rank == 0 else NullTracker()
    try:
        tracker.set_tags({"stage": stage, "run_key": run_key, "profile": params.profile})
        tracker.log_params(key_parts)
        result = train_loop(
            objective, backbone_name, settings, train, val, run_cache(paths) / name / run_key,
            meta=meta, tracker=tracker, rank=rank, world_size=world_size, device=next(objective.parameters()).device,
            decode=_decoder(paths), progress=progress, desc=name, checkpoints=checkpoints,
        )
        final = paths.models / name
        if rank == 0:
            with atomic_dir(final, "checkpoint.json", CHECKPOINT_FORMAT) as tmp:
                shutil.copytree(result.checkpoint, tmp, dirs_exist_ok=True)
        last_val = result.val[-1] if result.val else {}
        last_train = result.history[-1] if result.history else {}
        metrics = {
            "step": result.step,
            "train_loss": last_train.get("train/loss"),
            "seconds": round(result.seconds, 1),
            "resumed_from": result.resumed_from,
            **{f"val_{k}": v for k, v in last_val.items() if k != "step"},
        }
        if rank == 0:
            write_json_atomic(paths.metrics / f"{name}.json", {name: metrics})
            tracker.log_artifacts(final, "checkpoint")
            tracker.log_artifact(paths.metrics / f"{name}.json")
    except BaseException:
        if own:
            tracker.close("FAILED")
        raise
    if own:
        tracker.close("FINISHED")
    return StageResult(final, metrics, result, getattr(tracker, "run_id", None))


def train_flm(
    params: Params, paths: StagePaths | None = None, tracker: Tracker | None = None, progress: bool = True,
    rank: int = 0, world_size: int = 1, device: str | torch.device | None = None,
    checkpoints: CheckpointSync | None = None,
) -> StageResult:
    """Stage ``train_flm``: FLM pretraining on ``data/tokens`` -> ``models/flm``, ``metrics/flm.json``."""
    from flm.model import DiT
    from flm.objectives import FLMObjective

    paths = paths or StagePaths()
    check_outputs("train_flm", paths)
    device = torch.device(device) if device is not None else _device()
    fingerprint = TokenBlocks(paths.tokens, "train").meta.get("source_fingerprint")
    vocab_size = TokenBlocks(paths.tokens, "train").vocab_size
    torch.manual_seed(params.train.seed)
    backbone = DiT(params.model.dit_config(vocab_size, n_times=1))
    objective = FLMObjective(backbone, learn_loss_weight=params.train.learn_loss_weight,
                             ce_chunk=params.train.ce_chunk).to(device)
    key = {
        "model": params.model.model_dump(mode="json"),
        "train": params.train.model_dump(mode="json"),
        "data_fingerprint": fingerprint,
        "vocab_size": vocab_size,
    }
    return _run("train_flm", objective, "backbone", params, params.train, key, paths, tracker, progress, rank,
                world_size, checkpoints)


def distill_fmlm(
    params: Params, paths: StagePaths | None = None, tracker: Tracker | None = None, progress: bool = True,
    rank: int = 0, world_size: int = 1, device: str | torch.device | None = None,
    checkpoints: CheckpointSync | None = None,
) -> StageResult:
    """Stage ``distill_fmlm``: FMLM from the EMA weights of ``models/flm`` -> ``models/fmlm``, ``metrics/fmlm.json``."""
    from flm.objectives import FMLMDistillation

    paths = paths or StagePaths()
    check_outputs("distill_fmlm", paths)
    device = torch.device(device) if device is not None else _device()
    teacher_dir = paths.models / "flm"
    teacher_meta = read_meta(teacher_dir)
    teacher = load_backbone(teacher_dir, ema=True, device=device, kind="flm")
    teacher_hash = hashlib.sha256((teacher_dir / "ema.safetensors").read_bytes()).hexdigest()
    torch.manual_seed(params.distill.seed)
    d = params.distill
    objective = FMLMDistillation.from_teacher(
        teacher, diag_fraction=d.diag_fraction, boundary_fraction=d.boundary_fraction, ce_chunk=d.ce_chunk,
        method=d.method,
    ).to(device)
    key = {
        "distill": d.model_dump(mode="json"),
        "teacher_sha256": teacher_hash,
        "teacher_step": teacher_meta["step"],
        "data_fingerprint": TokenBlocks(paths.tokens, "train").meta.get("source_fingerprint"),
    }
    return _run("distill_fmlm", objective, "student", params, d, key, paths, tracker, progress, rank, world_size,
                checkpoints)


def _train_baseline(
    stage: str, make_objective: Callable[[Any], torch.nn.Module], n_times: int, causal: bool, params: Params,
    paths: StagePaths | None, tracker: Tracker | None, progress: bool, rank: int, world_size: int,
    device: str | torch.device | None, checkpoints: CheckpointSync | None = None,
) -> StageResult:
    """A baseline on ``data/tokens``: the shared ``model`` shape with ``V + 1`` ids (MATH.md §6)."""
    from flm.model import DiT

    name = MODEL_NAMES[stage]
    settings = getattr(params, name)
    paths = paths or StagePaths()
    check_outputs(stage, paths)
    device = torch.device(device) if device is not None else _device()
    blocks = TokenBlocks(paths.tokens, "train")
    torch.manual_seed(settings.seed)
    config = params.model.dit_config(blocks.vocab_size + 1, n_times=n_times).replace(causal=causal)
    objective = make_objective(DiT(config)).to(device)
    key = {
        "model": params.model.model_dump(mode="json"),
        name: settings.model_dump(mode="json"),
        "data_fingerprint": blocks.meta.get("source_fingerprint"),
        "vocab_size": blocks.vocab_size,
    }
    return _run(stage, objective, "backbone", params, settings, key, paths, tracker, progress, rank, world_size,
                checkpoints)


def train_ar(
    params: Params, paths: StagePaths | None = None, tracker: Tracker | None = None, progress: bool = True,
    rank: int = 0, world_size: int = 1, device: str | torch.device | None = None,
    checkpoints: CheckpointSync | None = None,
) -> StageResult:
    """Stage ``train_ar``: the AR baseline (causal, no time input) -> ``models/ar``, ``metrics/ar.json``."""
    from flm.objectives import ARObjective

    def make(backbone: Any) -> torch.nn.Module:
        return ARObjective(backbone, ce_chunk=params.ar.ce_chunk)

    return _train_baseline("train_ar", make, 0, True, params, paths, tracker, progress, rank, world_size, device,
                           checkpoints)


def train_mdlm(
    params: Params, paths: StagePaths | None = None, tracker: Tracker | None = None, progress: bool = True,
    rank: int = 0, world_size: int = 1, device: str | torch.device | None = None,
    checkpoints: CheckpointSync | None = None,
) -> StageResult:
    """Stage ``train_mdlm``: the MDLM baseline (bidirectional, timed) -> ``models/mdlm``, ``metrics/mdlm.json``."""
    from flm.objectives import MDLMObjective

    def make(backbone: Any) -> torch.nn.Module:
        return MDLMObjective(backbone, eps=params.mdlm.eps, ce_chunk=params.mdlm.ce_chunk)

    return _train_baseline("train_mdlm", make, 1, False, params, paths, tracker, progress, rank, world_size, device,
                           checkpoints)


STAGES = {"train_flm": train_flm, "distill_fmlm": distill_fmlm, "train_ar": train_ar, "train_mdlm": train_mdlm}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.train_stages", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    parser.add_argument("--profile", default=None, help="profile to apply (default: the file's 'profile')")
    parser.add_argument("--tokens", default="data/tokens")
    parser.add_argument("--tokenizer", default="data/tokenizer")
    parser.add_argument("--models", default="models", help="final checkpoints go to MODELS/<model>")
    parser.add_argument("--metrics", default="metrics", help="metrics go to METRICS/<model>.json")
    parser.add_argument("--state", default=".state", help="run checkpoints and the MLflow store")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one stage; return the process exit status (2 on bad input)."""
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = StagePaths(Path(args.tokens), Path(args.tokenizer), Path(args.models), Path(args.metrics), Path(args.state))
    try:
        params = load_params(args.params, profile=args.profile)
        tracker = NullTracker() if args.no_tracking else None
        result = STAGES[args.stage](params, paths, tracker=tracker, progress=not args.quiet, device=args.device)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.stage}: {json.dumps(result.metrics)} -> {result.checkpoint}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # SIGTERM ends the MLflow run as FAILED
    sys.exit(main())
