"""Pieces shared by the objectives: the loss record, soft cross entropy, projected sampling parts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from flm.flow import noise_factor, sample_projected_noise
from flm.flow.interpolant import full_precision, working_dtype

__all__ = [
    "LossOutput",
    "ProjectedSpace",
    "at_least_float32",
    "chunked_soft_cross_entropy",
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


TargetPart = tuple[Tensor, nn.Linear, Tensor]
"""One term ``w · softmax(head(f))`` of a soft target: features ``f`` ``(B, L, d)``, a head, weights ``w`` ``(B,)``."""


def _soft_ce_block(features: Tensor, weight: Tensor, bias: Tensor, *targets: Tensor) -> Tensor:
    """``-Σ_v q_v log softmax(features Wᵀ + b)_v`` per row with ``q = Σ_i w_i softmax(f_i W_iᵀ + b_i)``.

    ``targets`` holds ``(f_i, W_i, b_i, w_i)`` flattened, all ``(N, ·)`` rows; the target is built
    without gradient (it is recomputed, not stored, when the block is checkpointed).
    """
    with torch.no_grad():
        q = sum(
            w[:, None] * at_least_float32(F.linear(f, wt, b)).softmax(-1)
            for f, wt, b, w in zip(*(iter(targets),) * 4, strict=True)
        )
    return soft_cross_entropy(F.linear(features, weight, bias), q)


def chunked_soft_cross_entropy(features: Tensor, head: nn.Linear, target: list[TargetPart], chunk: int) -> Tensor:
    """Soft cross entropy against ``q = Σ_i w_i softmax(head_i(f_i))`` without ``(B, L, V)`` tensors.

    Tokens go ``chunk`` at a time through a checkpointed block that builds that chunk's target
    probabilities and the student's logits from ``d``-wide features; the backward pass recomputes
    them. Peak memory is ``O(chunk · V)``; cost: the heads run again in the backward pass.
    Equal to ``soft_cross_entropy(head(features), q)`` (FMLM distillation, MATH.md §2).

    Args:
        features: ``(B, L, d)`` the trained head's input.
        head: the trained output projection ``d → V``.
        target: the terms of ``q`` (targets carry no gradient; a trained head is detached here).
        chunk: tokens per chunk.

    Returns:
        ``(B, L)`` per-token cross entropy.
    """
    shape = features.shape[:-1]
    flat = features.flatten(0, 1)
    # target weights (λ, 1 - λ) stay at least float32 when the features are bf16 (autocast)
    terms = [(f.flatten(0, 1), h.weight.detach(), h.bias.detach(),
              w[:, None].expand(shape).flatten().to(torch.promote_types(f.dtype, torch.float32)))
             for f, h, w in target]
    parts = []
    for start in range(0, flat.shape[0], chunk):
        rows = slice(start, start + chunk)
        args = [arg for f, wt, b, w in terms for arg in (f[rows], wt, b, w[rows])]
        parts.append(checkpoint(_soft_ce_block, flat[rows], head.weight, head.bias, *args, use_reentrant=False))
    return torch.cat(parts).view(shape)


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

    @cached_property
    def factor(self) -> Tensor:
        """The noise factor ``F`` of ``E`` (a Cholesky of ``EᵀE`` when ``V > d``), computed on first use:
        ``lift`` needs none."""
        return noise_factor(self.embedding)

    def noise(self, shape: tuple[int, int], generator: torch.Generator | None = None) -> Tensor:
        """``(B, L, d)`` projected Gaussian noise ``ξF``."""
        return sample_projected_noise(self.factor, shape, generator)

    def noise_fn(self, shape: tuple[int, int], generator: torch.Generator | None) -> Callable[[], Tensor]:
        """A callable returning fresh projected noise (for re-noising samplers)."""
        return lambda: self.noise(shape, generator)

    def lift(self, p: Tensor) -> Tensor:
        """``pE``: ``(B, L, V)`` probabilities → ``(B, L, d)``, in ``E``'s dtype (float32 at least), autocast off.

        It feeds the sampler's state and the flow map's midpoint, which stay float32 under bf16
        autocast (:func:`flm.flow.interpolant.full_precision`).
        """
        dtype = working_dtype(self.embedding.dtype)
        with full_precision(self.embedding.device):
            return p.to(dtype) @ self.embedding.to(dtype)
