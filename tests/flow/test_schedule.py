"""τ ↔ γ reparameterization (MATH.md §1): round trips, Monte Carlo, reference values, compile."""

from __future__ import annotations

import math

import pytest
import torch

from flm.flow import TimeSchedule, argmax_probability

VOCABS = [2, 64, 8192, 50258]


@pytest.fixture(scope="module", params=VOCABS)
def schedule(request: pytest.FixtureRequest) -> TimeSchedule:
    return TimeSchedule(request.param)


def test_round_trip_dense_grid_float64(schedule: TimeSchedule) -> None:
    gamma = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    assert (schedule.gamma(schedule.tau(gamma)) - gamma).abs().max() < 1e-6
    tau = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    assert (schedule.tau(schedule.gamma(tau)) - tau).abs().max() < 1e-6


def test_endpoints_exact_and_monotone(schedule: TimeSchedule) -> None:
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert schedule.gamma(ends).tolist() == [0.0, 1.0]
    assert schedule.tau(ends).tolist() == [0.0, 1.0]
    assert (torch.diff(schedule.tau_table) > 0).all()
    assert (torch.diff(schedule.gamma_table) > 0).all()


def _mc_argmax_probability(gamma: float, vocab: int, n: int, seed: int) -> float:
    """Literal Monte Carlo of P[argmax z_γ = x]: draw the V-dim state and take its argmax."""
    gen = torch.Generator().manual_seed(seed)
    hits, chunk = 0, max(1, 2_000_000 // vocab)
    done = 0
    while done < n:
        m = min(chunk, n - done)
        z = (1 - gamma) * torch.randn(m, vocab, generator=gen)
        z[:, 0] += gamma  # the clean token is index 0 (the law is symmetric in the index)
        hits += int((z.argmax(-1) == 0).sum())
        done += m
    return hits / n


@pytest.mark.parametrize("vocab", VOCABS)
def test_tau_matches_monte_carlo(vocab: int) -> None:
    sched = TimeSchedule(vocab)
    n = 20_000 if vocab <= 8192 else 6_000
    for i, tau in enumerate((0.25, 0.5, 0.75)):
        gamma = float(sched.gamma(torch.tensor(tau, dtype=torch.float64)))
        q_mc = _mc_argmax_probability(gamma, vocab, n, seed=i)
        q = (1 + (vocab - 1) * tau) / vocab  # τ = α(γ) = (Vq - 1)/(V - 1)
        se = math.sqrt(q * (1 - q) / n)
        assert abs(q_mc - q) < 3 * se, (vocab, tau, gamma, q_mc, q, se)


def test_quadrature_closed_form_v2() -> None:
    # V = 2: q = P[γ + (1-γ)ε_c > (1-γ)ε_1] = Φ(γ / ((1-γ)√2)).
    gamma = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    exact = 0.5 * torch.special.erfc(-gamma / ((1 - gamma) * math.sqrt(2)) / math.sqrt(2))
    assert (argmax_probability(gamma, 2) - exact).abs().max() < 1e-12


def test_reference_values_gpt2_vocab() -> None:
    sched = TimeSchedule(50258)
    g = sched.gamma(torch.tensor([0.25, 0.5], dtype=torch.float64))
    assert abs(float(g[0]) - 0.779) < 1e-3
    assert abs(float(g[1]) - 0.809) < 1e-3


def test_lookup_compiles_fullgraph() -> None:
    sched = TimeSchedule(64)
    compiled = torch.compile(sched.gamma, fullgraph=True, backend="aot_eager")
    tau = torch.rand(33)
    assert torch.equal(compiled(tau), sched.gamma(tau))
    compiled_tau = torch.compile(sched.tau, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled_tau(tau), sched.tau(tau))


def test_tables_stay_float64_under_dtype_casts() -> None:
    sched = TimeSchedule(64).to(torch.bfloat16)
    assert sched.gamma_table.dtype == torch.float64
    out = sched.gamma(torch.tensor([0.5], dtype=torch.float32))
    assert out.dtype == torch.float32


def test_bad_vocab_size() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        TimeSchedule(1)
