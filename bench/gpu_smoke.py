"""The first minute on a GPU: every CUDA code path once, small, so a crash shows before any benchmark.

Runs, on one device, through the project's own stage functions (no Ray, MLflow or Prefect):

1. data: 200 BBC articles -> the ``char`` tokenizer -> blocks of ``L = 128``;
2. training: 2 steps of each stage (FLM with and without chunked CE, FMLM by each distillation
   method, AR, MDLM) in bf16 autocast with ``torch.compile``, flash-attn when installed, logit
   soft-cap 50 and dropout 0.1 as the paper profiles set them;
3. generation: each model kind once (FMLM also re-noised, FLM also with a prefix);
4. evaluation: 4 samples per row through the evaluate stage, judged by the AR model just trained,
   under both Gen PPL protocols.

Each check is timed and caught: the table lists every failure with its error, the JSON keeps it,
and the exit status is 1 if anything failed. Usage (from the repository root)::

    python bench/gpu_smoke.py --device cuda            # bench/gpu.sh runs this first
    python bench/gpu_smoke.py --device cpu --no-compile  # the same script on a laptop, ~1 min
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flm.config import CharTokenizer, EvalParams, PackagedSource, PackingParams, load_params  # noqa: E402
from flm.tracking import NullTracker  # noqa: E402

METHODS = ("semigroup", "lagrangian", "eulerian")


def build_data(root: Path) -> None:
    """``root/data/{corpus,tokenizer,tokens}``: 200 BBC articles, characters, ``L = 128``."""
    from flm.data.corpus import build_corpus
    from flm.data.packing import pack
    from flm.data.tokenizer import build_tokenizer

    data = root / "data"
    build_corpus(PackagedSource(corpora=("bbc_news",), max_docs=200, val_fraction=0.1), data / "corpus",
                 progress=False)
    build_tokenizer(CharTokenizer(), data / "corpus", progress=False).save(data / "tokenizer")
    pack(data / "corpus", data / "tokenizer", data / "tokens", PackingParams(seq_len=128), progress=False)


def smoke_params(compile_: bool, flash: bool) -> Any:
    """The laptop tree, shrunk to two steps a stage, with the paper profiles' GPU switches."""
    base = load_params(ROOT / "params.yaml", profile="laptop").model_dump(mode="json")
    loop = {"steps": 2, "batch_size": 8, "warmup_steps": 0, "val_every": 0, "val_batches": 1, "ckpt_every": 0,
            "log_every": 1, "sample_n": 2, "compile": compile_, "bf16": True}
    for section in ("train", "distill", "ar", "mdlm"):
        base[section].update(loop)
    base["model"].update({"d_model": 256, "n_layers": 2, "n_heads": 4, "dropout": 0.1, "softcap": 50.0,
                          "time_scale": 1.0, "attn_impl": "flash" if flash else "sdpa"})
    from flm.config import params_from_dict

    return params_from_dict(base, profile="laptop")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-compile", action="store_true", help="eager networks (a quick CPU run)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "gpu_smoke.json")
    args = parser.parse_args(argv)

    from flm.eval.judge import ar_judge
    from flm.eval.stage import evaluate_models
    from flm.registry.generator import TextGenerator
    from pipelines.train_stages import STAGES, StagePaths

    device = torch.device(args.device)
    try:
        import flash_attn  # noqa: F401

        flash = device.type == "cuda"
    except ImportError:
        flash = False
    params = smoke_params(not args.no_compile, flash)
    results: list[dict[str, Any]] = []

    def check(name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            results.append({"check": name, "ok": True, "seconds": round(time.perf_counter() - start, 2)})
            return out
        except Exception as err:  # a smoke test reports every failure and goes on
            results.append({"check": name, "ok": False, "seconds": round(time.perf_counter() - start, 2),
                            "error": f"{type(err).__name__}: {err}".splitlines()[0][:300],
                            "where": traceback.format_exc().splitlines()[-3].strip()[:300]})
            return None

    work = Path(tempfile.mkdtemp(prefix="flm-gpu-smoke-"))
    started = time.perf_counter()
    try:
        check("data: char tokenizer, L = 128", lambda: build_data(work))
        paths = StagePaths(tokens=work / "data" / "tokens", tokenizer=work / "data" / "tokenizer",
                           models=work / "models", metrics=work / "metrics", state=work / "state")

        def stage(name: str, p: Any, stage_paths: StagePaths = paths) -> Any:
            return STAGES[name](p, paths=stage_paths, tracker=NullTracker(), progress=False, device=device)

        check("train FLM", lambda: stage("train_flm", params))
        chunked = params.model_copy(update={"train": params.train.model_copy(update={"ce_chunk": 256})})
        chunk_paths = StagePaths(**{**paths.__dict__, "models": work / "models-chunked", "state": work / "state-c"})
        check("train FLM, chunked CE", lambda: stage("train_flm", chunked, chunk_paths))
        for method in METHODS:
            models = paths.models if method == "semigroup" else work / f"models-{method}"
            if method != "semigroup":
                models.mkdir(parents=True, exist_ok=True)
                if (paths.models / "flm").exists():
                    shutil.copytree(paths.models / "flm", models / "flm", dirs_exist_ok=True)
            p = params.model_copy(update={"distill": params.distill.model_copy(update={"method": method})})
            method_paths = StagePaths(**{**paths.__dict__, "models": models, "state": work / f"state-{method}"})
            check(f"distill FMLM, {method}", lambda p=p, mp=method_paths: stage("distill_fmlm", p, mp))
        check("train AR (chunked CE)", lambda: stage(
            "train_ar", params.model_copy(update={"ar": params.ar.model_copy(update={"ce_chunk": 256})})))
        check("train MDLM", lambda: stage("train_mdlm", params))

        def generate(kind: str, **kwargs: Any) -> list[str]:
            generator = TextGenerator.load(paths.models / kind, tokenizer=paths.tokenizer, device=device)
            texts = generator.generate(n=2, length=64, **kwargs)
            if len(texts) != 2:
                raise RuntimeError(f"{kind}: {len(texts)} texts")
            return texts

        check("generate FLM, 8 steps", lambda: generate("flm", steps=8))
        check("generate FLM, prefix", lambda: generate("flm", steps=4, prefix="The government"))
        check("generate FMLM, 1 step", lambda: generate("fmlm", steps=1))
        check("generate FMLM, 4 steps re-noised", lambda: generate("fmlm", steps=4, renoise=True))
        check("generate MDLM, 8 steps", lambda: generate("mdlm", steps=8))
        check("generate AR (KV cache)", lambda: generate("ar", steps=1))
        check("generate FLM, compiled sampler", lambda: TextGenerator.load(
            paths.models / "flm", device=device, compile=not args.no_compile).generate(n=2, steps=4, length=64))

        judge = check("AR judge", lambda: ar_judge(paths.models / "ar", paths.tokenizer, device=str(device)))
        for protocol in ("document", "reference"):
            evaluation = EvalParams(n_samples=4, batch_size=4, n_boot=10, max_nfe=4, fmlm_nfe=(1, 2), promote_nfe=2,
                                    n_show=1, protocol=protocol)
            dirs = {name: paths.models / name for name in evaluation.models}
            check(f"evaluate, 4 samples, {protocol} protocol", lambda e=evaluation, d=dirs, p=protocol: evaluate_models(
                e, d, paths.tokens, paths.tokenizer, work / f"eval-{p}", judge, device=str(device)))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    total = time.perf_counter() - started
    failed = [r for r in results if not r["ok"]]
    width = max(len(r["check"]) for r in results)
    print(f"{'check':<{width}}  {'':4}  seconds")
    for r in results:
        print(f"{r['check']:<{width}}  {'ok' if r['ok'] else 'FAIL':4}  {r['seconds']:7.2f}"
              + (f"  {r['error']}  [{r['where']}]" if not r["ok"] else ""))
    print(f"{len(results) - len(failed)}/{len(results)} passed in {total:.0f} s on {device}"
          f" (flash-attn {'on' if flash else 'off'}, compile {'off' if args.no_compile else 'on'})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    args.json.write_text(json.dumps({"device": str(device), "machine": machine, "torch": torch.__version__,
                                     "flash_attn": flash, "compile": not args.no_compile, "seconds": round(total, 1),
                                     "checks": results}, indent=2) + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
