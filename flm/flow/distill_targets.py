"""Off-diagonal teachers for flow-map distillation: semigroup, Lagrangian, Eulerian (MATH.md §2).

Here ``s ≤ u ≤ t`` are signal levels γ and the network ``δ(h, τ_s, τ_t)`` is conditioned on their
model times ``τ = α(γ)``. The flow map is ``X_{s,t}(z) = (1-t)/(1-s) z + (t-s)/(1-s) δ_{s,t}(z)``;
each characterization of it gives a teacher ``δ̄`` for ``δ_{s,t}(z_s)``:

* semigroup ``X_{s,t} = X_{u,t} ∘ X_{s,u}``:  ``δ̄ = λ δ_{s,u} + (1-λ) δ_{u,t}(X_{s,u}(z_s))``;
* Lagrangian ``∂_t X_{s,t} = b_t(X_{s,t})``:  ``δ̄ = D(X_{s,t}(z_s); t) − (t−s)(1−t)/(1−s) · ∂_t δ_{s,t}(z_s)``;
* Eulerian ``∂_s X_{s,t} + b_s·∇X_{s,t} = 0``:  ``δ̄ = D_s + (1−s)(t−s)/(1−t) · [∂_s δ_{s,t} + v_s·∇δ_{s,t}](z_s)``,

with ``D(·; t) = δ(·; t, t)`` the diagonal (denoiser), ``b_t(z) = v_t = (D(z; t) − z)/(1−t)``. If ``δ`` is
the exact two-time denoiser of a flow, each teacher equals ``δ`` itself (the fixed point).

Time derivatives are forward-mode JVPs (``torch.func.jvp``) in model time, converted to γ with
:meth:`~flm.flow.schedule.TimeSchedule.dtau_dgamma`. The callables are generic in what they return
(probabilities for the full path, ``d``-wide features for the chunked one) as long as ``lift``
turns that into the state space; the ``*_target`` formulas then act on probabilities and their
tangents. Every state is linear, so ``h`` may be a dense ``z`` ``(B, L, V)`` (``lift`` = identity)
or its projection ``zE`` ``(B, L, d)`` (``lift(p) = pE``; the ``z``-tangent ``v_s`` becomes ``v_s E``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from flm.flow.flow_map import flow_map, semigroup_target, semigroup_weight
from flm.flow.schedule import TimeSchedule

__all__ = [
    "EULERIAN_GAP",
    "EulerianParts",
    "LagrangianParts",
    "eulerian_parts",
    "eulerian_target",
    "lagrangian_parts",
    "lagrangian_target",
    "semigroup_distill_target",
    "sparsemax",
]

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``δ(h, τ_s, τ_t)``: states ``(B, L, D)`` and model times ``(B,)`` → outputs ``(B, L, ·)``."""
Lift = Callable[[Tensor], Tensor]
"""Outputs of a :data:`Denoiser` → ``(B, L, D)`` state-space vectors (``p ↦ pE``, or identity when dense)."""

EULERIAN_GAP = 0.05
"""Floor on ``1 − t`` in the Eulerian teacher's ``1/(1−t)`` (see :func:`eulerian_target`)."""


def _col(coef: Tensor, ref: Tensor) -> Tensor:
    """``(B,)`` → broadcastable against ``ref`` ``(B, ...)``, in ``ref``'s dtype."""
    return coef.to(ref.dtype).reshape(coef.shape + (1,) * (ref.dim() - coef.dim()))


def semigroup_distill_target(
    delta: Denoiser, lift: Lift, schedule: TimeSchedule, h_s: Tensor, tau_s: Tensor, tau_t: Tensor
) -> Tensor:
    """Semigroup teacher ``δ̄ = λ D_su + (1−λ) D_ut`` with the midpoint in model time (MATH.md §2).

    ``τ_u = (τ_s + τ_t)/2``, ``D_su = δ(h_s; τ_s, τ_u)``, ``h_u = X_{s,u}(h_s)`` (with ``lift(D_su)``),
    ``D_ut = δ(h_u; τ_u, τ_t)``, ``λ = (1-t)(u-s) / ((1-u)(t-s))``.

    Args:
        delta: the online student, returning probabilities ``(B, L, V)``.
        lift: probabilities → state space.
        schedule: ``γ = Γ(τ)``.
        h_s: ``(B, L, D)`` states at level ``s``.
        tau_s, tau_t: ``(B,)`` model times, ``τ_s ≤ τ_t``.

    Returns:
        ``(B, L, V)`` target on the simplex.
    """
    tau_u = 0.5 * (tau_s + tau_t)
    s, u, t = schedule.gamma(tau_s), schedule.gamma(tau_u), schedule.gamma(tau_t)
    d_su = delta(h_s, tau_s, tau_u)
    h_u = flow_map(h_s, lift(d_su), s, u)
    d_ut = delta(h_u, tau_u, tau_t)
    return semigroup_target(d_su, d_ut, semigroup_weight(s, u, t))


@dataclass(frozen=True)
class LagrangianParts:
    """What the Lagrangian teacher needs, in the :data:`Denoiser`'s output space.

    Attributes:
        d_st: ``δ(z_s; τ_s, τ_t)`` (``B, L, ·``).
        d_st_dtau: its tangent ``∂_{τ_t} δ(z_s; τ_s, τ_t)`` (same shape).
        d_x: ``D(X_{s,t}(z_s); t) = δ(X_{s,t}(z_s); τ_t, τ_t)`` (same shape).
        coef: ``(B,)`` ``(t−s)(1−t)/(1−s) · dτ/dγ(t)``, the factor of ``∂_{τ_t} δ`` in the teacher.
    """

    d_st: Tensor
    d_st_dtau: Tensor
    d_x: Tensor
    coef: Tensor


def lagrangian_parts(
    delta: Denoiser, lift: Lift, schedule: TimeSchedule, h_s: Tensor, tau_s: Tensor, tau_t: Tensor
) -> LagrangianParts:
    """Student calls of the Lagrangian teacher (MATH.md §2): one JVP in ``τ_t``, one diagonal call.

    ``(δ_st, ∂_{τ_t} δ_st) = jvp(τ ↦ δ(h_s; τ_s, τ), τ_t, 1)``; ``X_{s,t}(h_s)`` uses ``lift(δ_st)``;
    ``d_x = δ(X_{s,t}(h_s); τ_t, τ_t)``. Call without gradient; attention must support forward AD.

    Args:
        delta, lift, schedule: as in :func:`semigroup_distill_target` (``delta`` may return features).
        h_s: ``(B, L, D)`` states at level ``s``.
        tau_s, tau_t: ``(B,)`` model times.
    """
    s, t = schedule.gamma(tau_s), schedule.gamma(tau_t)
    d_st, d_st_dtau = torch.func.jvp(lambda tau: delta(h_s, tau_s, tau), (tau_t,), (torch.ones_like(tau_t),))
    d_x = delta(flow_map(h_s, lift(d_st), s, t), tau_t, tau_t)
    coef = (t - s) * (1 - t) / (1 - s).clamp_min(1e-12) * schedule.dtau_dgamma(t)
    return LagrangianParts(d_st, d_st_dtau, d_x, coef)


def lagrangian_target(d_x: Tensor, d_st_dtau: Tensor, coef: Tensor) -> Tensor:
    """``δ̄ = D(X_{s,t}(z_s); t) − (t−s)(1−t)/(1−s) · ∂_t δ_{s,t}(z_s)`` (MATH.md §2, Lagrangian).

    From ``∂_t X_{s,t} = b_t(X_{s,t})`` with ``X`` written through ``δ``; ``∂_t = dτ/dγ(t) ∂_{τ_t}``.
    The result may leave the simplex: project it (:func:`sparsemax`) before a cross entropy.

    Args:
        d_x: ``(B, L, V)`` ``D(X_{s,t}(z_s); t)``.
        d_st_dtau: ``(B, L, V)`` ``∂_{τ_t} δ(z_s; τ_s, τ_t)``.
        coef: ``(B,)`` ``(t−s)(1−t)/(1−s) · dτ/dγ(t)`` (:attr:`LagrangianParts.coef`).

    Returns:
        ``(B, L, V)`` unprojected teacher.
    """
    return d_x - _col(coef, d_x) * d_st_dtau


@dataclass(frozen=True)
class EulerianParts:
    """What the Eulerian teacher needs, in the :data:`Denoiser`'s output space.

    Attributes:
        d_s: ``D_s = δ(z_s; τ_s, τ_s)`` (``B, L, ·``).
        d_st: ``δ(z_s; τ_s, τ_t)``.
        d_dir: ``(1−s)(t−s) [∂_s δ_{s,t} + v_s·∇_z δ_{s,t}](z_s)``: the JVP along the characteristic,
            its coefficient folded into the tangent (no division by ``1−s``).
        one_minus_t: ``(B,)`` ``1 − t``.
    """

    d_s: Tensor
    d_st: Tensor
    d_dir: Tensor
    one_minus_t: Tensor


def eulerian_parts(
    delta: Denoiser, lift: Lift, schedule: TimeSchedule, h_s: Tensor, tau_s: Tensor, tau_t: Tensor
) -> EulerianParts:
    """Student calls of the Eulerian teacher (MATH.md §2): one diagonal call, one JVP in ``(τ_s, z)``.

    ``D_s = δ(h_s; τ_s, τ_s)`` and ``v_s = (D_s − z_s)/(1−s)``; the JVP of ``(τ, h) ↦ δ(h; τ, τ_t)`` at
    ``(τ_s, h_s)`` with tangents ``((1−s)(t−s) dτ/dγ(s), (t−s)(lift(D_s) − h_s))`` is
    ``(1−s)(t−s)[∂_s δ + v_s·∇_z δ]`` (``∂_s = dτ/dγ(s) ∂_{τ_s}``; on the projected path the
    ``z``-tangent ``v_s`` is ``v_s E``). Call without gradient; attention must support forward AD.

    Args:
        delta, lift, schedule: as in :func:`semigroup_distill_target` (``delta`` may return features).
        h_s: ``(B, L, D)`` states at level ``s``.
        tau_s, tau_t: ``(B,)`` model times.
    """
    s, t = schedule.gamma(tau_s), schedule.gamma(tau_t)
    d_s = delta(h_s, tau_s, tau_s)
    tangent_tau = ((1 - s) * (t - s) * schedule.dtau_dgamma(s)).to(tau_s.dtype)
    tangent_h = _col(t - s, h_s) * (lift(d_s).to(h_s.dtype) - h_s)
    d_st, d_dir = torch.func.jvp(lambda tau, h: delta(h, tau, tau_t), (tau_s, h_s), (tangent_tau, tangent_h))
    return EulerianParts(d_s, d_st, d_dir, 1 - t)


def eulerian_target(d_s: Tensor, d_st: Tensor, d_dir: Tensor, one_minus_t: Tensor, gap: float = EULERIAN_GAP) -> Tensor:
    """``δ̄ = D_s + (1−s)(t−s)/(1−t) · [∂_s δ + v_s·∇δ]`` (MATH.md §2, Eulerian), safe at ``t = 1``.

    From ``∂_s X_{s,t} + v_s·∇X_{s,t} = 0``, whose residual in ``δ`` is
    ``R = (1−t)(δ_{s,t} − D_s) − (1−s)(t−s)[∂_s δ + v_s·∇δ]``. The teacher is ``δ̄ = δ_{s,t} − R/max(1−t, gap)``:
    for ``1 − t ≥ gap`` it is exactly the formula above (``δ_{s,t}`` cancels); for the rows closer to
    ``t = 1`` (the boundary rows ``(0, 1)`` among them), where ``1/(1−t)`` blows up and ``R`` alone
    is what the exact map zeroes (``X_{s,1}`` is constant along characteristics), it is a step of
    size ``1/gap`` along ``−R``. Either way its fixed point is ``R = 0``: the exact flow map.
    The teacher may leave the simplex: train it with a squared error.

    Args:
        d_s: ``(B, L, V)`` ``D_s(z_s)``.
        d_st: ``(B, L, V)`` ``δ(z_s; s, t)`` (no gradient).
        d_dir: ``(B, L, V)`` ``(1−s)(t−s)[∂_s δ + v_s·∇δ]`` (:attr:`EulerianParts.d_dir`).
        one_minus_t: ``(B,)``.
        gap: floor on ``1 − t`` in the denominator.

    Returns:
        ``(B, L, V)`` teacher.
    """
    far = one_minus_t >= gap
    safe = torch.where(far, one_minus_t, torch.full_like(one_minus_t, gap))
    keep = torch.where(far, torch.zeros_like(one_minus_t), 1 - one_minus_t / gap)  # 1 − (1−t)/max(1−t, gap)
    return d_s + _col(1 / safe, d_s) * d_dir + _col(keep, d_s) * (d_st - d_s)


def sparsemax(x: Tensor) -> Tensor:
    """Euclidean projection of each row of ``x`` ``(..., V)`` onto the simplex (entmax with α = 2).

    ``sparsemax(x) = max(x − τ(x), 0)`` with ``τ`` chosen so the result sums to 1 (Martins & Astudillo,
    2016); the identity on points of the simplex. Used on the Lagrangian teacher (MATH.md §2).
    """
    z = x.sort(dim=-1, descending=True).values
    k = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=x.dtype)
    cumsum = z.cumsum(-1) - 1
    support = (k * z > cumsum).sum(-1, keepdim=True)
    tau = cumsum.gather(-1, support - 1) / support.to(x.dtype)
    return (x - tau).clamp_min(0)
