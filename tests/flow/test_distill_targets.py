"""Off-diagonal teachers (MATH.md §2) at their fixed point: the exact two-time denoiser of an analytic flow.

The data law is Gaussian per coordinate, ``x ~ N(μ, σ² I)`` in ``R^V``; with ``σ = 0`` it is the
one-point law ``x = μ = e(x₀)`` (a single token). The interpolant ``z_γ = (1-γ)ε + γx`` has marginals
``N(γμ, σ_γ² I)``, ``σ_γ² = (1-γ)² + γ²σ²``, so the flow map is the affine
``X_{s,t}(z) = tμ + (σ_t/σ_s)(z − sμ)``, the denoiser ``D(z; γ) = μ + γσ²/σ_γ² (z − γμ)``, and the
two-time denoiser ``δ_{s,t}(z) = ((1-s) X_{s,t}(z) − (1-t) z)/(t-s)`` (``= μ`` when ``σ = 0``).
Fed as the student — conditioned on model times through the schedule, as the network is — each
teacher must return ``δ`` itself; with ``σ > 0`` the map depends on ``s``, ``t`` and ``z``, so every
term of the Lagrangian and Eulerian teachers (JVP direction, ``dτ/dγ``, ``v_s``) matters.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from flm.flow import (
    TimeSchedule,
    eulerian_parts,
    eulerian_target,
    lagrangian_parts,
    lagrangian_target,
    semigroup_distill_target,
    sparsemax,
)
from tests.conftest import gen

V, L, B = 5, 3, 24
SCHEDULE = TimeSchedule(V)


def _col(c: Tensor) -> Tensor:
    return c[:, None, None]


class GaussianFlow:
    """The exact two-time denoiser ``δ(z; τ_s, τ_t)`` of ``x ~ N(μ, σ² I)`` (see the module docstring)."""

    def __init__(self, mu: Tensor, sigma: float, wobble: float = 0.0) -> None:
        self.mu, self.sigma, self.wobble = mu, sigma, wobble

    def scale(self, g: Tensor) -> Tensor:
        return 1 - g if self.sigma == 0 else ((1 - g) ** 2 + (g * self.sigma) ** 2).sqrt()

    def __call__(self, z: Tensor, tau_s: Tensor, tau_t: Tensor) -> Tensor:
        s, t = _col(SCHEDULE.gamma(tau_s)), _col(SCHEDULE.gamma(tau_t))
        mu = self.mu
        x_st = t * mu + self.scale(t) / self.scale(s) * (z - s * mu)
        gap = torch.where(t > s, t - s, torch.ones_like(t))
        off = ((1 - s) * x_st - (1 - t) * z) / gap
        # D(z; 1) = z, or μ when σ = 0
        diag = mu + s * self.sigma**2 / (self.scale(s) ** 2).clamp_min(1e-300) * (z - s * mu)
        out = torch.where(t > s, off, diag)
        # a perturbed student: a smooth function of (z, s, t) that the exact map does not have
        return out + self.wobble * torch.sin(3 * z + 2 * s + 5 * t)


def _times(seed: int) -> tuple[Tensor, Tensor]:
    """Off-diagonal model times ``τ_s < τ_t`` (as the objective draws them) plus boundary rows ``(0, 1)``."""
    g = gen(seed)
    tau_d = torch.rand(B, generator=g, dtype=torch.float64) * 0.98 + 0.01
    tau_s = torch.rand(B, generator=g, dtype=torch.float64) * (1 - tau_d)
    tau_t = tau_s + tau_d
    tau_s[:3], tau_t[:3] = 0.0, 1.0
    return tau_s, tau_t


def _state(flow: GaussianFlow, tau_s: Tensor, seed: int) -> Tensor:
    """``z_s = (1-s) ε + s x`` with ``x ~ N(μ, σ²)`` (dense, ``(B, L, V)``)."""
    g = gen(seed)
    eps = torch.randn(B, L, V, generator=g, dtype=torch.float64)
    x = flow.mu + flow.sigma * torch.randn(B, L, V, generator=g, dtype=torch.float64)
    s = _col(SCHEDULE.gamma(tau_s))
    return (1 - s) * eps + s * x


def _targets(flow: GaussianFlow, z: Tensor, tau_s: Tensor, tau_t: Tensor) -> dict[str, Tensor]:
    ident = lambda p: p  # noqa: E731 - dense states: the lift is the identity
    lag = lagrangian_parts(flow, ident, SCHEDULE, z, tau_s, tau_t)
    eul = eulerian_parts(flow, ident, SCHEDULE, z, tau_s, tau_t)
    return {
        "semigroup": semigroup_distill_target(flow, ident, SCHEDULE, z, tau_s, tau_t),
        "lagrangian": lagrangian_target(lag.d_x, lag.d_st_dtau, lag.coef),
        "eulerian": eulerian_target(eul.d_s, eul.d_st, eul.d_dir, eul.one_minus_t),
    }


def _one_hot_mu() -> Tensor:
    mu = torch.zeros(V, dtype=torch.float64)
    mu[2] = 1.0
    return mu


def test_one_point_flow_is_a_fixed_point_of_every_teacher() -> None:
    flow = GaussianFlow(_one_hot_mu(), sigma=0.0)
    tau_s, tau_t = _times(0)
    z = _state(flow, tau_s, 1)
    student = flow(z, tau_s, tau_t)
    assert torch.allclose(student, flow.mu.expand_as(student), atol=1e-12)
    for name, target in _targets(flow, z, tau_s, tau_t).items():
        assert (target - student).abs().max() < 1e-8, name
    # the Lagrangian teacher is projected before the cross entropy: a vertex of the simplex stays put
    assert (sparsemax(_targets(flow, z, tau_s, tau_t)["lagrangian"]) - student).abs().max() < 1e-8


@pytest.mark.parametrize("sigma", [0.4, 1.3])
def test_gaussian_flow_is_a_fixed_point_of_every_teacher(sigma: float) -> None:
    # δ_{s,t}(z) depends on s, t and z here: every derivative term of the teachers is exercised.
    flow = GaussianFlow(torch.tensor([0.1, 0.5, 0.2, 0.15, 0.05], dtype=torch.float64), sigma)
    tau_s, tau_t = _times(2)
    z = _state(flow, tau_s, 3)
    student = flow(z, tau_s, tau_t)
    for name, target in _targets(flow, z, tau_s, tau_t).items():
        assert (target - student).abs().max() < 1e-8, name


@pytest.mark.parametrize("sigma", [0.0, 0.4])
def test_perturbed_student_is_not_a_fixed_point(sigma: float) -> None:
    flow = GaussianFlow(torch.tensor([0.1, 0.5, 0.2, 0.15, 0.05], dtype=torch.float64), sigma, wobble=0.05)
    tau_s, tau_t = _times(4)
    z = _state(flow, tau_s, 5)
    student = flow(z, tau_s, tau_t)
    off = slice(3, None)  # boundary rows aside
    for name, target in _targets(flow, z, tau_s, tau_t).items():
        assert (target - student)[off].abs().amax(dim=(1, 2)).min() > 1e-4, name


def test_eulerian_teacher_is_finite_and_exact_up_to_t_equal_one() -> None:
    # rows with 1 - t below the gap (the boundary rows (0, 1) among them) keep the exact fixed point
    flow = GaussianFlow(torch.tensor([0.1, 0.5, 0.2, 0.15, 0.05], dtype=torch.float64), 0.7)
    tau_s = torch.linspace(0.0, 0.5, B, dtype=torch.float64)
    tau_t = torch.linspace(0.9, 1.0, B, dtype=torch.float64)
    z = _state(flow, tau_s, 6)
    eul = eulerian_parts(flow, lambda p: p, SCHEDULE, z, tau_s, tau_t)
    assert (eul.one_minus_t < 0.05).any() and (eul.one_minus_t == 0).any()
    target = eulerian_target(eul.d_s, eul.d_st, eul.d_dir, eul.one_minus_t)
    assert torch.isfinite(target).all()
    assert (target - flow(z, tau_s, tau_t)).abs().max() < 1e-8


def test_dtau_dgamma_is_the_slope_of_the_lookup() -> None:
    # ∂_γ = dτ/dγ ∂_τ: the product with dΓ/dτ (forward AD through the lookup) is 1 on every segment
    tau = torch.rand(200, generator=gen(7), dtype=torch.float64)
    gamma, dgamma_dtau = torch.func.jvp(SCHEDULE.gamma, (tau,), (torch.ones_like(tau),))
    assert torch.allclose(SCHEDULE.dtau_dgamma(gamma) * dgamma_dtau, torch.ones_like(tau), atol=1e-9)
    # and it approximates α'(γ) of the continuous schedule (central difference of the table)
    g = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    fd = (SCHEDULE.tau(g + 1e-3) - SCHEDULE.tau(g - 1e-3)) / 2e-3
    assert torch.allclose(SCHEDULE.dtau_dgamma(g), fd, rtol=1e-2)


def test_sparsemax_projects_onto_the_simplex() -> None:
    x = torch.randn(500, 7, generator=gen(8), dtype=torch.float64) * 2
    p = sparsemax(x)
    assert (p >= 0).all() and torch.allclose(p.sum(-1), torch.ones(500, dtype=torch.float64))
    # identity on the simplex, and the Euclidean projection: no nearby simplex point is closer
    q = torch.rand(50, 7, generator=gen(9), dtype=torch.float64).softmax(-1)
    assert torch.allclose(sparsemax(q), q, atol=1e-12)
    other = (p[:, None] + 0.05 * torch.randn(500, 40, 7, generator=gen(10), dtype=torch.float64)).clamp_min(0)
    other = other / other.sum(-1, keepdim=True)
    assert ((x[:, None] - other).norm(dim=-1) >= (x - p).norm(dim=-1)[:, None] - 1e-12).all()
    assert torch.equal(sparsemax(torch.tensor([3.0, 1.0, 0.5])), torch.tensor([1.0, 0.0, 0.0]))
