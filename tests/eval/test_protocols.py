"""The two Gen PPL protocols (MATH.md §4): ``document`` and the reference code's, by hand.

A bigram judge (exact probabilities) checks the reference's counting rules; the real offline judge
(SmolLM2) scores an LM1B-like sample, ``[SEP]``/``[CLS]`` inside, against a direct forward pass; and
scoring a batch of texts of different lengths equals scoring them one at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from flm.eval.judge import Judge, JudgeError, reference_chunks, reference_sequence
from flm.eval.stage import separator_decoder, whole_decoder
from tests.eval.conftest import LoadedJudge

from .helpers import bert_like_tokenizer
from .test_judge_protocol import BOS, EOS, _bigram, _judge
from .test_per_byte import byte_judge


def _by_hand(table: torch.Tensor, seq: list[int], counted: list[int]) -> float:
    """``Σ -log p(s_j | s_{j-1})`` over the positions ``j`` in ``counted``."""
    return -sum(float(table[seq[j - 1], seq[j]]) for j in counted)


def test_reference_rows_and_counted_positions() -> None:
    assert reference_sequence([1, 2, 3], EOS, 5) == [1, 2, 3, EOS]  # shorter than L: the first padding EOS
    assert reference_sequence([1, 2, 3, 4, 1, 2], EOS, 4) == [1, 2, 3, 4]  # truncated to L, no EOS
    assert reference_sequence([], EOS, 4) == [EOS]
    # text after the first EOS still counts, later EOS do not; the first token is context
    assert reference_chunks([1, 2, EOS, 3, EOS, 4], EOS, 1024) == [([1, 2, EOS, 3, EOS, 4], [1, 1, 1, 0, 1])]
    assert reference_chunks([EOS, 2, EOS, 3], EOS, 1024) == [([EOS, 2, EOS, 3], [1, 0, 1])]  # the first EOS is context
    # chunks are read on their own: each starts with a context token and has its own first EOS
    assert reference_chunks([1, 2, EOS, 3, EOS, 4, 5], EOS, 3) == [
        ([1, 2, EOS], [1, 1]), ([3, EOS, 4], [1, 1]), ([5], [])]


def test_reference_nll_matches_bigram_by_hand() -> None:
    table = _bigram()
    texts = ["1 2 0 3 0 4", "3 4", ""]
    nll, count = _judge().nll(texts, "reference", max_length=5)
    rows = [[1, 2, 0, 3, 0], [3, 4, EOS], [EOS]]  # no BOS; L = 5; the short row ends with one EOS
    expected = [_by_hand(table, rows[0], [1, 2, 3]), _by_hand(table, rows[1], [1, 2]), 0.0]
    np.testing.assert_allclose(nll, expected, rtol=1e-12)
    assert count.tolist() == [3, 2, 0]
    # the document protocol reads the same texts from BOS and stops at the first EOS
    doc_nll, doc_count = _judge().nll(texts)
    assert doc_count.tolist() == [3, 3, 1]
    assert doc_nll[0] == pytest.approx(_by_hand(table, [BOS, 1, 2, 0], [1, 2, 3]), rel=1e-12)


def test_reference_chunks_of_a_short_context_judge() -> None:
    """``n_ctx = 3``: the row of L = 7 tokens is read as chunks of 3, 3 and 1 (MATH.md §4: chunks of at most
    the judge's context); the first token of each chunk is context."""
    table = _bigram()
    nll, count = _judge(n_ctx=3).nll(["1 2 3 4 1 2 3"], "reference", max_length=7)
    assert count.tolist() == [4]
    expected = _by_hand(table, [1, 2, 3], [1, 2]) + _by_hand(table, [4, 1, 2], [1, 2])
    assert nll[0] == pytest.approx(expected, rel=1e-12)


def test_reference_bytes_leave_out_uncounted_tokens() -> None:
    """Byte judge (one token per UTF-8 byte, uniform): the first byte is context and covers no scored byte."""
    judge = byte_judge()
    text = "Café au lait."  # 14 bytes
    nll, count, n_bytes = judge.score([text, "Café au lait."], "reference", max_length=1000)
    assert count.tolist() == [14, 14] and n_bytes.tolist() == [13, 13]  # bytes 2..14 and the EOS; 13 bytes
    np.testing.assert_allclose(nll, 14 * math.log(257), rtol=1e-6)
    # L = 5 keeps C a f and the two bytes of é: 4 scored tokens over the bytes "afé"
    assert judge.score([text], "reference", max_length=5)[1:] == ([4], [4])
    # the bigram judge's text "1 2 0 3 0 4": tokens cover "1 ", "2 ", "0 ", ...; counted are 2, 0, 3 (6 bytes)
    assert _judge().scored_bytes(["1 2 0 3 0 4"], "reference", max_length=5).tolist() == [6]
    assert _judge().scored_bytes(["1 2 0 3 0 4"]).tolist() == [4]  # document: "1 2 " up to the EOS


def test_protocol_arguments_are_checked() -> None:
    judge = _judge()
    with pytest.raises(JudgeError, match=r"unknown protocol 'paper'; known: document, reference"):
        judge.score(["1"], "paper")
    with pytest.raises(JudgeError, match="max_length"):
        judge.score(["1"], "reference")
    with pytest.raises(JudgeError, match="max_length"):
        judge.score(["1"], "document", max_length=4)


# ---- the real judge -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lm1b(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """A BERT-like data tokenizer and a packed sample that starts mid-stream: ``s1 [SEP] [CLS] s2 [SEP] [CLS] the``."""
    from flm.data.tokenizer import load_tokenizer

    folder = bert_like_tokenizer(tmp_path_factory.mktemp("lm1b"))
    tokenizer = load_tokenizer(folder)
    first, second = tokenizer.encode_batch(["The company said profits rose sharply.", "Shares fell in early trading."])
    cls, sep = tokenizer.info.bos_id, tokenizer.info.eos_id
    return folder, [*first, sep, cls, *second, sep, cls, *tokenizer.encode_batch(["the"])[0]]


@pytest.fixture(scope="module")
def direct(smollm2: LoadedJudge) -> Callable[[list[int], list[int]], float]:
    """``direct(ids, counted)``: ``Σ_{j in counted} -log p(ids_j | ids_{<j})`` from one plain forward pass of
    SmolLM2 loaded by ``transformers`` itself (log-softmax in float64)."""
    from transformers import AutoModelForCausalLM

    from flm.eval.judge import SMOLLM2_CACHE

    model = AutoModelForCausalLM.from_pretrained(smollm2.state_dir / "cache" / "judges" / SMOLLM2_CACHE,
                                                 dtype=torch.float32).eval()
    return lambda ids, counted: _direct(model, ids, counted)


def _direct(model: torch.nn.Module, ids: list[int], counted: list[int]) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    return -sum(float(logp[j - 1, ids[j]]) for j in counted)


def test_lm1b_sample_under_both_protocols(smollm2: LoadedJudge, direct: Callable, lm1b: tuple[Path, list[int]]
                                          ) -> None:
    """``reference`` scores the whole sample, its ``[SEP]``/``[CLS]`` strings included, up to L judge tokens, the
    first as context; ``document`` scores the text before the first separator, from BOS to EOS."""
    from transformers import AutoTokenizer

    from flm.eval.judge import SMOLLM2_CACHE

    folder, sample = lm1b
    hf = AutoTokenizer.from_pretrained(smollm2.state_dir / "cache" / "judges" / SMOLLM2_CACHE)
    judge = smollm2.judge

    whole = whole_decoder(folder)(sample)
    assert whole == "the company said profits rose sharply. [SEP] [CLS] shares fell in early trading. [SEP] [CLS] the"
    encoded = hf(whole, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    assert len(ids) == 30 and 0 not in ids  # SmolLM2 reads the separators as ordinary text
    for length in (16, 64):  # truncated to L = 16 (15 scored), or whole (29 tokens and the EOS)
        row = ids[:length] + ([0] if len(ids) < length else [])
        nll, count, n_bytes = judge.score([whole], "reference", max_length=length)
        assert count.tolist() == [len(row) - 1]
        assert nll[0] == pytest.approx(direct(row, list(range(1, len(row)))), rel=1e-5)
        end = offsets[min(length, len(ids)) - 1][1]
        assert n_bytes.tolist() == [len(whole[offsets[0][1] : end].encode("utf-8"))]  # the first token's bytes out

    document = separator_decoder(folder)(sample)
    assert document == "the company said profits rose sharply."
    row = [0, *hf(document, add_special_tokens=False)["input_ids"], 0]  # BOS = EOS = <|endoftext|>
    nll, count, n_bytes = judge.score([document])
    assert count.tolist() == [len(row) - 1] and n_bytes.tolist() == [len(document)]
    assert nll[0] == pytest.approx(direct(row, list(range(1, len(row)))), rel=1e-5)


def test_reference_keeps_scoring_after_an_eos_and_counts_only_the_first(smollm2: LoadedJudge, direct: Callable
                                                                        ) -> None:
    """OWT-like text: the data separator decoded as ``<|endoftext|>`` is SmolLM2's EOS; the first counts, the
    second does not, and the text between and after them is scored."""
    text = "Shares fell.<|endoftext|>Profits rose.<|endoftext|> The end"
    ids = smollm2.judge.encode([text])[0]
    eos = [j for j, tok in enumerate(ids) if tok == 0]
    assert len(eos) == 2
    nll, count = smollm2.judge.nll([text], "reference", max_length=64)
    row = [*ids, 0]
    counted = [j for j in range(1, len(row)) if j not in eos[1:] and j != len(row) - 1]  # EOS 2 and padding out
    assert count.tolist() == [len(counted)]
    assert nll[0] == pytest.approx(direct(row, counted), rel=1e-5)


TEXTS = [
    "Shares fell.",
    "The company said profits rose sharply in the third quarter, helped by strong sales in Asia and Europe.",
    "Analysts in London were surprised by the figures.",
    "The minister said on Tuesday that the plan would go ahead despite the protests, which drew thousands "
    "of people to the capital over the weekend, and that a vote in parliament would follow next month.",
]


@pytest.mark.parametrize(("protocol", "max_length"), [("document", None), ("reference", 24)])
def test_a_batch_of_different_lengths_scores_as_one_at_a_time(
    smollm2: LoadedJudge, protocol: str, max_length: int | None
) -> None:
    """The real judge (positions, padding): one padded batch equals four single-text passes."""
    judge: Judge = smollm2.judge
    lengths = [len(ids) for ids in judge.encode(TEXTS)]
    assert len(set(lengths)) == 4 and max(lengths) > 24 > min(lengths)  # padded rows; reference truncates one
    assert max(lengths) * len(TEXTS) < judge.max_batch_tokens  # one forward pass
    batch = judge.score(TEXTS, protocol, max_length)
    alone = [judge.score([text], protocol, max_length) for text in TEXTS]
    for i, (nll, count, n_bytes) in enumerate(alone):
        assert batch[0][i] == pytest.approx(nll[0], rel=1e-5)  # measured: rel < 5e-7 (float32 sums in a batch)
        assert (batch[1][i], batch[2][i]) == (count[0], n_bytes[0])
