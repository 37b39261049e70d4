"""Generative perplexity, its bootstrap interval, and the entropy of samples (MATH.md §4).

All inputs are per sample: ``nll`` the summed judge NLL in nats and ``count`` the scored tokens
(from :meth:`flm.eval.judge.Judge.nll`), ``ids`` the sample's own token ids (the generating model's
vocabulary, not the judge's). Everything is computed in float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["SampleMetrics", "bootstrap_ci", "gen_ppl", "mean_entropy", "sample_entropy", "sample_metrics"]


def gen_ppl(nll: np.ndarray, count: np.ndarray) -> float:
    """Token-weighted generative perplexity ``exp(Σ_i nll_i / Σ_i count_i)``; ``nll``, ``count``: ``(N,)``."""
    total = float(np.sum(count))
    if total <= 0:
        raise ValueError("gen_ppl: no scored tokens")
    return float(np.exp(np.sum(np.asarray(nll, dtype=np.float64)) / total))


def bootstrap_ci(
    nll: np.ndarray, count: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`gen_ppl`, resampling whole samples with replacement.

    ``n_boot`` resamples ``b`` of the ``N`` samples give ``ppl_b = exp(Σ nll[idx_b] / Σ count[idx_b])``
    (``idx_b``: ``(N,)`` indices drawn by ``numpy.random.default_rng(seed)``); the interval is their
    ``(1-level)/2`` and ``(1+level)/2`` quantiles.
    """
    nll, count = np.asarray(nll, dtype=np.float64), np.asarray(count, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(nll), size=(n_boot, len(nll)))
    ppl = np.exp(nll[idx].sum(axis=1) / np.maximum(count[idx].sum(axis=1), 1.0))
    low, high = np.quantile(ppl, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


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
    """Gen PPL with its bootstrap interval, mean sample entropy (nats), samples and scored judge tokens."""

    gen_ppl: float
    ci_low: float
    ci_high: float
    entropy: float
    n_samples: int
    n_tokens: int

    def to_dict(self) -> dict[str, Any]:
        """Plain fields, for JSON rows."""
        return asdict(self)


def sample_metrics(
    nll: np.ndarray,
    count: np.ndarray,
    samples: Sequence[Sequence[int]],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> SampleMetrics:
    """All metrics of one set of samples: judge scores ``nll``, ``count`` ``(N,)`` and token ids ``samples``."""
    low, high = bootstrap_ci(nll, count, n_boot, level, seed)
    return SampleMetrics(gen_ppl(nll, count), low, high, mean_entropy(samples), len(nll), int(np.sum(count)))
