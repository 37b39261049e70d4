"""``python -m pipelines.run {train_flm,distill_fmlm,train_ar,train_mdlm,evaluate,promote} ...``: run one flow.

This module imports nothing heavy at the top: it makes the process hermetic (telemetry off,
``PREFECT_HOME`` and the other tool state under ``<root>/.state``) *before* Prefect and MLflow are
imported, since both read their settings, and Prefect creates its home directory, at import time.
It then runs the flow (through the Prefect engine: an ephemeral API server unless
``PREFECT_API_URL`` names one) and prints its result as one JSON line. Exit status 2 on bad
parameters or data.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.run", description=__doc__.splitlines()[0])
    parser.add_argument("flow", choices=["train_flm", "distill_fmlm", "train_ar", "train_mdlm", "evaluate", "promote"])
    parser.add_argument("--params", default="params.yaml", help="parameter file, relative to --root")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--root", default=".", help="project directory (data/, models/, metrics/, .state/)")
    parser.add_argument("--workers", type=int, default=None, help="override cluster.workers (0: in-process)")
    parser.add_argument("--max-failures", type=int, default=1, help="worker-group restarts Ray tolerates")
    parser.add_argument("--ray-address", default=None, help="a Ray cluster (default $RAY_ADDRESS, else embedded)")
    parser.add_argument("--no-register", action="store_true", help="do not log/register the MLflow model")
    parser.add_argument("--model", default="flm", help="promote: registered model name")
    parser.add_argument("--version", type=int, default=None, help="promote: candidate version (default newest)")
    parser.add_argument("--metric", default="gen_ppl", help="promote: gen_ppl (evaluation tags) or val_loss")
    parser.add_argument("--device", default=None, help="evaluate: cpu | cuda (default: cuda if available)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, go hermetic, run the flow; return the exit status."""
    from flm.environment import hermetic

    args = _parser().parse_args(argv)
    hermetic(Path(args.root) / ".state")

    from flm.config import ConfigError, load_params
    from flm.data.errors import DataError
    from pipelines.flows import FLOWS

    try:
        if args.flow == "promote":
            result = FLOWS["promote"](model=args.model, version=args.version, metric=args.metric, root=args.root,
                                      params_file=args.params, profile=args.profile)
        elif args.flow == "evaluate":
            params = load_params(Path(args.root) / args.params, profile=args.profile)
            result = FLOWS["evaluate"](params=params, root=args.root, device=args.device)
        else:
            params = load_params(Path(args.root) / args.params, profile=args.profile)
            result = FLOWS[args.flow](params=params, root=args.root, workers=args.workers,
                                      max_failures=args.max_failures, ray_address=args.ray_address,
                                      register_model=not args.no_register)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
