"""The evaluate stage's library side: sample, decode, judge, and one row of metrics per model and NFE.

Interface (no dependence on how a model is loaded or sampled):

* an :class:`Entry` names a model, its sampler kind, the NFE (sampling steps) and the sampler options,
  and carries ``sample(n, steps, seed) -> list[list[int]]``: ``n`` sequences of the model's token ids;
* ``decode(ids) -> str`` turns one sequence into text (the data tokenizer's decoder);
* a :class:`flm.eval.judge.Judge` scores the texts under the protocol of :class:`EvalSettings`.

:func:`evaluate` returns one row (a plain dict) per entry, :func:`reference_row` the same row for
real held-out text: ``n_samples`` blocks of the same length ``L`` drawn from the validation split
(:class:`flm.data.blocks.TokenBlocks`, or any sequence of ``(L,)`` arrays). A row holds

    model, kind, nfe, variant, options, gen_ppl, ci_low, ci_high, nll_per_byte, nll_per_byte_low,
    nll_per_byte_high, entropy, n_samples, n_tokens, n_bytes, seconds_per_sequence, tokens_per_second,
    samples

``gen_ppl`` and ``nll_per_byte`` (the judge's NLL per UTF-8 byte of the scored text, from the same
judge pass) with their bootstrap intervals and ``entropy`` (mean over samples, nats, of each sample's
own token histogram in the model's vocabulary) as in :mod:`flm.eval.metrics`; ``n_tokens`` counts
judge tokens, ``n_bytes`` the bytes they cover; ``seconds_per_sequence`` and ``tokens_per_second``
(model tokens) time the sampling only (``None`` for the reference); ``samples`` holds the first
``n_show`` decoded texts. Sampling runs in chunks of ``batch_size``; chunk ``k`` gets the seed
``SeedSequence([seed, k])``, so every row except its two timing fields is a function of the seed (for
deterministic samplers).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from flm.eval.judge import Judge
from flm.eval.metrics import sample_metrics

__all__ = ["Entry", "EvalSettings", "evaluate", "evaluate_entry", "reference_row"]

Sample = Callable[[int, int, int], Sequence[Sequence[int]]]
"""``sample(n, steps, seed)``: ``n`` sequences of token ids drawn with ``steps`` network evaluations."""


@dataclass(frozen=True)
class Entry:
    """One evaluated configuration: ``model`` (``flm``, ``fmlm``, ``mdlm``, ``ar``), ``kind`` (the
    sampler), ``nfe`` (the ``steps`` passed to ``sample``), ``options`` (sampler options, recorded)."""

    model: str
    kind: str
    nfe: int
    sample: Sample
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def variant(self) -> str:
        """``kind`` and the options, e.g. ``euler`` or ``euler temperature=0.9``: one curve per variant."""
        return " ".join([self.kind, *(f"{k}={v}" for k, v in sorted(self.options.items()))])


@dataclass(frozen=True)
class EvalSettings:
    """``n_samples`` sequences per entry, drawn ``batch_size`` at a time; ``n_boot`` bootstrap resamples
    for a ``level`` interval; ``n_show`` texts kept per row; ``progress``: tqdm bars; ``protocol`` and
    ``max_length`` (``L``, ``reference`` only): how the judge scores the texts (:meth:`Judge.score`)."""

    n_samples: int = 1024
    seed: int = 0
    batch_size: int = 64
    n_boot: int = 1000
    level: float = 0.95
    n_show: int = 3
    progress: bool = True
    protocol: str = "document"
    max_length: int | None = None


def _chunk_seed(seed: int, k: int) -> int:
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


def _row(
    head: dict[str, Any],
    ids: list[list[int]],
    texts: list[str],
    nll: np.ndarray,
    count: np.ndarray,
    n_bytes: np.ndarray,
    seconds: float | None,
    settings: EvalSettings,
) -> dict[str, Any]:
    """``head`` + metrics + timing (``None`` when not timed) + the first texts."""
    metrics = sample_metrics(nll, count, n_bytes, ids, settings.n_boot, settings.level, settings.seed)
    n_model_tokens = sum(len(s) for s in ids)
    return {
        **head,
        **metrics.to_dict(),
        "seconds_per_sequence": seconds / len(ids) if seconds is not None else None,
        "tokens_per_second": n_model_tokens / seconds if seconds else None,
        "samples": texts[: settings.n_show],
    }


def evaluate_entry(
    entry: Entry, decode: Callable[[list[int]], str], judge: Judge, settings: EvalSettings
) -> dict[str, Any]:
    """The row of one entry: sample ``n_samples`` sequences in chunks, decode, judge (module docstring)."""
    ids: list[list[int]] = []
    texts: list[str] = []
    nll, count, n_bytes = [], [], []
    seconds = 0.0
    chunks = range(0, settings.n_samples, settings.batch_size)
    label = f"{entry.model} {entry.variant} nfe={entry.nfe}"
    for k, start in enumerate(tqdm(chunks, desc=label, unit="batch", disable=not settings.progress)):
        n = min(settings.batch_size, settings.n_samples - start)
        tic = time.perf_counter()
        chunk = [[int(t) for t in s] for s in entry.sample(n, entry.nfe, _chunk_seed(settings.seed, k))]
        seconds += time.perf_counter() - tic
        if len(chunk) != n:
            raise ValueError(f"{label}: sample(n={n}) returned {len(chunk)} sequences")
        chunk_texts = [decode(s) for s in chunk]
        chunk_nll, chunk_count, chunk_bytes = judge.score(chunk_texts, settings.protocol, settings.max_length)
        ids += chunk
        texts += chunk_texts
        nll.append(chunk_nll)
        count.append(chunk_count)
        n_bytes.append(chunk_bytes)
    head = {
        "model": entry.model,
        "kind": entry.kind,
        "nfe": entry.nfe,
        "variant": entry.variant,
        "options": dict(entry.options),
    }
    return _row(head, ids, texts, *map(np.concatenate, (nll, count, n_bytes)), seconds, settings)


def evaluate(
    entries: Sequence[Entry], decode: Callable[[list[int]], str], judge: Judge, settings: EvalSettings
) -> list[dict[str, Any]]:
    """One row per entry, in order (module docstring for the fields)."""
    return [evaluate_entry(entry, decode, judge, settings) for entry in entries]


def reference_row(
    blocks: Sequence[np.ndarray], decode: Callable[[list[int]], str], judge: Judge, settings: EvalSettings
) -> dict[str, Any]:
    """The row of real held-out text: ``min(n_samples, len(blocks))`` blocks drawn without replacement
    by ``default_rng(seed)``, decoded and judged like samples (``model="data"``, ``nfe=0``, timing ``None``)."""
    n = min(settings.n_samples, len(blocks))
    picks = np.sort(np.random.default_rng(settings.seed).choice(len(blocks), size=n, replace=False))
    ids = [[int(t) for t in blocks[int(i)]] for i in picks]
    texts = [decode(s) for s in ids]
    nll, count, n_bytes = [], [], []
    for start in tqdm(range(0, n, settings.batch_size), desc="held-out text", disable=not settings.progress):
        chunk_texts = texts[start : start + settings.batch_size]
        chunk_nll, chunk_count, chunk_bytes = judge.score(chunk_texts, settings.protocol, settings.max_length)
        nll.append(chunk_nll)
        count.append(chunk_count)
        n_bytes.append(chunk_bytes)
    head = {"model": "data", "kind": "reference", "nfe": 0, "variant": "held-out", "options": {}}
    return _row(head, ids, texts, *map(np.concatenate, (nll, count, n_bytes)), None, settings)
