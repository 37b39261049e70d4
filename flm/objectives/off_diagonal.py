"""The off-diagonal rows of FMLM distillation: which teacher, which loss (MATH.md §2).

``distill.method`` names one of three characterizations of the flow map; each gives a teacher
for ``δ_θ(z_s; τ_s, τ_t)`` built from the online student with no gradient
(:mod:`flm.flow.distill_targets` holds the formulas):

=============  ==========================================================  ====================
method         teacher                                                      off-diagonal loss
=============  ==========================================================  ====================
semigroup      ``λ D_su + (1−λ) D_ut(X_{s,u}(z_s))``, midpoint in τ           cross entropy
lagrangian     ``sparsemax(D(X_{s,t}(z_s); t) − (t−s)(1−t)/(1−s) ∂_t δ)``    cross entropy
eulerian       ``D_s + (1−s)(t−s)/(1−t) [∂_s δ + v_s·∇δ]``                   squared error
=============  ==========================================================  ====================

The name becomes an :class:`OffDiagonal` once (:func:`off_diagonal`); the loss never looks at it.
Each has a full path (``(B, L, V)`` probabilities) and a chunked one: the networks and their JVPs
run to ``d``-wide features (and feature tangents), and every ``V``-wide quantity — probabilities,
their tangents ``p ⊙ (W df − ⟨p, W df⟩)``, the teacher, its projection and the loss — is formed
``chunk`` tokens at a time inside a checkpointed block. The JVPs run attention on torch's math
SDPA kernel (the fused ones have no forward-mode derivative).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from flm.flow import (
    TimeSchedule,
    eulerian_parts,
    eulerian_target,
    flow_map,
    lagrangian_parts,
    lagrangian_target,
    semigroup_distill_target,
    semigroup_weight,
    sparsemax,
)
from flm.model import DiT
from flm.objectives.common import ProjectedSpace, at_least_float32, chunked_soft_cross_entropy, soft_cross_entropy

__all__ = ["METHODS", "OffDiagonal", "chunked_lift", "off_diagonal", "squared_error"]

Denoise = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``δ_θ(h; τ_s, τ_t)`` → probabilities ``(B, L, V)``."""


def squared_error(logits: Tensor, target: Tensor) -> Tensor:
    """``Σ_v (softmax(logits)_v − target_v)²`` per token: ``(..., V)`` x2 → ``(...)`` (Eulerian loss)."""
    p = at_least_float32(logits).softmax(-1)
    return (p - target.to(p.dtype)).square().sum(-1)


def chunked_lift(student: DiT, features: Tensor, chunk: int) -> Tensor:
    """``softmax(head(f)) E`` ``(B, L, d)`` from features ``(B, L, d)``, ``chunk`` tokens at a time."""
    lift = ProjectedSpace(student.embedding).lift
    parts = [lift(at_least_float32(student.head(f)).softmax(-1)) for f in features.flatten(0, 1).split(chunk)]
    return torch.cat(parts).view_as(features)


def _probs(head: nn.Linear, f: Tensor) -> Tensor:
    return at_least_float32(head(f)).softmax(-1)


def _probs_jvp(head: nn.Linear, f: Tensor, df: Tensor) -> tuple[Tensor, Tensor]:
    """``p = softmax(W f + b)`` and its tangent ``p ⊙ (W df − ⟨p, W df⟩)`` for a feature tangent ``df``."""
    p = _probs(head, f)
    dl = at_least_float32(F.linear(df, head.weight))
    return p, p * (dl - (p * dl).sum(-1, keepdim=True))


def _chunked_loss(
    features: Tensor,
    head: nn.Linear,
    target: Callable[[slice], Tensor],
    loss: Callable[[Tensor, Tensor], Tensor],
    chunk: int,
) -> Tensor:
    """``loss(head(features), target)`` per token ``(B, L)``, ``chunk`` flattened tokens at a time.

    ``target(rows)`` builds the teacher of those flattened token rows ``(n, V)`` without gradient;
    it is recomputed, not stored, when the checkpointed block runs backward.
    """
    flat = features.flatten(0, 1)
    parts = []
    for start in range(0, flat.shape[0], chunk):
        rows = slice(start, start + chunk)

        def block(f: Tensor, weight: Tensor, bias: Tensor, rows: slice = rows) -> Tensor:
            with torch.no_grad():
                q = target(rows)
            return loss(F.linear(f, weight, bias), q)

        parts.append(checkpoint(block, flat[rows], head.weight, head.bias, use_reentrant=False))
    return torch.cat(parts).view(features.shape[:-1])


def _tokens(coef: Tensor, like: Tensor) -> Tensor:
    """Per-sequence ``(B,)`` → per flattened token ``(B·L,)`` of ``like`` ``(B, L, ·)``."""
    return coef[:, None].expand(like.shape[:2]).flatten()


# ------------------------------------------------------------------ semigroup
def _semigroup_full(
    denoise: Denoise, space: ProjectedSpace, schedule: TimeSchedule, h_s: Tensor, tau_s: Tensor, tau_t: Tensor
) -> Tensor:
    return semigroup_distill_target(denoise, space.lift, schedule, h_s, tau_s, tau_t)


def _semigroup_chunked(
    student: DiT, schedule: TimeSchedule, feats: Tensor, h_s: Tensor, tau_s: Tensor, tau_t: Tensor, chunk: int
) -> Tensor:
    with torch.no_grad():
        tau_u = 0.5 * (tau_s + tau_t)
        s, u, t = schedule.gamma(tau_s), schedule.gamma(tau_u), schedule.gamma(tau_t)
        f_su = student.features(h_s, tau_s, tau_u)
        h_u = flow_map(h_s, chunked_lift(student, f_su, chunk), s, u)
        f_ut = student.features(h_u, tau_u, tau_t)
        lam = semigroup_weight(s, u, t)  # float32 at least, like γ (chunked_soft_cross_entropy keeps it so)
    head = student.head
    return chunked_soft_cross_entropy(feats, head, [(f_su, head, lam), (f_ut, head, 1 - lam)], chunk)


# ------------------------------------------------------------------ lagrangian
def _lagrangian_full(
    denoise: Denoise, space: ProjectedSpace, schedule: TimeSchedule, h_s: Tensor, tau_s: Tensor, tau_t: Tensor
) -> Tensor:
    with sdpa_kernel(SDPBackend.MATH):
        parts = lagrangian_parts(denoise, space.lift, schedule, h_s, tau_s, tau_t)
    return sparsemax(lagrangian_target(parts.d_x, parts.d_st_dtau, parts.coef))


def _lagrangian_chunked(
    student: DiT, schedule: TimeSchedule, feats: Tensor, h_s: Tensor, tau_s: Tensor, tau_t: Tensor, chunk: int
) -> Tensor:
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        parts = lagrangian_parts(
            student.features, lambda f: chunked_lift(student, f, chunk), schedule, h_s, tau_s, tau_t
        )
    f_st, df_st, f_x = (t.flatten(0, 1) for t in (parts.d_st, parts.d_st_dtau, parts.d_x))
    coef, head = _tokens(parts.coef, feats), student.head

    def target(rows: slice) -> Tensor:
        d_st_dtau = _probs_jvp(head, f_st[rows], df_st[rows])[1]
        return sparsemax(lagrangian_target(_probs(head, f_x[rows]), d_st_dtau, coef[rows]))

    return _chunked_loss(feats, head, target, soft_cross_entropy, chunk)


# ------------------------------------------------------------------ eulerian
def _eulerian_full(
    denoise: Denoise, space: ProjectedSpace, schedule: TimeSchedule, h_s: Tensor, tau_s: Tensor, tau_t: Tensor
) -> Tensor:
    with sdpa_kernel(SDPBackend.MATH):
        parts = eulerian_parts(denoise, space.lift, schedule, h_s, tau_s, tau_t)
    return eulerian_target(parts.d_s, parts.d_st, parts.d_dir, parts.one_minus_t)


def _eulerian_chunked(
    student: DiT, schedule: TimeSchedule, feats: Tensor, h_s: Tensor, tau_s: Tensor, tau_t: Tensor, chunk: int
) -> Tensor:
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        parts = eulerian_parts(student.features, lambda f: chunked_lift(student, f, chunk), schedule, h_s, tau_s, tau_t)
    f_s, f_st, df_dir = (t.flatten(0, 1) for t in (parts.d_s, parts.d_st, parts.d_dir))
    one_minus_t, head = _tokens(parts.one_minus_t, feats), student.head

    def target(rows: slice) -> Tensor:
        d_st, d_dir = _probs_jvp(head, f_st[rows], df_dir[rows])
        return eulerian_target(_probs(head, f_s[rows]), d_st, d_dir, one_minus_t[rows])

    return _chunked_loss(feats, head, target, squared_error, chunk)


@dataclass(frozen=True)
class OffDiagonal:
    """One distillation method's off-diagonal rows (MATH.md §2).

    Attributes:
        name: the method (``distill.method``).
        metric: name of the logged mean off-diagonal loss (``ce_off`` or ``se_off``).
        target: full path: ``(denoise, space, schedule, h_s, τ_s, τ_t)`` → teacher ``(B, L, V)``
            (call without gradient).
        loss: per-token loss ``(logits, teacher)`` → ``(B, L)``.
        chunked: chunked path: ``(student, schedule, features, h_s, τ_s, τ_t, chunk)`` → per-token
            loss ``(B, L)``, differentiable through ``features`` (the student's, at ``(τ_s, τ_t)``).
        jvp: whether the teacher takes forward-mode derivatives of the student.
    """

    name: str
    metric: str
    target: Callable[..., Tensor]
    loss: Callable[[Tensor, Tensor], Tensor]
    chunked: Callable[..., Tensor]
    jvp: bool


METHODS: dict[str, OffDiagonal] = {
    "semigroup": OffDiagonal("semigroup", "ce_off", _semigroup_full, soft_cross_entropy, _semigroup_chunked, jvp=False),
    "lagrangian": OffDiagonal(
        "lagrangian", "ce_off", _lagrangian_full, soft_cross_entropy, _lagrangian_chunked, jvp=True
    ),
    "eulerian": OffDiagonal("eulerian", "se_off", _eulerian_full, squared_error, _eulerian_chunked, jvp=True),
}
"""The distillation methods by name."""


def off_diagonal(method: str) -> OffDiagonal:
    """The :class:`OffDiagonal` of ``method``.

    Raises:
        ValueError: unknown ``method`` (the message lists the known ones).
    """
    try:
        return METHODS[method]
    except KeyError:
        raise ValueError(f"unknown distillation method {method!r}; known: {sorted(METHODS)}") from None
