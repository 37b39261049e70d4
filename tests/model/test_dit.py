"""DiT backbone: shapes, zero-init, time embeddings, causal mask, input kinds, config errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from flm.config import ModelParams
from flm.model import DiT, DiTConfig
from flm.model.layers import flash_attention_problem


def _cfg(**kw: object) -> DiTConfig:
    base = {"vocab_size": 37, "d_model": 32, "n_layers": 2, "n_heads": 2, "cond_dim": 16}
    base.update(kw)
    return DiTConfig(**base)  # type: ignore[arg-type]


def _randomize(model: DiT) -> DiT:
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def test_zero_initialized_head_gives_uniform_output() -> None:
    model = DiT(_cfg())
    h = torch.randn(3, 9, 32)
    logits = model(h, torch.rand(3))
    assert logits.shape == (3, 9, 37)
    assert torch.equal(logits, torch.zeros_like(logits))


def test_input_kinds_agree() -> None:
    model = _randomize(DiT(_cfg()))
    ids = torch.randint(0, 37, (2, 5))
    assert torch.allclose(model.embed_dense(F.one_hot(ids, 37).float()), model.embed_ids(ids), atol=1e-6)


def test_second_time_embedding_starts_at_zero() -> None:
    one = _randomize(DiT(_cfg()))
    two = DiT(_cfg(n_times=2))
    missing, unexpected = two.load_state_dict(one.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("time_embed_2.") for k in missing) and missing
    h, tau = torch.randn(2, 6, 32), torch.rand(2)
    assert torch.allclose(two(h, tau, torch.rand(2)), one(h, tau), atol=1e-6)
    # once trained, the second time matters
    with torch.no_grad():
        two.time_embed_2.mlp[2].weight.normal_()
    assert not torch.allclose(two(h, tau, torch.zeros(2)), two(h, tau, torch.ones(2)))


def test_time_scale_one_feeds_tau_itself_to_the_sinusoids() -> None:
    """Scale 1 (the reference): ``[cos(τ f_i), sin(τ f_i)]``, ``f_i = 10000^{-i/128}``, 256 features."""
    model = DiT(_cfg(time_scale=1.0, time_freq_dim=256))
    tau = torch.tensor([0.0, 0.03, 0.5, 0.999])
    freqs = 10000.0 ** (-torch.arange(128, dtype=torch.float64) / 128)
    args = tau.double()[:, None] * freqs[None]
    expected = torch.cat([args.cos(), args.sin()], dim=-1)
    feats = model.time_embed.sinusoids(tau)
    assert feats.shape == (4, 256)
    assert torch.allclose(feats.double(), expected, atol=1e-6, rtol=0)
    assert not torch.allclose(DiT(_cfg(time_freq_dim=256)).time_embed.sinusoids(tau).double(), expected, atol=0.1)
    assert ModelParams(time_scale=1).dit_config(37).time_scale == 1.0


def test_time_conditioning_matters() -> None:
    model = _randomize(DiT(_cfg()))
    h = torch.randn(2, 6, 32)
    assert not torch.allclose(model(h, torch.zeros(2)), model(h, torch.ones(2)))


def test_causal_attention_ignores_the_future() -> None:
    model = _randomize(DiT(_cfg(causal=True, n_times=0)))
    h = torch.randn(1, 8, 32)
    h2 = h.clone()
    h2[:, 5:] = torch.randn(1, 3, 32)
    out, out2 = model(h), model(h2)
    assert torch.allclose(out[:, :5], out2[:, :5], atol=1e-6)
    assert not torch.allclose(out[:, 5:], out2[:, 5:])


def test_bidirectional_attention_sees_the_future() -> None:
    model = _randomize(DiT(_cfg()))
    h = torch.randn(1, 8, 32)
    h2 = h.clone()
    h2[:, 7] = 0
    assert not torch.allclose(model(h, torch.ones(1))[:, 0], model(h2, torch.ones(1))[:, 0])


def test_rotary_makes_positions_distinguishable() -> None:
    # Same multiset of inputs, b at distance 1 or 5 from position 0: without positional
    # information attention could not tell them apart.
    model = _randomize(DiT(_cfg()))
    a, b, c = torch.randn(3, 32)
    near = torch.stack([a, b, c, c, c, c])[None]
    far = torch.stack([a, c, c, c, c, b])[None]
    assert not torch.allclose(model(near, torch.ones(1))[0, 0], model(far, torch.ones(1))[0, 0], atol=1e-4)


def test_dropout_only_in_training() -> None:
    model = _randomize(DiT(_cfg(dropout=0.5)))
    h, tau = torch.randn(2, 6, 32), torch.rand(2)
    model.eval()
    assert torch.equal(model(h, tau), model(h, tau))
    model.train()
    assert not torch.equal(model(h, tau), model(h, tau))


def test_flash_attention_is_optional_and_falls_back_where_it_cannot_run() -> None:
    """A flash DiT on CPU computes what the SDPA DiT with the same weights computes, installed or not."""
    sdpa = _randomize(DiT(_cfg()))
    flash = DiT(_cfg(attn_impl="flash"))
    flash.load_state_dict(sdpa.state_dict())
    h, tau = torch.randn(2, 6, 32), torch.rand(2)
    assert torch.equal(flash(h, tau), sdpa(h, tau))
    installed = importlib.util.find_spec("flash_attn") is not None
    assert "CUDA only" in flash_attention_problem("cpu", torch.bfloat16)
    assert "fp16/bf16" in flash_attention_problem("cuda", torch.float32)
    assert (flash_attention_problem("cuda", torch.bfloat16) is None) == installed
    if not installed:
        assert "not installed" in flash_attention_problem("cuda", torch.float16)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"d_model": 33}, "divisible"),
        ({"n_times": 3}, "n_times"),
        ({"attn_impl": "xformers"}, "attn_impl"),
        ({"vocab_size": 1}, "vocab_size"),
        ({"d_model": 36, "n_heads": 4}, "even"),
        ({"softcap": -1.0}, "softcap"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_config_errors_name_the_field(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _cfg(**kw)


def test_config_round_trips_through_dict() -> None:
    cfg = _cfg(n_times=2, causal=True)
    assert DiTConfig(**cfg.to_dict()) == cfg
    assert cfg.replace(n_times=1).n_times == 1
