"""Learnable loss weighting ``w(τ)`` (MATH.md §1): per-token loss ``exp(-w) ℓ + w``."""

from __future__ import annotations

from torch import Tensor, nn

from flm.model.layers import TimeEmbedding

__all__ = ["LossWeight"]


class LossWeight(nn.Module):
    """A small MLP on a time embedding, ``(B,)`` times → ``(B,)`` log-weights ``w``.

    The output layer starts at zero, so the weighted loss starts equal to the plain loss.
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.embed = TimeEmbedding(width, freq_dim=64)
        self.out = nn.Linear(width, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, tau: Tensor) -> Tensor:
        return self.out(self.embed(tau).relu()).squeeze(-1)

    def weigh(self, per_token: Tensor, tau: Tensor) -> Tensor:
        """``exp(-w(τ)) ℓ + w(τ)`` for per-token losses ``ℓ`` ``(B, L)`` → ``(B, L)``."""
        w = self.forward(tau)[:, None]
        return (-w).exp() * per_token + w
