"""Stratified model-time sampling (MATH.md §1: ``t ~ U[0, 1]``, stratified across the batch).

The whole global batch's times are drawn at once from an explicit generator, then shuffled with
the same generator; a worker or an accumulation micro-step takes its slice afterwards. Each
time therefore depends only on the generator's state and the global batch size, never on how the
batch is split, and every slice still covers ``[0, 1]`` evenly in expectation.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["stratified_times", "uniform_grid"]


def stratified_times(
    n: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``t_i = (π(i) + u_i) / n`` with ``u_i ~ U[0, 1)`` and a random permutation ``π``.

    Args:
        n: global batch size.
        generator: explicit RNG (device must match ``device``).

    Returns:
        ``(n,)`` times in ``[0, 1)``, exactly one in each stratum ``[i/n, (i+1)/n)``.
    """
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    perm = torch.randperm(n, generator=generator, device=device)
    return ((perm.to(torch.float64) + u) / n).to(dtype)


def uniform_grid(steps: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
    """The sampler's model-time grid ``τ_k = k / K``, ``k = 0..K`` → ``(K + 1,)`` (MATH.md §1, §2)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(0.0, 1.0, steps + 1, device=device, dtype=dtype)
