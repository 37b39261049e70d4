"""Flow-map algebra for FMLM (MATH.md §2). Here ``s ≤ u ≤ t`` are signal levels γ.

``X_{s,t}(z) = (1-t)/(1-s) · z + (t-s)/(1-s) · δ_{s,t}(z)`` with ``δ_{s,t}(z) ∈ Δ^V`` per position.
The semigroup ``X_{s,t} = X_{u,t} ∘ X_{s,u}`` demands ``δ_{s,t} = λ δ_{s,u} + (1-λ) δ_{u,t}∘X_{s,u}``
with ``λ = (1-t)(u-s) / ((1-u)(t-s)) ∈ [0, 1]``.

Every function is linear in the state, so it applies unchanged to dense states ``z`` ``(B, L, V)``
and to their projections ``h = zE`` ``(B, L, d)`` (then ``δ`` must be given as ``δE``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["flow_map", "renoise", "semigroup_target", "semigroup_weight"]

_EPS = 1e-6


def _bcast(coef: Tensor | float, ref: Tensor) -> Tensor:
    coef = torch.as_tensor(coef, dtype=ref.dtype, device=ref.device)
    return coef.reshape(coef.shape + (1,) * (ref.dim() - coef.dim()))


def _level(coef: Tensor | float, ref: Tensor) -> Tensor:
    """A level ``(B,)`` or scalar shaped to broadcast against ``ref``, kept in the wider of its dtype and
    ``ref``'s (a Python float counts as float64): coefficients built from float64 levels are rounded
    once, after the differences, not before."""
    coef = torch.as_tensor(coef, dtype=torch.float64 if isinstance(coef, float) else None, device=ref.device)
    coef = coef.to(torch.promote_types(coef.dtype, ref.dtype))
    return coef.reshape(coef.shape + (1,) * (ref.dim() - coef.dim()))


def flow_map(z: Tensor, delta: Tensor, s: Tensor | float, t: Tensor | float) -> Tensor:
    """``X_{s,t}(z) = (1-t)/(1-s) z + (t-s)/(1-s) δ`` (MATH.md §2).

    The two coefficients are computed in the wider of the levels' and the state's dtype (float64
    levels keep ``t - s`` exact to float64 however small the step), then cast to ``z``'s dtype.

    Args:
        z: ``(B, L, D)`` state at level ``s`` (``D = V`` dense, ``D = d`` projected).
        delta: ``(B, L, D)`` two-time denoiser output ``δ_{s,t}(z)`` (or its projection ``δE``).
        s, t: scalars or ``(B,)`` levels, ``s ≤ t``, ``s < 1``.

    Returns:
        ``(B, L, D)`` state at level ``t``; ``X_{s,s} = id`` exactly.
    """
    s, t = _level(s, z), _level(t, z)
    one_minus_s = (1 - s).clamp_min(_EPS)
    keep, move = ((1 - t) / one_minus_s).to(z.dtype), ((t - s) / one_minus_s).to(z.dtype)
    return keep * z + move * delta


def semigroup_weight(s: Tensor, u: Tensor, t: Tensor) -> Tensor:
    """``λ = (1-t)(u-s) / ((1-u)(t-s))`` for ``s ≤ u ≤ t`` (MATH.md §2); in ``[0, 1]``.

    Args:
        s, u, t: ``(B,)`` levels. ``t = s`` (measure zero) returns ``λ = 1``.

    Returns:
        ``(B,)`` weights of ``δ_{s,u}`` in the semigroup target.
    """
    num = (1 - t) * (u - s)
    den = ((1 - u) * (t - s)).clamp_min(1e-12)
    return torch.where(t - s > 0, num / den, torch.ones_like(num)).clamp(0.0, 1.0)


def semigroup_target(d_su: Tensor, d_ut: Tensor, lam: Tensor) -> Tensor:
    """``δ̄ = λ δ_{s,u} + (1-λ) δ_{u,t}`` — a convex combination, so it stays on the simplex.

    Args:
        d_su, d_ut: ``(B, L, V)`` probabilities.
        lam: ``(B,)`` from :func:`semigroup_weight`.

    Returns:
        ``(B, L, V)`` soft target for ``δ_{s,t}``.
    """
    lam = _bcast(lam, d_su)
    return lam * d_su + (1 - lam) * d_ut


def renoise(
    z_jump: Tensor, delta: Tensor, gamma_jump: Tensor | float, gamma_next: Tensor | float, g: float, noise: Tensor
) -> Tensor:
    """Re-noising after a flow-map jump (MATH.md §2, parameter ``g ∈ [0, 1]``).

    The sampler first jumps to ``γ̃ = 1 - (1-γ') sqrt(1-g²)`` (noise scale ``(1-γ') sqrt(1-g²)``),
    then adds ``g (1-γ') ε'`` so the noise scale is ``1-γ'`` again, and removes the excess signal
    ``(γ̃ - γ') δ`` so the signal level is ``γ'``:

        z' = X_{γ,γ̃}(z) - (γ̃ - γ') δ + g (1-γ') ε'

    Args:
        z_jump: ``(B, L, D)`` the state ``X_{γ,γ̃}(z)``.
        delta: ``(B, L, D)`` the denoiser output used for the jump (projected if the state is).
        gamma_jump, gamma_next: ``γ̃`` and ``γ'`` (coefficients computed in their dtype or ``z``'s, the wider).
        noise: ``(B, L, D)`` fresh noise ``ε'`` (or ``ξF``).

    Returns:
        ``(B, L, D)`` state at level ``γ'``; equals ``z_jump`` when ``g = 0``.
    """
    gj, gn = _level(gamma_jump, z_jump), _level(gamma_next, z_jump)
    excess, scale = (gj - gn).to(z_jump.dtype), (g * (1 - gn)).to(z_jump.dtype)
    return z_jump - excess * delta + scale * noise
