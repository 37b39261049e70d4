"""Samplers: FLM Euler in γ and the K-step FMLM flow-map sampler (MATH.md §1, §2).

Both take a denoiser callable and a model-time grid; neither knows about networks. States may be
dense ``z`` ``(B, L, V)`` or projected ``h = zE`` ``(B, L, d)``: ``lift`` maps the denoiser's
probabilities into the state's space (identity for dense, ``p ↦ pE`` for projected).
The final step returns the argmax of the last denoiser output, so ``z`` itself is never needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from flm.flow.flow_map import flow_map, renoise
from flm.flow.schedule import TimeSchedule

__all__ = ["Denoiser", "FlowMapDenoiser", "flm_sample", "flow_map_sample"]

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""``p(z, τ)``: state ``(B, L, D)``, model time ``(B,)`` → probabilities ``(B, L, V)``."""
FlowMapDenoiser = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``δ(z; τ_s, τ_t)``: state ``(B, L, D)``, times ``(B,)``, ``(B,)`` → probabilities ``(B, L, V)``."""


def _identity(p: Tensor) -> Tensor:
    return p


@torch.no_grad()
def flm_sample(
    denoise: Denoiser,
    z0: Tensor,
    tau: Tensor,
    schedule: TimeSchedule,
    lift: Callable[[Tensor], Tensor] = _identity,
) -> Tensor:
    """Euler in γ on the grid ``τ_0..τ_K`` (MATH.md §1); ``K = len(tau) - 1`` network calls.

    For ``k = 0..K-2``: ``p = p(z_k, τ_k)``, ``z_{k+1} = z_k + (γ_{k+1} - γ_k)(p - z_k)/(1 - γ_k)``.
    Output ``argmax p(z_{K-1}, τ_{K-1})``.

    Args:
        denoise: ``p(z, τ)``.
        z0: ``(B, L, D)`` initial noise (``ε`` or ``ξF``).
        tau: ``(K + 1,)`` increasing grid from 0 to 1 (see ``uniform_grid``).
        schedule: the τ ↔ γ lookup.
        lift: maps ``(B, L, V)`` probabilities into the state's space.

    Returns:
        ``(B, L)`` token ids.
    """
    gamma = schedule.gamma(tau.to(torch.float64)).to(z0.dtype)
    tau = tau.to(z0.dtype)
    batch = z0.shape[0]
    z = z0
    steps = tau.numel() - 1
    for k in range(steps):
        p = denoise(z, tau[k].expand(batch))
        if k == steps - 1:
            return p.argmax(-1)
        z = z + (gamma[k + 1] - gamma[k]) * (lift(p) - z) / (1 - gamma[k])
    raise ValueError("tau must hold at least two points")


@torch.no_grad()
def flow_map_sample(
    denoise: FlowMapDenoiser,
    z0: Tensor,
    tau: Tensor,
    schedule: TimeSchedule,
    lift: Callable[[Tensor], Tensor] = _identity,
    g: float = 0.0,
    noise: Callable[[], Tensor] | None = None,
) -> Tensor:
    """K-step flow-map sampler ``z_{k+1} = X_{γ_k, γ_{k+1}}(z_k)`` (MATH.md §2).

    The network sees ``δ(z_k; τ_k, τ_{k+1})``; the last step outputs ``argmax δ(z_{K-1}; τ_{K-1}, 1)``.
    With ``g > 0`` each intermediate step jumps to ``γ̃ = 1 - (1-γ_{k+1}) sqrt(1-g²)`` (network
    conditioned on ``τ̃ = α(γ̃)``) and re-noises back to ``γ_{k+1}`` (see :func:`renoise`).

    Args:
        denoise: ``δ(z; τ_s, τ_t)``.
        z0: ``(B, L, D)`` initial noise.
        tau: ``(K + 1,)`` increasing grid from 0 to 1.
        schedule: the τ ↔ γ lookup.
        lift: maps probabilities into the state's space.
        g: re-noising strength in ``[0, 1]``; 0 is the deterministic map.
        noise: returns fresh ``(B, L, D)`` noise in the state's space; required when ``g > 0``.

    Returns:
        ``(B, L)`` token ids.
    """
    if not 0.0 <= g <= 1.0:
        raise ValueError(f"re-noising g must be in [0, 1], got {g}")
    if g > 0 and noise is None:
        raise ValueError("re-noising (g > 0) needs a `noise` callable")
    gamma = schedule.gamma(tau.to(torch.float64)).to(z0.dtype)
    tau = tau.to(z0.dtype)
    batch = z0.shape[0]
    shrink = math.sqrt(1.0 - g * g)
    z = z0
    steps = tau.numel() - 1
    for k in range(steps):
        if k == steps - 1:
            return denoise(z, tau[k].expand(batch), tau[steps].expand(batch)).argmax(-1)
        gamma_next = gamma[k + 1]
        gamma_jump = 1 - (1 - gamma_next) * shrink if g > 0 else gamma_next
        tau_jump = schedule.tau(gamma_jump.to(torch.float64)).to(z0.dtype) if g > 0 else tau[k + 1]
        delta = lift(denoise(z, tau[k].expand(batch), tau_jump.expand(batch)))
        z = flow_map(z, delta, gamma[k], gamma_jump)
        if g > 0:
            z = renoise(z, delta, gamma_jump, gamma_next, g, noise())
    raise ValueError("tau must hold at least two points")
