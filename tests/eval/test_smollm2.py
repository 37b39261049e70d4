"""The offline judge: SmolLM2-135M from the packaged GGUF, with the network cut (the suite runs under tools/offline)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from flm.data.packaged import iter_packaged
from flm.eval.judge import SMOLLM2_CACHE, JudgeError, load_judge, smollm2_judge
from flm.eval.metrics import gen_ppl
from tests.eval.conftest import LoadedJudge

SENTENCE = "The company said profits rose sharply in the third quarter."


def _cache(loaded: LoadedJudge) -> Path:
    return loaded.state_dir / "cache" / "judges" / SMOLLM2_CACHE


@pytest.fixture(scope="module")
def paragraph() -> str:
    """About 120 judge tokens of a real BBC News article body, cut at a word boundary."""
    body = next(iter_packaged("bbc_news")).split("\n\n", 1)[1].replace("\n\n", " ")
    return body[:600].rsplit(" ", 1)[0]


@pytest.fixture(scope="module")
def paragraph_scores(smollm2: LoadedJudge, paragraph: str) -> tuple[np.ndarray, np.ndarray]:
    return smollm2.judge.nll([paragraph])


def test_nll_equals_a_direct_forward_pass(
    smollm2: LoadedJudge, paragraph: str, paragraph_scores: tuple[np.ndarray, np.ndarray]
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_cache(smollm2))
    model = AutoModelForCausalLM.from_pretrained(_cache(smollm2), dtype=torch.float32).eval()
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids = torch.tensor([[endoftext, *tokenizer(paragraph, add_special_tokens=False).input_ids, endoftext]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
    expected = -logp.gather(-1, ids[0, 1:, None]).sum().item()

    nll, count = paragraph_scores
    assert count.tolist() == [ids.shape[1] - 1]
    assert nll[0] == pytest.approx(expected, rel=1e-5)


def test_counting_stops_after_the_first_eos(smollm2: LoadedJudge) -> None:
    judge = smollm2.judge
    plain = judge.nll([SENTENCE])
    embedded = judge.nll([SENTENCE + "<|endoftext|> And then more words follow.<|endoftext|> x"])
    n_words = len(judge.encode([SENTENCE])[0])
    assert plain[1].tolist() == embedded[1].tolist() == [n_words + 1]  # every token + the first EOS
    assert embedded[0][0] == pytest.approx(plain[0][0], rel=1e-6)


def test_real_text_beats_shuffled_words(
    smollm2: LoadedJudge, paragraph: str, paragraph_scores: tuple[np.ndarray, np.ndarray]
) -> None:
    words = paragraph.split()
    random.Random(0).shuffle(words)
    real = gen_ppl(*paragraph_scores)
    salad = gen_ppl(*smollm2.judge.nll([" ".join(words)]))
    assert 5 < real < 60  # measured 31-40 on BBC paragraphs
    assert salad > 200 and salad > 8 * real  # measured ~700


def test_cached_load_is_faster_and_identical(smollm2: LoadedJudge) -> None:
    start = time.perf_counter()
    again = smollm2_judge(smollm2.state_dir)
    cached_seconds = time.perf_counter() - start
    assert cached_seconds < smollm2.seconds / 2, (cached_seconds, smollm2.seconds)
    texts = [SENTENCE, "A second, shorter one."]
    first, second = smollm2.judge.nll(texts), again.nll(texts)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_hub_judge_offline_names_the_model(tmp_path: Path, offline_hub: None) -> None:
    with pytest.raises(JudgeError, match=r"judge 'hf:gpt2-large': cannot load 'gpt2-large'"):
        load_judge("hf:gpt2-large", state_dir=tmp_path)
