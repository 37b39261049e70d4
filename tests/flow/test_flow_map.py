"""Flow-map algebra (MATH.md §2): identity, semigroup, simplex, re-noising."""

from __future__ import annotations

import torch

from flm.flow import flow_map, renoise, semigroup_target, semigroup_weight
from tests.conftest import gen


def _levels(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    s, u, t = torch.rand(3, n, generator=gen(seed), dtype=torch.float64).sort(0).values * 0.98
    return s, u, t


def test_identity_on_the_diagonal() -> None:
    z = torch.randn(4, 6, 9, dtype=torch.float64)
    delta = torch.rand(4, 6, 9, dtype=torch.float64)
    t = torch.rand(4, dtype=torch.float64)
    assert torch.equal(flow_map(z, delta, t, t), z)


def test_semigroup_target_composes_exactly() -> None:
    # X_{u,t}(X_{s,u}(z)) with any δ_su, δ_ut equals X_{s,t}(z) with δ_st = λ δ_su + (1-λ) δ_ut.
    s, u, t = _levels(16, 0)
    z = torch.randn(16, 5, 7, dtype=torch.float64)
    d_su = torch.rand(16, 5, 7, dtype=torch.float64).softmax(-1)
    d_ut = torch.rand(16, 5, 7, dtype=torch.float64).softmax(-1)
    two_steps = flow_map(flow_map(z, d_su, s, u), d_ut, u, t)
    one_step = flow_map(z, semigroup_target(d_su, d_ut, semigroup_weight(s, u, t)), s, t)
    assert torch.allclose(two_steps, one_step, atol=1e-12)


def test_semigroup_on_an_analytic_flow() -> None:
    # Data = one fixed point x: the exact flow map is δ_{s,t} ≡ e(x) for every (s, t), so
    # X_{u,t} ∘ X_{s,u} = X_{s,t} must hold for the map itself, and its target reproduces e(x).
    s, u, t = _levels(10, 1)
    e_x = torch.zeros(10, 3, 5, dtype=torch.float64)
    e_x[..., 2] = 1
    z = torch.randn(10, 3, 5, dtype=torch.float64)
    assert torch.allclose(flow_map(flow_map(z, e_x, s, u), e_x, u, t), flow_map(z, e_x, s, t), atol=1e-12)
    assert torch.allclose(semigroup_target(e_x, e_x, semigroup_weight(s, u, t)), e_x)
    # and the state lands on the interpolant line: X_{s,t}(z_s) = (1-t) ε + t e(x)
    eps = torch.randn_like(z)
    z_s = (1 - s[:, None, None]) * eps + s[:, None, None] * e_x
    z_t = (1 - t[:, None, None]) * eps + t[:, None, None] * e_x
    assert torch.allclose(flow_map(z_s, e_x, s, t), z_t, atol=1e-12)


def test_lambda_in_unit_interval_and_target_on_simplex() -> None:
    s, u, t = _levels(1000, 2)
    lam = semigroup_weight(s, u, t)
    assert ((lam >= 0) & (lam <= 1)).all()
    d_su = torch.rand(1000, 1, 6, dtype=torch.float64).softmax(-1)
    d_ut = torch.rand(1000, 1, 6, dtype=torch.float64).softmax(-1)
    target = semigroup_target(d_su, d_ut, lam)
    assert (target >= 0).all()
    assert torch.allclose(target.sum(-1), torch.ones(1000, 1, dtype=torch.float64))
    # boundary cases: u = s gives λ = 0 (all weight on δ_ut); t = 1 gives λ = 0 too
    assert torch.equal(semigroup_weight(s, s, t), torch.zeros_like(s))
    assert torch.equal(semigroup_weight(s, u, torch.ones_like(t)), torch.zeros_like(s))


def test_renoise_zero_is_identity_and_restores_noise_scale() -> None:
    z = torch.randn(2, 3, 4, dtype=torch.float64)
    delta = torch.rand(2, 3, 4, dtype=torch.float64)
    assert torch.equal(renoise(z, delta, 0.7, 0.7, 0.0, torch.randn_like(z)), z)
    # With a perfect δ = x: start at level γ, jump to γ̃, re-noise to γ'. The result is
    # (1-γ') ε_new + γ' x with ε_new ~ N(0, 1): check signal level and noise scale.
    g, gamma, gamma_next = 0.8, 0.3, 0.6
    gamma_jump = 1 - (1 - gamma_next) * (1 - g * g) ** 0.5
    n, vocab = 20_000, 8
    x = torch.zeros(n, 1, vocab, dtype=torch.float64)
    x[..., 0] = 1
    eps = torch.randn(n, 1, vocab, generator=gen(5), dtype=torch.float64)
    z_gamma = (1 - gamma) * eps + gamma * x
    out = renoise(flow_map(z_gamma, x, gamma, gamma_jump), x, gamma_jump, gamma_next, g,
                  torch.randn(n, 1, vocab, generator=gen(6), dtype=torch.float64))
    resid = (out - gamma_next * x) / (1 - gamma_next)
    assert abs(float(resid.mean())) < 0.01
    assert abs(float(resid.std()) - 1.0) < 0.01
