"""The scoring protocol on a judge whose probabilities are known: a fixed bigram table."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from flm.eval.judge import Judge, JudgeError, judge_sequence, load_judge

V, EOS, BOS = 6, 0, 5


def _bigram() -> torch.Tensor:
    return torch.log_softmax(torch.randn(V, V, generator=torch.Generator().manual_seed(1), dtype=torch.float64), -1)


def _judge(bos_id: int | None = BOS, n_ctx: int = 64, max_batch_tokens: int = 4096) -> Judge:
    table = _bigram()

    def encode(texts: list[str]) -> list[list[int]]:  # "1 2 0 3" -> [1, 2, 0, 3]
        return [[int(tok) for tok in text.split()] for text in texts]

    return Judge("bigram", lambda ids: table[ids], encode, bos_id, EOS, n_ctx, max_batch_tokens=max_batch_tokens)


def test_judge_sequence_rules() -> None:
    assert judge_sequence([3, 4], BOS, EOS, 10) == [BOS, 3, 4, EOS]
    assert judge_sequence([3, EOS, 4, EOS], BOS, EOS, 10) == [BOS, 3, EOS]
    assert judge_sequence([3, 4], None, EOS, 10) == [3, 4, EOS]
    assert judge_sequence([1, 2, 3, 4, 1, 2], BOS, EOS, 4) == [BOS, 1, 2, 3]
    assert judge_sequence([], BOS, EOS, 10) == [BOS, EOS]


def test_nll_matches_bigram_by_hand() -> None:
    table = _bigram()
    nll, count = _judge().nll(["1 2 3", "4 0 2 2", ""])
    seqs = [[BOS, 1, 2, 3, EOS], [BOS, 4, EOS], [BOS, EOS]]
    expected = [-sum(float(table[a, b]) for a, b in itertools.pairwise(s)) for s in seqs]
    np.testing.assert_allclose(nll, expected, rtol=1e-12)
    assert count.tolist() == [4, 2, 1]


def test_without_bos_the_first_token_is_context() -> None:
    table = _bigram()
    nll, count = _judge(bos_id=None).nll(["1 2"])
    assert count.tolist() == [2]
    assert nll[0] == pytest.approx(-float(table[1, 2] + table[2, EOS]), rel=1e-12)


def test_batching_and_padding_do_not_change_scores() -> None:
    rng = np.random.default_rng(0)
    texts = [" ".join(str(t) for t in rng.integers(1, V, size=n)) for n in (1, 9, 4, 17, 2, 30)]
    one_batch = _judge().nll(texts)
    many_batches = _judge(max_batch_tokens=20).nll(texts)
    alone = [_judge().nll([t]) for t in texts]
    for got in (many_batches, (np.concatenate([a[0] for a in alone]), np.concatenate([a[1] for a in alone]))):
        np.testing.assert_allclose(got[0], one_batch[0], rtol=1e-12)
        np.testing.assert_array_equal(got[1], one_batch[1])


def test_uniform_judge_scores_log_v_per_token() -> None:
    judge = Judge("uniform", lambda ids: torch.zeros(*ids.shape, 7), lambda ts: [[1] * len(t) for t in ts], None, 0, 5)
    nll, count = judge.nll(["abc", "abcdefgh"])
    assert count.tolist() == [3, 4]  # truncated to n_ctx = 5 tokens: 4 scored
    np.testing.assert_allclose(nll, np.array([3, 4]) * math.log(7), rtol=1e-6)


def test_unknown_judge_lists_known() -> None:
    with pytest.raises(JudgeError, match=r"unknown judge 'gpt5'; known: smollm2, hf:NAME"):
        load_judge("gpt5")
