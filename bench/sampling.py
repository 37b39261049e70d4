"""Benchmark: sampling latency and throughput of FMLM (1-8 steps), FLM (8-1024), MDLM (8, 1024) and AR.

FLM and FMLM run on the projected path (no ``V``-wide noise or state; MATH.md §3); MDLM with its
ancestral sampler (float64 Gumbel-max); AR one token per network call through its KV cache. All
share one backbone size; weights are random, which does not change the cost. Reported: wall time
per batch, per sequence, tokens/s, and each row's throughput relative to FLM at its largest step
count and to AR.

    python bench/sampling.py                 # CPU, L = 128
    python bench/sampling.py --compile       # also FMLM/FLM/MDLM rows (<= 64 steps) with the network compiled
    python bench/sampling.py --device cuda --compile --cuda-graphs   # GPU, L = 1024, bf16 autocast

Writes ``bench/results/sampling_<device>.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from flm.model import DiT, DiTConfig
from flm.objectives import ARObjective, FLMObjective, FMLMDistillation, MDLMObjective

PRESETS = {
    "cpu": {
        "vocab": 8192,
        "length": 128,
        "d_model": 256,
        "n_layers": 4,
        "n_heads": 4,
        "batch": 16,
        "flm_steps": [8, 64, 1024],
        "fmlm_steps": [1, 2, 4, 8],
        "mdlm_steps": [8, 1024],
        "ar_batches": [1, 4, 16, 64],
    },
    "cuda": {
        "vocab": 50258,
        "length": 1024,
        "d_model": 768,
        "n_layers": 12,
        "n_heads": 12,
        "batch": 32,
        "flm_steps": [8, 64, 1024],
        "fmlm_steps": [1, 2, 4, 8],
        "mdlm_steps": [8, 1024],
        "ar_batches": [1, 8, 32],
    },
}


def timed(fn, device: torch.device) -> float:
    """Seconds for one call of ``fn`` (synchronized on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def seconds_per_batch(sample, batch: int, length: int, steps: int, device: torch.device, autocast) -> float:
    """Median wall time of ``sample(batch, length, steps, generator)`` after a one-call warm-up.

    Rows that take under 3 s are repeated (up to 5 runs) and the median is taken.
    """
    gen = torch.Generator(device).manual_seed(0)
    with autocast:
        sample(batch, length, 1, gen)  # warm-up (one network call; AR: a whole sequence)
        times = [timed(lambda: sample(batch, length, steps, gen), device)]
        while sum(times) < 3.0 and len(times) < 5:
            times.append(timed(lambda: sample(batch, length, steps, gen), device))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--sweep-only", action="store_true", help="only the FMLM-1 vs AR batch sweep")
    parser.add_argument("--compile", action="store_true",
                        help="measure FMLM/FLM/MDLM rows of up to 64 steps also with DiT.compile_for_sampling")
    parser.add_argument("--cuda-graphs", action="store_true", help="with --compile on CUDA: capture CUDA graphs")
    args = parser.parse_args()
    cfg = PRESETS[args.device]
    device = torch.device(args.device)
    torch.manual_seed(0)
    model_cfg = DiTConfig(cfg["vocab"], cfg["d_model"], cfg["n_layers"], cfg["n_heads"], cond_dim=128)
    teacher = DiT(model_cfg).to(device).eval()
    flm = FLMObjective(teacher).to(device)
    fmlm = FMLMDistillation.from_teacher(teacher).to(device).eval()
    plus_one = model_cfg.replace(vocab_size=cfg["vocab"] + 1)  # the baselines' extra id (mask / start)
    mdlm = MDLMObjective(DiT(plus_one)).to(device).eval()
    ar = ARObjective(DiT(plus_one.replace(n_times=0, causal=True))).to(device).eval()
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    b, length = cfg["batch"], cfg["length"]
    rows = []
    compiled = {}  # the same models with their network compiled for fixed-step sampling (AR stays eager)
    if args.compile:
        compiled = {
            "FMLM": copy.deepcopy(fmlm), "FLM": copy.deepcopy(flm), "MDLM": copy.deepcopy(mdlm),
        }
        for name, objective in compiled.items():
            net = objective.student if name == "FMLM" else objective.backbone
            net.compile_for_sampling(cuda_graphs=args.cuda_graphs)
    runs = []
    for name, objective, all_steps in (("FMLM", fmlm, cfg["fmlm_steps"]), ("FLM", flm, cfg["flm_steps"]),
                                       ("MDLM", mdlm, cfg["mdlm_steps"])):
        for s in all_steps:
            runs.append((name, s, objective.sample))
            if name in compiled and s <= 64:  # the per-call gain is the same at 1024 steps
                runs.append((f"{name} compiled", s, compiled[name].sample))
    runs.append(("AR (KV cache)", length, ar.sample))
    for name, steps, sample in [] if args.sweep_only else runs:
        sec = seconds_per_batch(sample, b, length, steps, device, autocast)
        rows.append(
            {"model": name, "nfe": steps, "batch_s": sec, "per_sequence_s": sec / b, "tokens_per_s": b * length / sec}
        )
        print(f"{name} {steps:>5} steps: {sec:8.3f} s per batch of {b}", flush=True)
    sweep = []  # FMLM-1 vs AR with its KV cache at the same length, batch by batch
    for batch in cfg["ar_batches"]:
        fmlm_s = seconds_per_batch(fmlm.sample, batch, length, 1, device, autocast)
        ar_s = seconds_per_batch(ar.sample, batch, length, length, device, autocast)
        row = {"batch": batch, "fmlm1_per_sequence_s": fmlm_s / batch, "ar_per_sequence_s": ar_s / batch,
               "fmlm1_vs_ar": ar_s / fmlm_s}
        if compiled:
            fast_s = seconds_per_batch(compiled["FMLM"].sample, batch, length, 1, device, autocast)
            row |= {"fmlm1_compiled_per_sequence_s": fast_s / batch, "fmlm1_compiled_vs_ar": ar_s / fast_s}
        sweep.append(row)
        print(f"batch {batch:>3}: FMLM-1 {fmlm_s:.3f} s, AR {ar_s:.3f} s", flush=True)
    if rows:
        ref = max((r for r in rows if r["model"] == "FLM"), key=lambda r: r["nfe"])
        ar_row = next(r for r in rows if r["model"].startswith("AR"))
        print(f"\nSampling, {args.device}: V={cfg['vocab']} L={length} d={cfg['d_model']} "
              f"layers={cfg['n_layers']} batch={b}")
        print(f"| model | NFE | s / sequence | tokens/s | vs FLM-{ref['nfe']} | vs AR |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            r["speedup_vs_flm_max"] = r["tokens_per_s"] / ref["tokens_per_s"]
            r["speedup_vs_ar"] = r["tokens_per_s"] / ar_row["tokens_per_s"]
            print(
                f"| {r['model']} | {r['nfe']} | {r['per_sequence_s']:.4f} | {r['tokens_per_s']:,.0f} "
                f"| {r['speedup_vs_flm_max']:.1f}x | {r['speedup_vs_ar']:.2f}x |"
            )
    extra = " | FMLM-1 compiled s / sequence | compiled vs AR" if compiled else ""
    print(f"\n| batch | FMLM-1 s / sequence | AR (KV cache) s / sequence | FMLM-1 vs AR{extra} |")
    print("| ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if compiled else ""))
    for r in sweep:
        cells = (f" | {r['fmlm1_compiled_per_sequence_s']:.4f} | {r['fmlm1_compiled_vs_ar']:.1f}x"
                 if compiled else "")
        print(f"| {r['batch']} | {r['fmlm1_per_sequence_s']:.4f} | {r['ar_per_sequence_s']:.4f} "
              f"| {r['fmlm1_vs_ar']:.1f}x{cells} |")
    result = {
        "config": cfg,
        "compile": args.compile,
        "cuda_graphs": args.cuda_graphs,
        "rows": rows,
        "fmlm1_vs_ar_by_batch": sweep,
        "machine": platform.platform(),
        "torch": torch.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
    }
    suffix = ("_sweep" if args.sweep_only else "") + ("_compile" if args.compile else "")
    out = args.json or Path(__file__).parent / "results" / f"sampling_{args.device}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    sys.exit(main())
