"""The known-language demo: train FLM, distill FMLM, and score both against the exact answer.

Source: a sparse first-order Markov chain (MATH.md §5). Samples are scored by their mean true
NLL per token under the source and by their mean per-sample token-histogram entropy, against
the source's own entropy per token and the data's histogram entropy. All step counts are fixed
(never wall-clock), so a loaded machine cannot change the result.

Run: ``python -m flm.toy.demo [--quick] [--json PATH] [--distill-method M [M ...]]``; several
distillation methods (MATH.md §2: semigroup, lagrangian, eulerian) are distilled from the same
teacher with the same steps, data, times and noise, and reported side by side.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from flm.flow import TimeSchedule, flm_sample, uniform_grid
from flm.model import DiT, DiTConfig
from flm.objectives import FLMObjective, FMLMDistillation
from flm.objectives.off_diagonal import METHODS
from flm.toy.markov import MarkovSource, histogram_entropy
from flm.train import OptimSettings, fit

__all__ = ["DemoSettings", "Row", "format_table", "run_demo"]


@dataclass(frozen=True)
class DemoSettings:
    """Everything the demo depends on; defaults are the issue's reference setting."""

    vocab_size: int = 32
    length: int = 32
    successors: int = 4
    source_seed: int = 0
    batch: int = 64
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    cond_dim: int = 128
    cosine: bool = True
    flm: OptimSettings = field(default_factory=lambda: OptimSettings(lr=2e-3, warmup_steps=200, ema_decay=0.999))
    flm_steps: int = 6000
    fmlm: OptimSettings = field(default_factory=lambda: OptimSettings(lr=3e-4, beta2=0.95, ema_decay=0.999))
    fmlm_steps: int = 3300
    n_samples: int = 512
    seed: int = 0
    exact_nfe: tuple[int, ...] = (4, 16, 128)
    flm_nfe: tuple[int, ...] = (1, 2, 4, 8, 16, 128)
    fmlm_nfe: tuple[int, ...] = (1, 2, 4, 8)
    renoise: float = 0.8
    distill_methods: tuple[str, ...] = ("semigroup",)


@dataclass(frozen=True)
class Row:
    """One line of the result table."""

    model: str
    nfe: int
    nll: float
    entropy: float
    seconds: float = 0.0


def _score(name: str, nfe: int, x: torch.Tensor, src: MarkovSource, seconds: float = 0.0) -> Row:
    nll = float((src.nll(x) / x.shape[1]).mean())
    ent = float(histogram_entropy(x, src.vocab_size).mean())
    return Row(name, nfe, nll, ent, seconds)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


@torch.no_grad()
def heldout_loss(objective: FLMObjective, x: torch.Tensor, seed: int, chunk: int = 512) -> float:
    """Mean FLM cross entropy (nats/token) on held-out ``x`` with fixed times and noise."""
    objective.eval()
    gen = torch.Generator().manual_seed(seed)
    total = sum(float(objective(part, gen).metrics["nll"]) * part.shape[0] for part in x.split(chunk))
    return total / x.shape[0]


def run_demo(settings: DemoSettings, progress: bool = True) -> dict:
    """Train, distill and evaluate; returns ``{"rows": [...], "floor": ..., ...}``."""
    s = settings
    torch.manual_seed(s.seed)
    src = MarkovSource.sparse(s.vocab_size, s.successors, seed=s.source_seed)
    schedule = TimeSchedule(s.vocab_size)
    data_gen = torch.Generator().manual_seed(s.seed + 1)
    n_train = s.batch * 2048
    train = src.sample(n_train, s.length, data_gen)
    heldout = src.sample(4096, s.length, torch.Generator().manual_seed(s.seed + 2))

    def batches(step: int) -> torch.Tensor:
        start = (step * s.batch) % n_train
        return train[start : start + s.batch]

    floor, floor_se = src.bayes_floor(s.length, n=8192, seed=s.seed + 3)
    rows = [_score("data", 0, heldout[: s.n_samples], src)]
    for nfe in s.exact_nfe:
        eps = torch.randn(s.n_samples, s.length, s.vocab_size, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(s.seed + 10))
        x, sec = _timed(lambda nfe=nfe, eps=eps: flm_sample(src.denoiser(schedule), eps, uniform_grid(nfe), schedule))
        rows.append(_score("exact", nfe, x, src, sec))

    def evaluate(name: str, sample, nfes: tuple[int, ...], seed: int) -> None:
        for nfe in nfes:
            x, sec = _timed(lambda nfe=nfe: sample(s.n_samples, s.length, nfe, torch.Generator().manual_seed(seed)))
            rows.append(_score(name, nfe, x, src, sec))

    flm_opt = replace(s.flm, cosine_steps=s.flm_steps) if s.cosine else s.flm
    fmlm_opt = replace(s.fmlm, cosine_steps=s.fmlm_steps) if s.cosine else s.fmlm
    config = DiTConfig(s.vocab_size, s.d_model, s.n_layers, s.n_heads, cond_dim=s.cond_dim)
    flm = FLMObjective(DiT(config))
    ema, flm_hist = fit(
        flm, batches, s.flm_steps, flm_opt, torch.Generator().manual_seed(s.seed + 4),
        ema_of=flm.backbone, progress=progress, desc="FLM",
    )
    teacher = FLMObjective(ema.module)
    loss = heldout_loss(teacher, heldout, s.seed + 5)
    evaluate("FLM", teacher.sample, s.flm_nfe, s.seed + 11)

    rng = torch.get_rng_state()  # every method starts from the same student initialization
    by_method = {}
    for method in s.distill_methods:
        torch.set_rng_state(rng)
        name = "FMLM" if method == "semigroup" else f"FMLM {method}"
        fmlm = FMLMDistillation.from_teacher(ema.module, method=method)
        (student_ema, fmlm_hist), seconds = _timed(lambda fmlm=fmlm, name=name: fit(
            fmlm, batches, s.fmlm_steps, fmlm_opt, torch.Generator().manual_seed(s.seed + 6),
            ema_of=fmlm.student, progress=progress, desc=name,
        ))
        fmlm.student.load_state_dict(student_ema.module.state_dict())
        fmlm.eval()
        evaluate(name, fmlm.sample, s.fmlm_nfe, s.seed + 12)
        if s.renoise > 0:
            renoised = partial(fmlm.sample, g=s.renoise)
            evaluate(f"{name} g={s.renoise}", renoised, tuple(n for n in s.fmlm_nfe if n > 1), s.seed + 12)
        last = fmlm_hist[-200:]
        by_method[method] = {"final_train_loss": sum(h["loss"] for h in last) / len(last), "train_seconds": seconds}
    return {
        "settings": asdict(s),
        "entropy_per_token": src.entropy_per_token(s.length),
        "entropy_rate": src.entropy_rate,
        "bayes_floor": floor,
        "bayes_floor_se": floor_se,
        "flm_heldout_loss": loss,
        "flm_final_train_loss": sum(h["nll"] for h in flm_hist[-200:]) / min(200, len(flm_hist)),
        "fmlm_final_train_loss": by_method[s.distill_methods[0]]["final_train_loss"],
        "fmlm_methods": by_method,
        "rows": [asdict(r) for r in rows],
    }


def format_table(result: dict) -> str:
    """Markdown table of the demo's result, NLL also relative to the source's entropy per token."""
    ref = result["entropy_per_token"]
    lines = [
        f"source entropy per token {ref:.4f} nats (entropy rate {result['entropy_rate']:.4f}); "
        f"FLM loss floor {result['bayes_floor']:.4f} ± {result['bayes_floor_se']:.4f}; "
        f"FLM held-out loss {result['flm_heldout_loss']:.4f} "
        f"({100 * (result['flm_heldout_loss'] / result['bayes_floor'] - 1):+.1f} % over the floor)",
        "",
        *(f"FMLM {m}: final train loss {r['final_train_loss']:.4f}, {r['train_seconds']:.0f} s of distillation"
          for m, r in result.get("fmlm_methods", {}).items()),
        "",
        "| model | NFE | NLL/token | vs source | entropy | sampling s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['nfe'] or '-'} | {r['nll']:.4f} | {100 * (r['nll'] / ref - 1):+.1f} % "
            f"| {r['entropy']:.3f} | {r['seconds']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x fewer training steps (a smoke run)")
    parser.add_argument("--json", type=Path, default=Path(".state/demo/result.json"), help="where to write the result")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--distill-method", nargs="+", choices=sorted(METHODS), default=["semigroup"],
        help="FMLM distillation method(s), each from the same teacher with the same steps (MATH.md §2)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = DemoSettings(distill_methods=tuple(args.distill_method))
    if args.quick:
        settings = replace(
            settings,
            flm_steps=600, fmlm_steps=330,
            flm=OptimSettings(lr=2e-3, warmup_steps=50, ema_decay=0.99),
            fmlm=OptimSettings(lr=3e-4, beta2=0.95, ema_decay=0.99),
        )
    start = time.perf_counter()
    result = run_demo(settings)
    result["wall_seconds"] = time.perf_counter() - start
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.json)
    print(format_table(result))
    print(f"\nwall time {result['wall_seconds']:.0f} s; result written to {args.json}")


if __name__ == "__main__":
    main()
