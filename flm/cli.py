"""``flm``: the project's command line, one subcommand per task (today ``flm generate``).

``flm generate SOURCE`` prints text sampled from a checkpoint directory or an MLflow model URI
(``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/ID/model``)::

    flm generate models:/fmlm@champion -n 4 --steps 1
    flm generate models/flm --tokenizer data/tokenizer --steps 64 --prefix "The government" --json

Nothing heavy is imported at the top: :func:`main` makes the process hermetic (telemetry off, tool
state under ``--state``, default ``<--root>/.state``) *before* MLflow can be imported, since it
reads its settings at import time. The MLflow store and the downloaded-model cache are those of
the project ``--root`` (default: the current directory); where that directory has no ``.state``
(not a project, or one never run) and no ``--state`` is given, the command leaves nothing behind: tool state lives in a
temporary directory, and a registry URI needs ``--root PROJECT`` or ``--tracking-uri`` (an absent
store is never created). Bad arguments (``--length`` beyond the model's trained length, a device
this machine lacks), a missing or foreign directory, an unreachable tracking server and an unknown
model or alias end with a one-line message naming the problem and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]



def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _seed(text: str) -> int:
    from flm.config import SEED_MAX

    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {SEED_MAX}], got {text}")
    return value


def _add_generate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "generate", help="sample text from a checkpoint directory or an MLflow model URI",
        description="Sample text from an FLM (Euler ODE) or FMLM (flow map) checkpoint or registered model.",
    )
    parser.add_argument("source", metavar="SOURCE",
                        help="checkpoint directory, or models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model")
    parser.add_argument("--steps", "-k", type=_positive, default=8,
                        help="network evaluations (FMLM: 1 is one forward pass; default 8)")
    parser.add_argument("-n", "--count", type=_positive, default=1, help="number of texts (default 1)")
    parser.add_argument("--seed", type=_seed, default=0, help="seed of the initial noise (default 0)")
    parser.add_argument("--length", type=_positive, default=None, help="tokens per text (default: the training length)")
    parser.add_argument("--prefix", default=None, help="text every output starts with (clamped while denoising)")
    parser.add_argument("--renoise", type=float, nargs="?", const=True, default=0.0, metavar="G",
                        help="FMLM: re-noise each intermediate jump with strength G in [0, 1] (bare --renoise: "
                             "the paper's 0.8); without it the flow map is deterministic")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer directory (default: the model's own for a URI; ids for a directory)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store of a URI source (default $MLFLOW_TRACKING_URI, else <state>/mlflow)")
    parser.add_argument("--root", default=".",
                        help="the project whose .state holds the MLflow store and the model cache (default: .)")
    parser.add_argument("--state", default=None,
                        help="tool state and the downloaded-model cache (default: <root>/.state if it exists, "
                             "else a temporary directory)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of text blocks")
    parser.add_argument("--compile", action="store_true",
                        help="compile the network first (pays off for many steps or repeated calls)")


def _parser() -> argparse.ArgumentParser:
    from flm.errors import OneLineParser

    parser = OneLineParser(prog="flm", description="Flow language models (FLM, FMLM): flm COMMAND --help.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_generate(commands)
    return parser


def _generate(args: argparse.Namespace, state: Path, cache: Path | None) -> int:
    import os

    from flm.device import resolve_device
    from flm.errors import UsageError
    from flm.registry.generator import TextGenerator, is_model_uri
    from flm.tracking import default_tracking_uri

    device = resolve_device(args.device)
    if is_model_uri(args.source):
        tracking_uri = args.tracking_uri or default_tracking_uri(state)
        store = Path(tracking_uri.removeprefix("sqlite:///"))
        if not (args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")) and not store.is_file():
            raise UsageError(f"{args.source}: no MLflow store at {store}; give --root PROJECT or --tracking-uri")
        generator = TextGenerator.load(args.source, args.tokenizer, device, tracking_uri=tracking_uri,
                                       cache_dir=cache, compile=args.compile)
    else:
        generator = TextGenerator.load(args.source, args.tokenizer, device, compile=args.compile)
    if args.length is not None and generator.trained_length is not None and args.length > generator.trained_length:
        raise UsageError(f"--length {args.length}: beyond the model's trained length {generator.trained_length} "
                         f"(positions past it were never trained)")
    texts = generator.generate(args.count, args.steps, args.length, args.seed, args.prefix, args.renoise)
    for index, text in enumerate(texts):
        if args.json:
            record = {"index": index, "seed": args.seed, "steps": args.steps, "kind": generator.kind, "text": text}
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(text if index == 0 else f"\n{text}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, go hermetic, run the subcommand; return the exit status (2: bad input)."""
    from flm.environment import hermetic
    from flm.errors import expected_errors, one_line

    parser = _parser()
    args = parser.parse_args(argv)
    if not Path(args.root).is_dir():
        print(f"flm {args.command}: error: --root {args.root}: no such directory", file=sys.stderr)
        return 2
    state_dir = Path(args.state) if args.state is not None else Path(args.root) / ".state"
    with contextlib.ExitStack() as stack:
        if args.state is not None or state_dir.is_dir():
            hermetic(state_dir)
            cache: Path | None = state_dir.resolve() / "model-cache"
        else:  # not a project: tool state in a temporary directory, downloads not cached
            hermetic(stack.enter_context(tempfile.TemporaryDirectory(prefix="flm-state-")))
            cache = None
        try:
            return _generate(args, state_dir, cache)
        except (FileNotFoundError, LookupError, ValueError, *expected_errors()) as err:  # DataError is a ValueError
            print(f"flm {args.command}: error: {one_line(err)}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
