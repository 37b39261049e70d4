"""Stratified model-time sampling (MATH.md §1: ``t ~ U[0, 1]``, stratified across the batch).

The whole global batch's times are drawn at once from an explicit generator, then shuffled with
the same generator; a worker or an accumulation micro-step takes its slice afterwards
(:class:`BatchSlice`). Each time therefore depends only on the generator's state and the global
batch size, never on how the batch is split, and every slice still covers ``[0, 1]`` evenly in
expectation. The training loop seeds that generator from ``(seed, step)`` alone, the same on every
worker, so 1, 2 or 4 workers (or accumulation steps) train on exactly the same set of times.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["BatchSlice", "stratified_times", "uniform_grid"]


@dataclass(frozen=True)
class BatchSlice:
    """Rows ``[start, start + n)`` of a global batch of ``size`` rows whose times come from ``generator``.

    An objective draws the times of all ``size`` rows from ``generator`` (which every worker seeds
    identically) and keeps its own rows; its noise comes from its own generator.
    :meth:`local` is the unsliced case (one worker, no accumulation): the times come from the
    objective's noise generator, drawn before the noise, as a plain call does.
    """

    size: int
    start: int
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.start < self.size:
            raise ValueError(f"BatchSlice: start {self.start} outside a global batch of {self.size} rows")

    @classmethod
    def local(cls, n: int, generator: torch.Generator | None) -> BatchSlice:
        """The whole batch of ``n`` rows, its times drawn from ``generator``."""
        return cls(n, 0, generator)

    def rows(self, n: int) -> slice:
        """This slice's ``n`` rows of a ``(size, ...)`` tensor.

        Raises:
            ValueError: ``n`` rows from ``start`` run past the global batch.
        """
        if self.start + n > self.size:
            raise ValueError(f"BatchSlice: rows {self.start}..{self.start + n} exceed the global batch of {self.size}")
        return slice(self.start, self.start + n)


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
