"""Categorical sampling by the Gumbel-max trick, in float64 (MATH.md §4, §6)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["GUMBEL_CHUNK_ELEMENTS", "gumbel_max"]

GUMBEL_CHUNK_ELEMENTS = 1 << 24
"""Float64 noise values held at once (128 MiB): rows are drawn this many numbers at a time."""


def gumbel_max(log_weights: Tensor, generator: torch.Generator | None = None,
               chunk_elements: int = GUMBEL_CHUNK_ELEMENTS) -> Tensor:
    """One draw per row of ``Cat(softmax(log_weights))``: ``argmax_v (log_weights_v + G_v)``.

    ``G_v = -log(-log U_v)``, ``U_v ~ U[0, 1)`` i.i.d., all in float64: float32 Gumbel noise has too
    short a tail (``-log(-log U) <= 16.6``), which lowers the effective temperature (MATH.md §4).
    ``log_weights`` may be unnormalized logits or log-probabilities; ``-inf`` entries are never drawn.

    Memory: the rows go ``chunk_elements // V`` at a time through one float64 buffer that is
    filled, transformed and summed in place, so the float64 noise never exceeds ``chunk_elements``
    numbers (a ``V``-wide float64 copy of every row would be ``8·N·V`` bytes, several times over).
    The uniforms are drawn row after row in the same order as one ``torch.rand(N, V)``: on the CPU
    the draws for a given generator are those of the unchunked draw, bit for bit.

    Args:
        log_weights: ``(..., V)``.
        generator: explicit RNG on ``log_weights``' device.
        chunk_elements: float64 numbers per chunk (at least one row).

    Returns:
        ``(...)`` int64 indices in ``[0, V)``.
    """
    width = log_weights.shape[-1]
    rows = log_weights.reshape(-1, width)
    out = torch.empty(rows.shape[0], dtype=torch.long, device=log_weights.device)
    step = max(1, chunk_elements // max(width, 1))
    buffer = torch.empty(min(step, rows.shape[0]), width, dtype=torch.float64, device=log_weights.device)
    for start in range(0, rows.shape[0], step):
        block = rows[start : start + step]
        noise = buffer[: block.shape[0]].uniform_(generator=generator)
        noise.log_().neg_().log_().neg_().add_(block)  # G = -log(-log U), then + log w
        out[start : start + step] = noise.argmax(-1)
    return out.view(log_weights.shape[:-1])
