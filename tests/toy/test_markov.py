"""The exact Markov-chain denoiser (MATH.md §5) against brute force, endpoints and the floor."""

from __future__ import annotations

import itertools

import torch

from flm.flow import dense_state
from flm.toy.markov import MarkovSource, histogram_entropy
from tests.conftest import gen


def test_posterior_matches_brute_force_enumeration() -> None:
    src = MarkovSource.sparse(3, 2, uniform_mix=0.1, seed=1)
    length, gamma = 4, 0.4
    z = torch.randn(2, length, 3, generator=gen(0), dtype=torch.float64)
    seqs = torch.tensor(list(itertools.product(range(3), repeat=length)))
    log_prior = -src.nll(seqs)  # (81,)
    for b in range(2):
        loglik = (gamma * z[b] / (1 - gamma) ** 2)[torch.arange(length), seqs].sum(-1)
        w = torch.softmax(log_prior + loglik, 0)
        brute = torch.zeros(length, 3, dtype=torch.float64)
        for pos in range(length):
            brute[pos].index_add_(0, seqs[:, pos], w)
        assert torch.allclose(src.posterior(z[b : b + 1], gamma)[0], brute, atol=1e-12)


def test_posterior_endpoints() -> None:
    src = MarkovSource.sparse(8, 3, seed=2)
    x = src.sample(4, 6, gen(1))
    eps = torch.randn(4, 6, 8, generator=gen(2), dtype=torch.float64)
    clean = src.posterior(dense_state(x, torch.full((4,), 1.0, dtype=torch.float64), eps), 1.0)
    assert torch.equal(clean.argmax(-1), x)
    prior = src.posterior(eps, 0.0)  # no signal: the stationary marginal at every position
    assert torch.allclose(prior, src.initial.expand(4, 6, 8), atol=1e-12)


def test_source_is_stationary_and_scores_its_samples() -> None:
    src = MarkovSource.sparse(32, 4, seed=0)
    assert torch.allclose(src.initial @ src.transition, src.initial, atol=1e-12)
    assert torch.allclose(src.transition.sum(-1), torch.ones(32, dtype=torch.float64))
    x = src.sample(4096, 32, gen(3))
    nll = float((src.nll(x) / 32).mean())
    assert abs(nll - src.entropy_per_token(32)) < 0.02
    assert 1.0 < src.entropy_rate < 1.4


def test_bayes_floor_of_the_reference_chain() -> None:
    floor, se = MarkovSource.sparse(32, 4, seed=0).bayes_floor(32, n=4096, seed=0)
    assert abs(floor - 0.80) < 0.05 and se < 0.02


def test_histogram_entropy_known_values() -> None:
    x = torch.tensor([[0, 0, 0, 0], [0, 1, 2, 3], [0, 0, 1, 1]])
    ent = histogram_entropy(x, 4)
    assert torch.allclose(ent, torch.tensor([0.0, torch.log(torch.tensor(4.0)), torch.log(torch.tensor(2.0))],
                                            dtype=torch.float64))
