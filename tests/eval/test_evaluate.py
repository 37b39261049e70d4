"""The evaluate stage's rows on a fake sampler and a bigram judge: fields, determinism, the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flm.eval.evaluate import Entry, EvalSettings, evaluate, reference_row
from flm.eval.judge import Judge

V = 8
TIMING = ("seconds_per_sequence", "tokens_per_second")


def _judge() -> Judge:
    table = torch.log_softmax(torch.randn(V, V, generator=torch.Generator().manual_seed(0)), -1)
    encode = lambda texts: [[int(c) for c in text] for text in texts]  # noqa: E731  "123" -> [1, 2, 3]
    return Judge("bigram", lambda ids: table[ids], encode, bos_id=7, eos_id=0, n_ctx=64)


def _decode(ids: list[int]) -> str:
    return "".join(str(t) for t in ids)


def _sampler(length: int, vocab: int):
    calls = []

    def sample(n: int, steps: int, seed: int) -> list[list[int]]:
        calls.append((n, steps, seed))
        return np.random.default_rng(seed).integers(1, vocab, size=(n, length)).tolist()

    sample.calls = calls
    return sample


def test_rows_fields_and_determinism() -> None:
    settings = EvalSettings(n_samples=10, seed=5, batch_size=4, n_boot=100, n_show=2, progress=False)
    varied, constant = _sampler(12, V), _sampler(12, 2)  # ids 1..7 vs only id 1
    entries = [
        Entry("flm", "euler", 8, varied, {"temperature": 1.0}),
        Entry("fmlm", "flow_map", 1, constant),
    ]
    rows = evaluate(entries, _decode, _judge(), settings)
    assert [(r["model"], r["nfe"], r["variant"]) for r in rows] == [
        ("flm", 8, "euler temperature=1.0"),
        ("fmlm", 1, "flow_map"),
    ]
    assert [n for n, _, _ in varied.calls] == [4, 4, 2] and {s for _, s, _ in varied.calls} == {8}
    assert len({seed for _, _, seed in varied.calls}) == 3
    for row in rows:
        assert row["n_samples"] == 10 and row["n_tokens"] == 10 * 13  # 12 tokens + EOS each
        assert row["ci_low"] <= row["gen_ppl"] <= row["ci_high"]
        assert row["seconds_per_sequence"] > 0 and row["tokens_per_second"] > 0
        assert len(row["samples"]) == 2 and len(row["samples"][0]) == 12
    assert rows[1]["entropy"] == 0.0 and rows[0]["entropy"] > math.log(4)

    again = evaluate(entries, _decode, _judge(), settings)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING} for r in rs]  # noqa: E731
    assert strip(again) == strip(rows)
    other = evaluate(entries[:1], _decode, _judge(), EvalSettings(**{**settings.__dict__, "seed": 6}))
    assert other[0]["gen_ppl"] != rows[0]["gen_ppl"]


def test_sampler_returning_too_few_sequences_raises() -> None:
    entry = Entry("ar", "ancestral", 4, lambda n, steps, seed: [[1, 2]] * (n - 1))
    with pytest.raises(ValueError, match=r"ar ancestral nfe=4: sample\(n=3\) returned 2 sequences"):
        evaluate([entry], _decode, _judge(), EvalSettings(n_samples=3, progress=False))


def test_reference_row_judges_held_out_blocks() -> None:
    blocks = [np.full(6, 1 + i % 7, dtype=np.uint16) for i in range(20)]
    settings = EvalSettings(n_samples=8, seed=1, batch_size=3, n_boot=50, progress=False)
    row = reference_row(blocks, _decode, _judge(), settings)
    assert (row["model"], row["nfe"], row["variant"]) == ("data", 0, "held-out")
    assert row["n_samples"] == 8 and row["entropy"] == 0.0
    assert row["seconds_per_sequence"] is None and row["tokens_per_second"] is None
    assert row == reference_row(blocks, _decode, _judge(), settings)
    assert reference_row(blocks, _decode, _judge(), EvalSettings(n_samples=100, progress=False))["n_samples"] == 20
