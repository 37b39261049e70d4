"""Categorical sampling by the Gumbel-max trick, in float64 (MATH.md §4, §6)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gumbel_max"]


def gumbel_max(log_weights: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One draw per row of ``Cat(softmax(log_weights))``: ``argmax_v (log_weights_v + G_v)``.

    ``G_v = -log(-log U_v)``, ``U_v ~ U[0, 1)`` i.i.d., all in float64: float32 Gumbel noise has too
    short a tail (``-log(-log U) <= 16.6``), which lowers the effective temperature (MATH.md §4).
    ``log_weights`` may be unnormalized logits or log-probabilities; ``-inf`` entries are never drawn.

    Args:
        log_weights: ``(..., V)``.
        generator: explicit RNG on ``log_weights``' device.

    Returns:
        ``(...)`` int64 indices in ``[0, V)``.
    """
    u = torch.rand(log_weights.shape, generator=generator, device=log_weights.device, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(u))
    return (log_weights.to(torch.float64) + gumbel).argmax(-1)
