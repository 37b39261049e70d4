"""DVC data stages: ``python -m pipelines.data_stages {corpus,tokenizer,pack}``.

Each command reads ``params.yaml`` (``--params``, ``--profile``) through :func:`flm.config.load_params`,
calls :mod:`flm.data` and writes its outputs atomically, then its DVC metrics file. Errors in
the input end the command with status 2 and one message naming the parameter or file at fault.

Defaults match ``dvc.yaml``: ``data/corpus``, ``data/tokenizer``, ``data/tokens`` and
``data/metrics/{corpus,tokens}.json``. ``HF_HOME`` defaults to ``.state/hf`` (the project's
state directory) so Hugging Face caches stay inside the project.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from flm.config import ConfigError, Params, load_params
from flm.data.atomic import check_output_dir, write_json_atomic
from flm.data.errors import DataError, OutputError


def corpus(params: Params, args: argparse.Namespace) -> None:
    """Stage ``corpus``: read ``data.source`` -> ``data/corpus`` (+ metrics)."""
    from flm.data.corpus import build_corpus

    meta = build_corpus(params.data.source, args.out, progress=not args.quiet)
    splits = meta["splits"]
    metrics = {f"{split}_{key}": value for split in splits for key, value in splits[split].items()}
    write_json_atomic(args.metrics, {"corpus": metrics | {"blank_docs_skipped": meta["blank_docs_skipped"]}})
    print(f"corpus: {splits['train']['docs']:,} train / {splits['val']['docs']:,} val documents -> {args.out}")


def tokenizer(params: Params, args: argparse.Namespace) -> None:
    """Stage ``tokenizer``: ``data.tokenizer`` (trained on ``data/corpus`` if bpe) -> ``data/tokenizer``."""
    from flm.data.tokenizer import build_tokenizer

    tok = build_tokenizer(params.data.tokenizer, corpus_dir=args.corpus, progress=not args.quiet)
    tok.save(args.out)
    print(f"tokenizer: {tok.info.kind} {tok.info.name}, V = {tok.vocab_size:,} -> {args.out}")


def pack(params: Params, args: argparse.Namespace) -> None:
    """Stage ``pack``: ``data/corpus`` + ``data/tokenizer`` -> ``data/tokens`` (+ metrics)."""
    from flm.data.packing import pack as pack_tokens

    start = time.perf_counter()
    meta = pack_tokens(args.corpus, args.tokenizer, args.out, params.data.packing, progress=not args.quiet)
    seconds = time.perf_counter() - start
    splits = meta["splits"]
    metrics = {"V": meta["V"], "L": meta["L"]}
    for split, info in splits.items():
        metrics |= {f"{split}_{key}": info[key] for key in ("docs", "tokens", "pad_tokens", "blocks")}
    write_json_atomic(args.metrics, {"tokens": metrics})
    total = sum(info["tokens"] for info in splits.values())
    print(
        f"pack: {splits['train']['blocks']:,} train / {splits['val']['blocks']:,} val blocks "
        f"of L = {meta['L']}, "
        f"{total:,} tokens in {seconds:.1f} s ({total / seconds:,.0f} tokens/s) -> {args.out}"
    )


def check_outputs(args: argparse.Namespace) -> None:
    """Before any work: ``--out`` must be missing or a previous output of the stage's kind, ``--metrics`` no folder.

    Raises:
        OutputError: either path holds something else (:func:`flm.data.atomic.check_output_dir`).
    """
    from flm.data.corpus import CORPUS_FORMAT
    from flm.data.packing import TOKENS_FORMAT
    from flm.data.tokenizer import TOKENIZER_FORMAT

    formats = {"corpus": CORPUS_FORMAT, "tokenizer": TOKENIZER_FORMAT, "pack": TOKENS_FORMAT}
    check_output_dir(args.out, "meta.json", formats[args.stage])
    metrics = getattr(args, "metrics", None)
    if metrics is not None and Path(metrics).is_dir():
        raise OutputError(f"{metrics}: is a directory; refusing to replace it with a JSON file")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.data_stages", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    parser.add_argument("--profile", default=None, help="profile to apply (default: the file's 'profile')")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    stages = parser.add_subparsers(dest="stage", required=True)
    step = stages.add_parser("corpus", help=corpus.__doc__)
    step.add_argument("--out", default="data/corpus")
    step.add_argument("--metrics", default="data/metrics/corpus.json")
    step = stages.add_parser("tokenizer", help=tokenizer.__doc__)
    step.add_argument("--corpus", default="data/corpus")
    step.add_argument("--out", default="data/tokenizer")
    step = stages.add_parser("pack", help=pack.__doc__)
    step.add_argument("--corpus", default="data/corpus")
    step.add_argument("--tokenizer", default="data/tokenizer")
    step.add_argument("--out", default="data/tokens")
    step.add_argument("--metrics", default="data/metrics/tokens.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one stage; return the process exit status (2 on bad input)."""
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HOME", str(Path(".state/hf").resolve()))
    try:
        params = load_params(args.params, profile=args.profile)
        check_outputs(args)
        {"corpus": corpus, "tokenizer": tokenizer, "pack": pack}[args.stage](params, args)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
