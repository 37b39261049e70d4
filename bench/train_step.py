"""Benchmark: one FLM training step, dense reference path vs projected-noise path (MATH.md §3).

Each configuration runs in a fresh subprocess (so peak memory is its own), configurations are
interleaved over ``--rounds`` rounds, and the table reports medians. Ratios are relative to the
dense path measured in the same run.

    python bench/train_step.py                       # CPU: (V, L, d) = (8192, 128, 256)
    python bench/train_step.py --device cuda          # GPU: DiT-small, GPT-2 vocabulary, L = 1024, bf16

Writes ``bench/results/train_step_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

PRESETS = {
    "cpu": {"vocab": 8192, "length": 128, "d_model": 256, "n_layers": 4, "n_heads": 4, "batch": 8, "steps": 6},
    "cuda": {"vocab": 50258, "length": 1024, "d_model": 768, "n_layers": 12, "n_heads": 12, "batch": 32, "steps": 20},
}
PATHS = {  # name -> (dense input?, CE chunk in tokens; 0 = whole batch)
    "dense": (True, 0),
    "projected": (False, 0),
    "projected+chunked-CE": (False, 4096),
}


def model_flops_per_token(backbone, length: int) -> float:
    """Training FLOPs per token of the network (forward + backward = 3 × forward, 2 per multiply-add).

    ``6 N`` for the ``N`` weights applied to every token (attention and MLP matmuls, the output
    head), ``6 N_seq / L`` for those applied once per sequence (time embeddings, adaLN), and
    ``12 · layers · d · L`` for the attention scores and their weighted sum. The input embedding
    is not a matmul of the network: the DiT takes ``h = zE`` already built (a gather ``E[x]`` plus
    ``d``-wide noise on the projected path), so ``E`` is not counted. Recomputation (chunked CE's
    checkpointed head) is not model FLOPs either.
    """
    per_token = per_sequence = 0
    for name, p in backbone.named_parameters():
        if name == "embedding":
            continue
        if name.startswith("time_embed") or ".ada." in f".{name}":
            per_sequence += p.numel()
        else:
            per_token += p.numel()
    cfg = backbone.config
    return 6 * per_token + 6 * per_sequence / length + 12 * cfg.n_layers * cfg.d_model * length


def run_one(cfg: dict) -> dict:
    """Time ``cfg['steps']`` training steps of one path; runs inside the child process."""
    import torch

    from flm.model import DiT, DiTConfig, compile_networks
    from flm.objectives import FLMObjective, ProjectedSpace

    device = torch.device(cfg["device"])
    torch.manual_seed(0)
    dense, chunk = PATHS[cfg["path"]]
    model_cfg = DiTConfig(
        cfg["vocab"], cfg["d_model"], cfg["n_layers"], cfg["n_heads"], cond_dim=128, attn_impl=cfg.get("attn", "sdpa"),
        softcap=cfg.get("softcap", 0.0),
    )
    obj = FLMObjective(DiT(model_cfg), ce_chunk=chunk).to(device)
    opt = torch.optim.AdamW(obj.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
    step_fn = obj.loss_dense if dense else obj.loss
    if cfg.get("compile"):  # what training compiles (the backbone's features), not the whole loss
        compile_networks(obj)
    gen = torch.Generator(device).manual_seed(0)
    b, length = cfg["batch"], cfg["length"]
    x = torch.randint(0, cfg["vocab"], (b, length), device=device, generator=gen)
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step() -> None:
        tau = torch.rand(b, device=device, generator=gen)
        if dense:  # the reference: a V-wide Gaussian per position
            noise = torch.randn(b, length, cfg["vocab"], device=device, generator=gen)
        else:  # ξR with E = QR, drawn in d dimensions
            noise = ProjectedSpace(obj.backbone.embedding).noise((b, length), gen)
        with autocast:
            loss = step_fn(x, tau, noise).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # imports, model, optimizer
    step()
    step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(cfg["steps"]):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    out = {"step_s": statistics.median(times), "tokens_per_s": b * length / statistics.median(times)}
    if device.type == "cuda":
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        out["mfu"] = model_flops_per_token(obj.backbone, length) * out["tokens_per_s"] / cfg.get("peak_flops", 989e12)
    else:
        # peak resident memory added by training steps (ru_maxrss is in KiB on Linux)
        out["step_rss_gb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of every path")
    parser.add_argument("--paths", nargs="*", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--compile", action="store_true",
                        help="compile as training does (the backbone's features; the loss around it stays eager)")
    parser.add_argument("--attn", choices=["sdpa", "flash"], default="sdpa")
    parser.add_argument("--softcap", type=float, default=0.0, help="attention logit soft-cap (paper: 50)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    base = {**PRESETS[args.device], "device": args.device, "compile": args.compile, "attn": args.attn,
            "softcap": args.softcap}
    samples: dict[str, list[dict]] = {p: [] for p in args.paths}
    for _ in range(args.rounds):
        for path in args.paths:
            cfg = {**base, "path": path}
            proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{path} failed:\n{proc.stderr[-3000:]}")
            samples[path].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    rows = {p: {k: statistics.median(s[k] for s in v) for k in v[0]} for p, v in samples.items()}
    ref = rows.get("dense")
    mem_key = "peak_mem_gb" if args.device == "cuda" else "step_rss_gb"
    print(f"\nFLM training step, {args.device}: {json.dumps({k: v for k, v in base.items() if k != 'device'})}")
    print(f"| path | step (s) | tokens/s | {mem_key} | step vs dense | memory vs dense |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for path, r in rows.items():
        rel_t = f"{r['step_s'] / ref['step_s']:.2f}x" if ref else "-"
        rel_m = f"{r[mem_key] / ref[mem_key]:.2f}x" if ref else "-"
        print(f"| {path} | {r['step_s']:.3f} | {r['tokens_per_s']:,.0f} | {r[mem_key]:.2f} | {rel_t} | {rel_m} |")
    result = {
        "config": base,
        "rows": rows,
        "samples": samples,
        "machine": platform.platform(),
        "python": sys.version.split()[0],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
    }
    out = args.json or Path(__file__).parent / "results" / f"train_step_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
