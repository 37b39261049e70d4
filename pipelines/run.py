"""``python -m pipelines.run {train_flm,distill_fmlm,train_ar,train_mdlm,evaluate,promote} ...``: run one flow.

This module imports nothing heavy at the top: it makes the process hermetic (telemetry off,
``PREFECT_HOME`` and the other tool state under ``<root>/.state``) *before* Prefect and MLflow are
imported, since both read their settings, and Prefect creates its home directory, at import time.
It then runs the flow (through the Prefect engine: an ephemeral API server unless
``PREFECT_API_URL`` names one) and prints its result as one JSON line.

A user's mistake ends with exit status 2 and one line on stderr naming the option, setting or
path (:func:`flm.errors.expected_errors`); those that can be seen early are checked before any
tool state, server or run exists: the parameters, ``--root``, ``--device``, workers, CPUs and GPUs
beyond this machine (embedded Ray), a ``cluster.storage_path`` that cannot be written, an MLflow
server that does not answer, and promote's
``--model``, ``--version`` and ``--metric``. Every path is relative to ``--root``, never to the
current directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _count(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    from flm.errors import OneLineParser

    parser = OneLineParser(prog="python -m pipelines.run", description=__doc__.splitlines()[0])
    parser.add_argument("flow", choices=["train_flm", "distill_fmlm", "train_ar", "train_mdlm", "evaluate", "promote"])
    parser.add_argument("--params", default="params.yaml", help="parameter file, relative to --root")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--root", default=".", help="project directory (data/, models/, metrics/, .state/)")
    parser.add_argument("--workers", type=_count, default=None, help="override cluster.workers (0: in-process)")
    parser.add_argument("--max-failures", type=_count, default=1, help="worker-group restarts Ray tolerates")
    parser.add_argument("--ray-address", default=None, help="a Ray cluster (default $RAY_ADDRESS, else embedded)")
    parser.add_argument("--no-register", action="store_true", help="do not log/register the MLflow model")
    parser.add_argument("--model", default="flm", help="promote: registered model name")
    parser.add_argument("--version", type=_positive, default=None, help="promote: candidate version (default newest)")
    parser.add_argument("--metric", default="gen_ppl", help="promote: gen_ppl (evaluation tags) or val_loss")
    parser.add_argument("--all", action="store_true", dest="all_models",
                        help="promote: every model of eval.models, the version holding models/<name> (the DVC stage)")
    parser.add_argument("--device", default=None, help="evaluate: cpu | cuda | cuda:N (default: cuda if available)")
    return parser


def _preflight(args: argparse.Namespace, params: Any) -> None:
    """Refuse, before any tool state or server exists: a device or more workers than this machine
    has (an embedded Ray), an MLflow server that does not answer, a registry to promote in that does not exist."""
    from flm.device import resolve_device
    from flm.tracking import check_reachable, check_store, default_tracking_uri

    if args.flow == "evaluate":
        args.device = resolve_device(args.device)
    elif args.device is not None:
        resolve_device(args.device)
    if params is not None and args.flow not in ("evaluate", "promote"):
        from flm.distributed.runtime import check_local_resources

        cluster = params.cluster
        check_local_resources(cluster.workers if args.workers is None else args.workers, cluster.cpus_per_worker,
                              cluster.gpus_per_worker, args.ray_address)
        if cluster.storage_path is not None:  # a bucket that does not exist, an endpoint that does not answer
            from flm.distributed.storage import check_storage

            check_storage(cluster.storage_path, cluster.storage_endpoint)
    uri = default_tracking_uri(Path(args.root) / ".state")
    if args.flow == "promote":  # promote only reads: the store must exist
        check_store(uri)
    else:
        check_reachable(uri)


def _check_promotion(args: argparse.Namespace, state: Path) -> None:
    """The registry knows ``--model``, ``--version`` and ``--metric`` (nothing is written)."""
    from mlflow import MlflowClient

    from flm.registry.promote import check_request
    from flm.tracking import default_tracking_uri

    check_request(MlflowClient(default_tracking_uri(state)), args.model, args.version, args.metric)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, go hermetic, run the flow; return the exit status."""
    from flm.environment import hermetic

    args = _parser().parse_args(argv)
    if not Path(args.root).is_dir():
        print(f"error: --root {args.root}: no such project directory", file=sys.stderr)
        return 2

    from flm.config import ConfigError, load_params

    try:  # bad parameters fail here, before any tool state, server or run exists
        reads_params = args.flow != "promote" or args.all_models or args.metric == "gen_ppl"
        params = load_params(Path(args.root) / args.params, profile=args.profile) if reads_params else None
        if params is not None and args.workers is not None and (problem := params.batch_split_problem(args.workers)):
            raise ConfigError(f"--workers {args.workers}: {problem}")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from flm.errors import expected_errors, one_line

    try:  # the machine's devices and cores, the tracking server: also before anything starts
        _preflight(args, params)
        if args.flow not in ("evaluate", "promote"):  # the outputs, and distillation's teacher
            from pipelines.train_stages import preflight

            preflight(args.flow, args.root)
    except expected_errors() as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    state = hermetic(Path(args.root) / ".state")

    try:
        if args.flow == "promote" and not args.all_models:
            _check_promotion(args, state)  # an unknown model, version or metric: before Prefect is imported
        from pipelines.flows import FLOWS

        if args.flow == "promote" and args.all_models:
            result = FLOWS["promote"](root=args.root, params=params, all_models=True)
        elif args.flow == "promote":
            result = FLOWS["promote"](model=args.model, version=args.version, metric=args.metric, root=args.root,
                                      params=params)
        elif args.flow == "evaluate":
            result = FLOWS["evaluate"](params=params, root=args.root, device=args.device)
        else:
            result = FLOWS[args.flow](params=params, root=args.root, workers=args.workers,
                                      max_failures=args.max_failures, ray_address=args.ray_address,
                                      register_model=not args.no_register)
    except expected_errors() as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
