"""Interpolant and projected noise (MATH.md §1, §3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flm.flow import dense_state, noise_factor, project_noise, projected_state, sample_projected_noise
from tests.conftest import gen


def test_dense_state_endpoints() -> None:
    x = torch.randint(0, 11, (3, 5))
    eps = torch.randn(3, 5, 11, dtype=torch.float64)
    assert torch.equal(dense_state(x, torch.zeros(3, dtype=torch.float64), eps), eps)
    one_hot = F.one_hot(x, 11).double()
    assert torch.equal(dense_state(x, torch.ones(3, dtype=torch.float64), eps), one_hot)


def test_projected_state_equals_dense_times_embedding() -> None:
    x = torch.randint(0, 50, (4, 7))
    emb = torch.randn(50, 8, dtype=torch.float64)
    eps = torch.randn(4, 7, 50, dtype=torch.float64)
    gamma = torch.rand(4, dtype=torch.float64)
    dense = dense_state(x, gamma, eps) @ emb
    proj = projected_state(x, gamma, project_noise(eps, emb), emb)
    assert torch.allclose(dense, proj, atol=1e-12)


@pytest.mark.parametrize(("vocab", "dim"), [(300, 6), (5, 12)])
def test_projected_noise_covariance_matches_gram(vocab: int, dim: int) -> None:
    emb = torch.randn(vocab, dim, dtype=torch.float64) / vocab**0.5
    factor = noise_factor(emb)
    assert factor.shape == (min(vocab, dim), dim)
    assert torch.allclose(factor.T @ factor, emb.T @ emb, atol=1e-12)
    h = sample_projected_noise(factor, (400, 500), gen(1)).reshape(-1, dim)
    cov = h.T @ h / h.shape[0]
    gram = emb.T @ emb
    # 200k draws: entries' standard error ~ sqrt(2/200k) * scale
    assert (cov - gram).abs().max() < 0.02 * gram.diagonal().max()
    assert h.mean(0).abs().max() < 0.01


def test_noise_factor_is_differentiable() -> None:
    emb = torch.randn(40, 4, dtype=torch.float64, requires_grad=True)
    factor = noise_factor(emb)
    (factor.T @ factor).trace().backward()
    # d tr(EᵀE)/dE = 2E
    assert torch.allclose(emb.grad, 2 * emb.detach(), atol=1e-10)
