"""Pieces shared by the objectives: the loss record, soft cross entropy, projected sampling parts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from flm.flow import noise_factor, sample_projected_noise

__all__ = [
    "LossOutput",
    "ProjectedSpace",
    "at_least_float32",
    "chunked_token_cross_entropy",
    "soft_cross_entropy",
    "token_cross_entropy",
]


@dataclass
class LossOutput:
    """What an objective returns: the scalar to minimize and detached scalars to log."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def at_least_float32(t: Tensor) -> Tensor:
    """``t`` in float32 if it is a lower-precision float (bf16/fp16), else unchanged (float64 stays)."""
    return t.float() if t.is_floating_point() and t.element_size() < 4 else t


def token_cross_entropy(logits: Tensor, x: Tensor) -> Tensor:
    """``-log p(x_l)`` per token, in at least float32: ``(B, L, V)``, ``(B, L)`` → ``(B, L)``."""
    return F.cross_entropy(at_least_float32(logits).flatten(0, 1), x.flatten(), reduction="none").view_as(x)


def _ce_block(features: Tensor, weight: Tensor, bias: Tensor, x: Tensor) -> Tensor:
    logits = F.linear(features, weight, bias)
    return F.cross_entropy(at_least_float32(logits), x, reduction="none")


def chunked_token_cross_entropy(
    features: Tensor, head: nn.Linear, x: Tensor, chunk: int, classes: int | None = None
) -> Tensor:
    """``-log softmax(features Wᵀ + b)[x]`` per token without all logits at once.

    The tokens are processed ``chunk`` at a time under activation checkpointing: each chunk's
    ``(chunk, V)`` logits exist only while its loss (forward) or its gradient (backward) is being
    computed, so peak memory is ``O(chunk · V)`` instead of ``O(B · L · V)``, for one extra
    head matmul in the backward pass.

    Args:
        features: ``(B, L, d)`` the head's input (``DiT.features``).
        head: the output projection ``d → V``.
        x: ``(B, L)`` target ids.
        chunk: tokens per chunk.
        classes: keep only the head's first ``classes`` outputs (the baselines drop their extra
            start / mask id, MATH.md §6); ``None`` keeps all.

    Returns:
        ``(B, L)`` per-token cross entropy, equal to :func:`token_cross_entropy` of the full logits.
    """
    flat, targets = features.flatten(0, 1), x.flatten()
    weight, bias = head.weight[:classes], head.bias[:classes]
    parts = [
        checkpoint(_ce_block, f, weight, bias, t, use_reentrant=False)
        for f, t in zip(flat.split(chunk), targets.split(chunk), strict=True)
    ]
    return torch.cat(parts).view_as(x)


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """``-Σ_v target_v log softmax(logits)_v`` per token: ``(B, L, V)`` x2 → ``(B, L)``."""
    logp = F.log_softmax(at_least_float32(logits), dim=-1)
    return -(target.to(logp.dtype) * logp).sum(-1)


class ProjectedSpace:
    """The state space ``h = zE`` of one embedding ``E`` ``(V, d)`` (MATH.md §3).

    Gives samplers their three callables without any ``V``-wide noise or state:
    fresh noise ``ξF``, and the lift ``p ↦ pE`` of probabilities into the space.
    """

    def __init__(self, embedding: Tensor) -> None:
        self.embedding = embedding
        self.factor = noise_factor(embedding)

    def noise(self, shape: tuple[int, int], generator: torch.Generator | None = None) -> Tensor:
        """``(B, L, d)`` projected Gaussian noise ``ξF``."""
        return sample_projected_noise(self.factor, shape, generator)

    def noise_fn(self, shape: tuple[int, int], generator: torch.Generator | None) -> Callable[[], Tensor]:
        """A callable returning fresh projected noise (for re-noising samplers)."""
        return lambda: self.noise(shape, generator)

    def lift(self, p: Tensor) -> Tensor:
        """``pE``: ``(B, L, V)`` probabilities → ``(B, L, d)``."""
        return p.to(self.embedding.dtype) @ self.embedding
