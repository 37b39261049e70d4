"""A small plain-PyTorch training helper: AdamW, linear warmup, gradient clipping, EMA.

Enough to train an objective for a fixed number of steps; the full loop with checkpoints,
validation, accumulation, Ray and tracking belongs to the pipeline (``flm/train`` grows there).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from flm.objectives.common import LossOutput
from flm.train.ema import EMA

__all__ = ["OptimSettings", "build_optimizer", "fit", "lr_at"]


@dataclass(frozen=True)
class OptimSettings:
    """AdamW and schedule settings (paper: β2 = 0.999 for FLM, 0.95 for FMLM).

    ``cosine_steps > 0`` decays the rate after warmup along a half cosine to 0 at that step.
    """

    lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    cosine_steps: int = 0


def lr_at(step: int, settings: OptimSettings) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then constant or a half cosine to 0."""
    if settings.warmup_steps > 0 and step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    if settings.cosine_steps > settings.warmup_steps:
        span = settings.cosine_steps - settings.warmup_steps
        progress = min(1.0, (step - settings.warmup_steps) / span)
        return settings.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return settings.lr


def build_optimizer(module: nn.Module, settings: OptimSettings) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``module``; the fused kernel when they all live on CUDA.

    Fused AdamW keeps its step count on the device (one kernel, no host read per step); on CPU the
    default (foreach) implementation is kept.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(
        params, lr=settings.lr, betas=(settings.beta1, settings.beta2), weight_decay=settings.weight_decay,
        fused=fused or None,
    )


def fit(
    objective: nn.Module,
    next_batch: Callable[[int], Tensor],
    steps: int,
    settings: OptimSettings,
    generator: torch.Generator | None = None,
    ema_of: nn.Module | None = None,
    progress: bool = True,
    desc: str = "train",
) -> tuple[EMA | None, list[dict[str, float]]]:
    """Train ``objective`` (a module returning :class:`LossOutput`) for ``steps`` steps.

    Args:
        next_batch: ``step -> (B, L)`` clean tokens.
        generator: the objective's RNG for times and noise.
        ema_of: the submodule whose weights are averaged (e.g. the backbone); None for no EMA.

    Returns:
        The EMA (or None) and a per-step history of ``loss``, ``lr`` and the objective's metrics.
    """
    objective.train()
    opt = build_optimizer(objective, settings)
    params = [p for g in opt.param_groups for p in g["params"]]
    ema = EMA(ema_of, settings.ema_decay) if ema_of is not None else None
    history: list[dict[str, float]] = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=2.0)
    for step in bar:
        lr = lr_at(step, settings)
        for group in opt.param_groups:
            group["lr"] = lr
        out: LossOutput = objective(next_batch(step), generator)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        if settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        opt.step()
        if ema is not None:
            ema.update(ema_of)
        record = {"loss": out.loss.item(), "lr": lr, **{k: v.item() for k, v in out.metrics.items()}}
        history.append(record)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{record['loss']:.3f}")
    return ema, history
