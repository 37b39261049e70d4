"""Time reparameterization τ = α(γ) and its inverse γ = Γ(τ) (MATH.md §1).

``q(γ) = P[argmax_j z_γ,j = x] = ∫ φ(s) Φ(s + γ/(1-γ))^{V-1} ds`` is the probability that a
position's argmax already equals its clean token, and ``α(γ) = (V q(γ) - 1)/(V - 1)`` rescales it
to ``[0, 1]``. The model is conditioned on ``τ = α(γ)``; training draws ``τ ~ U[0, 1]`` and maps it
through ``Γ = α^{-1}``.

The table is built once per vocabulary size, in float64, by trapezoidal quadrature on a uniform
grid in ``s`` (the integrand is smooth and decays like φ at both ends, where the rule converges
exponentially fast: 1,201 nodes on [-9, 9] agree with 8,001 to 4e-16 for V up to 50,258).
Lookups are piecewise-linear interpolation done with torch ops on the caller's device
(``searchsorted`` + ``lerp``): no NumPy, no host round trip, and they trace under
``torch.compile(fullgraph=True)``. Because both directions interpolate the same table with
the axes swapped, the two lookups are exact inverses of each other up to rounding.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor, nn

from flm.flow.interpolant import working_dtype

__all__ = ["TimeSchedule", "argmax_probability"]


def argmax_probability(gamma: Tensor, vocab_size: int, n_quad: int = 1201, s_max: float = 9.0) -> Tensor:
    """``q(γ) = ∫ φ(s) Φ(s + γ/(1-γ))^{V-1} ds`` in float64 (MATH.md §1).

    Args:
        gamma: ``(N,)`` signal levels in ``[0, 1]``.
        vocab_size: ``V ≥ 2``.
        n_quad: number of trapezoid nodes on ``s ∈ [-s_max, s_max]``.

    Returns:
        ``(N,)`` float64 probabilities; exactly ``1/V`` at ``γ = 0`` and ``1`` at ``γ = 1``.
    """
    g = gamma.to(torch.float64)
    s = torch.linspace(-s_max, s_max, n_quad, dtype=torch.float64)
    log_phi = -0.5 * s * s - 0.5 * math.log(2 * math.pi)
    ds = s[1] - s[0]
    out = torch.empty_like(g)
    inner = (g > 0) & (g < 1)
    c = g[inner] / (1 - g[inner])
    vals = []
    for chunk in c.split(256):  # bounds the (chunk, n_quad) float64 temporaries to a few MB
        log_f = (vocab_size - 1) * torch.special.log_ndtr(s[None, :] + chunk[:, None]) + log_phi
        f = log_f.exp()
        vals.append(ds * (f.sum(-1) - 0.5 * (f[:, 0] + f[:, -1])))
    out[inner] = torch.cat(vals) if vals else c
    out[g <= 0] = 1.0 / vocab_size
    out[g >= 1] = 1.0
    return out


@lru_cache(maxsize=16)
def _alpha_table(vocab_size: int, n_table: int) -> tuple[Tensor, Tensor]:
    """Strictly increasing float64 tables ``(γ_i, τ_i)``, ``i = 0..n_table-1``, built once per V.

    Node placement: a fine uniform γ grid is evaluated first, then the nodes are put at equal
    steps of ``(τ + γ)/2``, so neither the steep part of α (large V) nor its flat ends are
    under-resolved.
    """
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    fine_g = torch.linspace(0.0, 1.0, 2 * n_table, dtype=torch.float64)
    fine_tau = (vocab_size * argmax_probability(fine_g, vocab_size) - 1) / (vocab_size - 1)
    fine_tau = torch.cummax(fine_tau.clamp(0.0, 1.0), 0).values
    fine_tau[0], fine_tau[-1] = 0.0, 1.0
    # arc-length-like parameter: half τ, half γ; invert it on the fine grid to place nodes.
    arc = 0.5 * (fine_tau + fine_g)
    targets = torch.linspace(0.0, 1.0, n_table, dtype=torch.float64)
    gamma = _interp(targets, arc, fine_g)
    tau = (vocab_size * argmax_probability(gamma, vocab_size) - 1) / (vocab_size - 1)
    tau = tau.clamp(0.0, 1.0)
    tau[0], tau[-1] = 0.0, 1.0
    # α saturates: in float64 it equals 1 exactly for γ above ~0.93 (V = 2) and is flat to
    # round-off there, so Γ = α⁻¹ would be ill-defined. A ramp of 1e-11 per node (≤ 4e-8 in all,
    # far below float32 resolution of τ) makes the table strictly increasing with a resolvable
    # slope, so both lookups stay exact inverses on all of [0, 1].
    tau = torch.cummax(tau, 0).values
    ramp = torch.arange(n_table, dtype=torch.float64) * 1e-11
    tau = (tau + ramp) / (1.0 + ramp[-1])
    return gamma, tau


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of the table ``(xp, fp)`` at ``x`` (``xp`` increasing).

    Pure torch, shape-preserving, clamps outside ``[xp[0], xp[-1]]``; traces under
    ``torch.compile(fullgraph=True)``.
    """
    x = x.clamp(xp[0], xp[-1])
    idx = torch.searchsorted(xp, x.detach().contiguous(), right=True).clamp(1, xp.numel() - 1)
    # take, not xp[idx]: indexing with a 0-dim tensor would read it on the host (a device sync)
    x0, x1 = xp.take(idx - 1), xp.take(idx)
    f0, f1 = fp.take(idx - 1), fp.take(idx)
    w = (x - x0) / (x1 - x0)
    return torch.lerp(f0, f1, w)


class TimeSchedule(nn.Module):
    """Device-resident lookup ``τ ↔ γ`` for a vocabulary of size ``V`` (MATH.md §1).

    The float64 table is built once per ``(V, n_table)`` and cached. The module's buffers follow
    the model across devices but always stay float64 (casting the model to bf16 does not coarsen
    the schedule); lookups compute in float64 and return the caller's dtype, float32 at least. Only
    the looked-up values are touched, so this costs nothing next to a forward pass.

    Example:
        >>> TimeSchedule(50258).gamma(torch.tensor([0.5]))  # ≈ 0.809
    """

    def __init__(self, vocab_size: int, n_table: int = 4097) -> None:
        super().__init__()
        self.vocab_size = int(vocab_size)
        gamma, tau = _alpha_table(self.vocab_size, n_table)
        self.register_buffer("gamma_table", gamma.clone(), persistent=False)
        self.register_buffer("tau_table", tau.clone(), persistent=False)

    def _apply(self, fn, recurse=True):
        device = fn(torch.zeros((), device=self.gamma_table.device)).device
        self.gamma_table = self.gamma_table.to(device)
        self.tau_table = self.tau_table.to(device)
        return self

    def gamma(self, tau: Tensor) -> Tensor:
        """``γ = Γ(τ)``: signal level for model time ``τ`` (any shape, values in ``[0, 1]``).

        In ``τ``'s dtype, but never below float32 (a bf16 ``τ`` gives a float32 ``γ``).
        """
        return _interp(tau.to(torch.float64), self.tau_table, self.gamma_table).to(working_dtype(tau.dtype))

    def tau(self, gamma: Tensor) -> Tensor:
        """``τ = α(γ)``: model time for signal level ``γ`` (any shape, values in ``[0, 1]``), never below float32."""
        return _interp(gamma.to(torch.float64), self.gamma_table, self.tau_table).to(working_dtype(gamma.dtype))

    def dtau_dgamma(self, gamma: Tensor) -> Tensor:
        """``dτ/dγ = α'(γ)`` of the interpolated table: the slope of the table segment holding ``γ``.

        Float64 inside, the caller's dtype out (float32 at least). It is the exact derivative of the piecewise-linear
        lookups (``dτ/dγ · dΓ/dτ = 1`` on each segment), so a derivative taken in model time
        converts to one in γ without interpolation error: ``∂_γ = dτ/dγ · ∂_τ`` (MATH.md §2,
        Lagrangian and Eulerian distillation).
        """
        xp, fp = self.gamma_table, self.tau_table
        g = gamma.to(torch.float64).clamp(xp[0], xp[-1])
        idx = torch.searchsorted(xp, g.detach().contiguous(), right=True).clamp(1, xp.numel() - 1)
        slope = (fp.take(idx) - fp.take(idx - 1)) / (xp.take(idx) - xp.take(idx - 1))
        return slope.to(working_dtype(gamma.dtype))

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, n_table={self.gamma_table.numel()}"
