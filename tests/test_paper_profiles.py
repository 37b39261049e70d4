"""The ``lm1b`` and ``owt`` profiles are the paper's experiments, value by value (docs/MATH.md §7).

Every row of the §7 table that a parameter controls is checked here, on the parsed tree that a
``dvc exp run -S profile=...`` would train with; the rows that are code, not parameters (midpoint
in τ, online-student target, init from the teacher's EMA) are tested with the objectives.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flm.config import HFSource, HFTokenizer, Params, load_params
from flm.model import DiT
from flm.train.loop import optim_settings
from flm.train.simple import build_optimizer

REPO = Path(__file__).resolve().parents[1]

PAPER = {
    "lm1b": {"preset": "lm1b", "tokenizer": HFTokenizer(name="bert-base-uncased"), "L": 128,
             "flm_batch": 512, "fmlm_batch": 512, "renoise": 0.8},
    "owt": {"preset": "openwebtext", "tokenizer": HFTokenizer(name="gpt2", add_pad=True), "L": 1024,
            "flm_batch": 512, "fmlm_batch": 128, "renoise": 1.0},
}


@pytest.fixture(params=sorted(PAPER))
def profile(request: pytest.FixtureRequest) -> tuple[str, Params]:
    return request.param, load_params(REPO / "params.yaml", profile=request.param)


def test_data_and_tokenizer(profile: tuple[str, Params]) -> None:
    name, params = profile
    paper = PAPER[name]
    assert isinstance(params.data.source, HFSource) and params.data.source.preset == paper["preset"]
    assert params.data.tokenizer == paper["tokenizer"]
    assert params.data.packing.seq_len == paper["L"]
    if name == "owt":
        source = params.data.source.resolved()
        assert (source.train_split, source.val_last_n) == ("train", 100_000)


def test_dit_small_with_the_reference_attention_dropout_and_time_embedding(profile: tuple[str, Params]) -> None:
    _, params = profile
    m = params.model
    assert (m.n_layers, m.d_model, m.n_heads, m.mlp_ratio, m.cond_dim) == (12, 768, 12, 4.0, 128)
    assert (m.attn_impl, m.softcap) == ("flash", 50.0)
    assert m.dropout == 0.1
    assert (m.time_freq_dim, m.time_scale, m.rope_base) == (256, 1.0, 10_000.0)


def test_pretraining_optimizer_batch_steps_ema_and_precision(profile: tuple[str, Params]) -> None:
    name, params = profile
    for section in (params.train, params.ar, params.mdlm):  # the baselines train as FLM does
        assert (section.lr, section.beta1, section.beta2, section.weight_decay, section.grad_clip) == (
            3e-4, 0.9, 0.999, 0.0, 1.0)
        assert (section.warmup_steps, section.schedule) == (2500, "constant")
        assert (section.batch_size, section.steps, section.ema_decay) == (PAPER[name]["flm_batch"], 1_000_000, 0.9999)
        assert section.bf16


def test_distillation_settings(profile: tuple[str, Params]) -> None:
    name, params = profile
    d = params.distill
    assert (d.method, d.diag_fraction, d.boundary_fraction) == ("semigroup", 0.5, 0.5 / 32)
    assert (d.lr, d.beta1, d.beta2, d.warmup_steps, d.ema_decay) == (3e-4, 0.9, 0.95, 2500, 0.9999)
    assert (d.batch_size, d.steps) == (PAPER[name]["fmlm_batch"], 100_000)
    assert d.bf16


def test_sampling_and_evaluation(profile: tuple[str, Params]) -> None:
    name, params = profile
    e = params.eval
    assert e.judge == "hf:gpt2-large" and e.judge_revision is not None
    assert e.protocol == "reference"
    assert e.n_samples >= 1024 and e.max_nfe == 1024
    assert e.fmlm_renoise == PAPER[name]["renoise"]


def test_adamw_epsilon_is_the_reference_one() -> None:
    """``eps`` is not a parameter: the optimizer the loop builds must keep torch's 1e-8."""
    params = load_params(REPO / "params.yaml", profile="lm1b")
    shape = {"d_model": 32, "n_layers": 1, "n_heads": 2, "cond_dim": 16, "time_freq_dim": 16, "attn_impl": "sdpa"}
    tiny = DiT(params.model.model_copy(update=shape).dit_config(50))
    optimizer = build_optimizer(tiny, optim_settings(params.train))
    assert optimizer.defaults["eps"] == 1e-8
    assert optimizer.defaults["betas"] == (0.9, 0.999)
