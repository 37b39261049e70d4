"""NLL per byte: fixed texts against a hand computation, truncation, and salad scoring worse than text."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from flm.data.packaged import iter_packaged
from flm.eval.evaluate import Entry, EvalSettings, evaluate_entry
from flm.eval.judge import Judge
from flm.eval.metrics import nll_per_byte
from tests.eval.conftest import LoadedJudge

TEXTS = ["Café au lait.", "The company said profits rose.", "naïve"]


def byte_judge(n_ctx: int = 1024) -> Judge:
    """A judge over UTF-8 bytes (ids 0..255, EOS 256, no BOS) whose every prediction is uniform over 257 ids."""

    def logits(ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*ids.shape, 257)

    def encode(texts: list[str]) -> list[list[int]]:
        return [list(text.encode("utf-8")) for text in texts]

    return Judge("bytes", logits, encode, None, 256, n_ctx)


def test_fixed_texts_against_a_hand_computation() -> None:
    """No BOS: a text of n bytes scores its bytes 2..n plus the EOS, n tokens of log 257 nats each, over the
    n bytes of the whole decoded text (MATH.md §4)."""
    n = [len(t.encode("utf-8")) for t in TEXTS]
    assert n == [14, 30, 6]  # é and ï take two bytes each
    judge = byte_judge()
    assert judge.scored_bytes(TEXTS).tolist() == n
    ids = {i: text for i, text in enumerate(TEXTS)}
    entry = Entry("fixed", "table", 1, lambda count, steps, seed: [[i] for i in range(count)])
    row = evaluate_entry(entry, lambda s: ids[s[0]], judge, EvalSettings(n_samples=3, n_boot=50, progress=False))
    expected = sum(n) * math.log(257) / sum(n)
    assert row["nll_per_byte"] == pytest.approx(expected, rel=1e-7)  # log-probabilities in float32
    assert row["n_bytes"] == sum(n) and row["n_tokens"] == sum(n)
    assert row["gen_ppl"] == pytest.approx(257.0, rel=1e-6)


def test_truncated_texts_count_only_the_bytes_scored() -> None:
    """``n_ctx = 4``: the judge reads four byte tokens; the bytes counted are the longest whole-character prefix
    they cover (a text that fits is counted whole, its appended EOS covers no byte)."""
    judge = byte_judge(n_ctx=4)
    # "Café" is C a f + 2 bytes of é: 4 tokens fit, but the 4th is half of é: the prefix "Caf" (3 bytes) is scored
    assert judge.scored_bytes(["Café au lait.", "abcdefgh", "ab"]).tolist() == [3, 4, 2]


def test_character_salad_scores_worse_per_byte_than_text(smollm2: LoadedJudge) -> None:
    """Same characters, same length: real text vs its characters shuffled, under the offline judge."""
    body = next(iter_packaged("bbc_news")).split("\n\n", 1)[1].replace("\n\n", " ")
    texts = [body[:128], body[128:256], body[256:384]]
    rng = random.Random(0)
    salad = ["".join(rng.sample(t, len(t))) for t in texts]
    assert [sorted(s) for s in salad] == [sorted(t) for t in texts]
    judge = smollm2.judge
    real_nll, _ = judge.nll(texts)
    salad_nll, _ = judge.nll(salad)
    real = nll_per_byte(real_nll, judge.scored_bytes(texts))
    shuffled = nll_per_byte(salad_nll, judge.scored_bytes(salad))
    assert real < 1.5  # measured below 1 nat per byte on BBC text
    assert shuffled > 2 * real, (real, shuffled)
    np.testing.assert_array_equal(judge.scored_bytes(texts), [len(t.encode("utf-8")) for t in texts])
