"""Generative perplexity, its bootstrap interval, and the entropy of samples (MATH.md §4).

All inputs are per sample: ``nll`` the summed judge NLL in nats and ``count`` the scored tokens
(from :meth:`flm.eval.judge.Judge.nll`), ``n_bytes`` the UTF-8 bytes of the text those tokens cover
(:meth:`flm.eval.judge.Judge.score`), ``ids`` the sample's own token ids (the generating
model's vocabulary, not the judge's). Everything is computed in float64.

Two scores come from the same judge pass: Gen PPL ``exp(Σ nll / Σ count)`` depends on how the texts
re-tokenize under the judge; NLL per byte ``Σ nll / Σ n_bytes`` does not (MATH.md §4), and is the one
to compare models whose samples tokenize differently (character salad splits into many short judge
tokens, each only moderately unlikely, and can score a better Gen PPL than word-like text).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "SampleMetrics",
    "bootstrap_ci",
    "gen_ppl",
    "mean_entropy",
    "nll_per_byte",
    "nll_per_byte_ci",
    "sample_entropy",
    "sample_metrics",
]


def gen_ppl(nll: np.ndarray, count: np.ndarray) -> float:
    """Token-weighted generative perplexity ``exp(Σ_i nll_i / Σ_i count_i)``; ``nll``, ``count``: ``(N,)``."""
    total = float(np.sum(count))
    if total <= 0:
        raise ValueError("gen_ppl: no scored tokens")
    return float(np.exp(np.sum(np.asarray(nll, dtype=np.float64)) / total))


def nll_per_byte(nll: np.ndarray, n_bytes: np.ndarray) -> float:
    """Judge NLL per UTF-8 byte of the scored text, ``Σ_i nll_i / Σ_i n_bytes_i`` (nats/byte); ``(N,)`` each.

    ``inf`` when no byte was scored (every text empty: a model whose samples all start with the
    document separator), the worst score rather than an error at the end of an evaluation.
    """
    total = float(np.sum(n_bytes))
    return float(np.sum(np.asarray(nll, dtype=np.float64)) / total) if total > 0 else float("inf")


def _resampled_ratios(num: np.ndarray, den: np.ndarray, n_boot: int, seed: int, empty: float = 1.0) -> np.ndarray:
    """``(n_boot,)`` ratios ``Σ num[idx_b] / Σ den[idx_b]`` over resamples ``idx_b`` of the ``N`` samples
    (``(N,)`` indices with replacement, drawn by ``numpy.random.default_rng(seed)``); a resample whose
    ``Σ den`` is 0 gives ``Σ num / empty``."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(num), size=(n_boot, len(num)))
    total = den[idx].sum(axis=1)
    with np.errstate(divide="ignore"):
        return num[idx].sum(axis=1) / np.where(total > 0, total, empty)


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The ``(1∓level)/2`` quantiles; interpolated, except across ``inf`` (then the nearest order statistic)."""
    method = "linear" if np.all(np.isfinite(values)) else "inverted_cdf"
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2], method=method)
    return float(low), float(high)


def bootstrap_ci(
    nll: np.ndarray, count: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`gen_ppl`, resampling whole samples with replacement.

    ``n_boot`` resamples ``b`` of the ``N`` samples give ``ppl_b = exp(Σ nll[idx_b] / Σ count[idx_b])``
    (``idx_b``: ``(N,)`` indices drawn by ``numpy.random.default_rng(seed)``); the interval is their
    ``(1-level)/2`` and ``(1+level)/2`` quantiles.
    """
    return _interval(np.exp(_resampled_ratios(nll, count, n_boot, seed)), level)


def nll_per_byte_ci(
    nll: np.ndarray, n_bytes: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`nll_per_byte`: the same resamples as :func:`bootstrap_ci`
    for the same ``seed`` (``Σ nll[idx_b] / Σ n_bytes[idx_b]``, quantiles ``(1∓level)/2``; a resample of
    empty texts only is ``inf``)."""
    return _interval(_resampled_ratios(nll, n_bytes, n_boot, seed, empty=0.0), level)


def sample_entropy(ids: Sequence[int] | np.ndarray) -> float:
    """Entropy (nats) of a sample's own token histogram: ``H = -Σ_v p_v log p_v``, ``p_v = n_v / L``.

    ``ids``: ``(L,)``; ``H = 0`` for a constant sequence, ``log k`` for ``k`` tokens equally often.
    """
    _, counts = np.unique(np.asarray(ids), return_counts=True)
    if counts.size == 0:
        return 0.0
    p = counts.astype(np.float64) / counts.sum()
    return float(-np.sum(p * np.log(p)))


def mean_entropy(samples: Sequence[Sequence[int]]) -> float:
    """Mean of :func:`sample_entropy` over samples (the number reported beside Gen PPL)."""
    return float(np.mean([sample_entropy(s) for s in samples])) if len(samples) else 0.0


@dataclass(frozen=True)
class SampleMetrics:
    """Gen PPL and NLL per byte (nats) with their bootstrap intervals, mean sample entropy (nats),
    samples, scored judge tokens and scored bytes."""

    gen_ppl: float
    ci_low: float
    ci_high: float
    nll_per_byte: float
    nll_per_byte_low: float
    nll_per_byte_high: float
    entropy: float
    n_samples: int
    n_tokens: int
    n_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """Plain fields, for JSON rows."""
        return asdict(self)


def sample_metrics(
    nll: np.ndarray,
    count: np.ndarray,
    n_bytes: np.ndarray,
    samples: Sequence[Sequence[int]],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> SampleMetrics:
    """All metrics of one set of samples: judge scores ``nll``, ``count``, ``n_bytes`` ``(N,)`` and token ids
    ``samples``."""
    low, high = bootstrap_ci(nll, count, n_boot, level, seed)
    byte_low, byte_high = nll_per_byte_ci(nll, n_bytes, n_boot, level, seed)
    return SampleMetrics(
        gen_ppl(nll, count), low, high, nll_per_byte(nll, n_bytes), byte_low, byte_high,
        mean_entropy(samples), len(nll), int(np.sum(count)), int(np.sum(n_bytes)),
    )
