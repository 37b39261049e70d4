"""Gen PPL, NLL per byte, their bootstrap intervals and sample entropy on hand-checkable inputs (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flm.eval.metrics import (
    bootstrap_ci,
    gen_ppl,
    mean_entropy,
    nll_per_byte,
    nll_per_byte_ci,
    sample_entropy,
    sample_metrics,
)


def test_gen_ppl_is_token_weighted() -> None:
    assert gen_ppl(np.array([2.0, 4.0]), np.array([1, 3])) == pytest.approx(math.exp(6.0 / 4.0), rel=1e-15)
    # not the mean of per-sample perplexities
    assert gen_ppl(np.array([2.0, 4.0]), np.array([1, 3])) != pytest.approx((math.exp(2.0) + math.exp(4 / 3)) / 2)


def test_gen_ppl_without_tokens_raises() -> None:
    with pytest.raises(ValueError, match="no scored tokens"):
        gen_ppl(np.zeros(2), np.zeros(2, dtype=np.int64))


@pytest.mark.parametrize("k", [1, 2, 7, 64])
def test_entropy_of_uniform_histogram_is_log_k(k: int) -> None:
    ids = np.tile(np.arange(k) * 13 + 5, 3)
    assert sample_entropy(ids) == pytest.approx(math.log(k), abs=1e-15)


def test_entropy_known_histograms() -> None:
    assert sample_entropy([9] * 40) == 0.0
    three_to_one = [1, 1, 1, 2] * 5
    assert sample_entropy(three_to_one) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), abs=1e-15)
    assert sample_entropy([]) == 0.0
    assert mean_entropy([[1, 2], [3, 3]]) == pytest.approx(math.log(2) / 2, abs=1e-15)


def _scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    count = rng.integers(20, 60, size=n)
    return count * rng.normal(3.5, 0.5, size=n), count


def test_bootstrap_interval_contains_estimate_and_is_seeded() -> None:
    nll, count = _scores(200, 0)
    point = gen_ppl(nll, count)
    low, high = bootstrap_ci(nll, count, n_boot=500, seed=3)
    assert low < point < high
    assert (low, high) == bootstrap_ci(nll, count, n_boot=500, seed=3)
    assert (low, high) != bootstrap_ci(nll, count, n_boot=500, seed=4)


def test_bootstrap_interval_shrinks_with_more_samples() -> None:
    small = bootstrap_ci(*_scores(50, 1), n_boot=500)
    large = bootstrap_ci(*_scores(3200, 1), n_boot=500)
    # the width scales like 1/sqrt(N): 8x narrower for 64x the samples; allow bootstrap noise
    assert (large[1] - large[0]) < (small[1] - small[0]) / 4


def test_sample_metrics_fields() -> None:
    nll, count = _scores(30, 2)
    n_bytes = count * 4 + 1
    result = sample_metrics(nll, count, n_bytes, [[1, 2, 3, 4]] * 30, n_boot=200)
    assert result.gen_ppl == gen_ppl(nll, count)
    assert result.ci_low < result.gen_ppl < result.ci_high
    assert result.nll_per_byte == nll_per_byte(nll, n_bytes) == pytest.approx(nll.sum() / n_bytes.sum(), rel=1e-15)
    assert result.nll_per_byte_low < result.nll_per_byte < result.nll_per_byte_high
    assert result.entropy == pytest.approx(math.log(4), abs=1e-15)
    assert (result.n_samples, result.n_tokens, result.n_bytes) == (30, int(count.sum()), int(n_bytes.sum()))
    assert set(result.to_dict()) == {"gen_ppl", "ci_low", "ci_high", "nll_per_byte", "nll_per_byte_low",
                                     "nll_per_byte_high", "entropy", "n_samples", "n_tokens", "n_bytes"}


def test_nll_per_byte_is_byte_weighted() -> None:
    # two samples: 6 nats over 3 bytes and 2 nats over 5 bytes -> 8 / 8, not the mean of 2.0 and 0.4
    assert nll_per_byte(np.array([6.0, 2.0]), np.array([3, 5])) == 1.0
    # every text empty (samples that start with the separator): the worst score, not an error
    assert nll_per_byte(np.ones(2), np.zeros(2, dtype=np.int64)) == math.inf
    assert nll_per_byte_ci(np.ones(3), np.zeros(3, dtype=np.int64), n_boot=20) == (math.inf, math.inf)


def test_per_byte_interval_uses_the_gen_ppl_resamples() -> None:
    """Same seed, same resamples: with bytes == tokens the per-byte interval is the log of Gen PPL's.

    401 resamples put the 2.5 % and 97.5 % quantiles on resamples 10 and 390 exactly (no interpolation,
    which would not commute with exp)."""
    nll, count = _scores(100, 5)
    low, high = nll_per_byte_ci(nll, count, n_boot=401, seed=7)
    ppl_low, ppl_high = bootstrap_ci(nll, count, n_boot=401, seed=7)
    assert (math.exp(low), math.exp(high)) == pytest.approx((ppl_low, ppl_high), rel=1e-12)
    assert low < nll_per_byte(nll, count) < high
