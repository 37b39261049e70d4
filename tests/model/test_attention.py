"""Attention logit soft-capping against a float64 reference; cap 0 is the plain SDPA call; flash path arguments."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from flm.model import DiT, DiTConfig, layers
from flm.model.layers import attention

CAP = 50.0


def _qkv(t: int, s: int, dtype: torch.dtype = torch.float64, scale: float = 40.0) -> tuple[torch.Tensor, ...]:
    """``q`` scaled so that the raw scores ``q kᵀ/√Dh`` reach several times the cap."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, t, 3, 8, generator=g, dtype=torch.float64) * scale
    k, v = (torch.randn(2, s, 3, 8, generator=g, dtype=torch.float64) for _ in range(2))
    return tuple(x.to(dtype) for x in (q, k, v))


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, cap: float) -> torch.Tensor:
    """``softmax(cap·tanh(q kᵀ/(cap√d)) + mask) v`` in float64, the causal mask aligned bottom-right."""
    q, k, v = (x.double().transpose(1, 2) for x in (q, k, v))
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if cap:
        scores = cap * torch.tanh(scores / cap)
    t, s = scores.shape[-2:]
    if causal:
        scores = scores.masked_fill(~torch.ones(t, s, dtype=torch.bool).tril(s - t), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


@pytest.mark.parametrize("impl", ["sdpa", "flash"])  # flash falls back on CPU: both are CPU backends
@pytest.mark.parametrize(("causal", "t", "s"), [(False, 9, 9), (True, 9, 9), (True, 3, 9), (True, 1, 9)])
def test_softcap_equals_the_float64_reference(impl: str, causal: bool, t: int, s: int) -> None:
    q, k, v = _qkv(t, s)
    expected = _reference(q, k, v, causal, CAP)
    assert (expected - _reference(q, k, v, causal, 0.0)).abs().max() > 0.1  # the cap matters here
    assert torch.allclose(attention(q, k, v, causal, impl, softcap=CAP), expected, atol=1e-12, rtol=0)
    q32, k32, v32 = (x.float() for x in (q, k, v))
    out32 = attention(q32, k32, v32, causal, impl, softcap=CAP)
    assert out32.dtype == torch.float32
    assert torch.allclose(out32.double(), expected, atol=2e-5, rtol=0)


def test_softcap_under_bf16_autocast_stays_close() -> None:
    q, k, v = _qkv(9, 9, torch.float32, scale=10.0)
    expected = _reference(q, k, v, True, CAP)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), True, "sdpa", softcap=CAP)
    assert out.dtype == torch.bfloat16
    assert (out.double() - expected).abs().max() < 0.05 * expected.abs().max()


@pytest.mark.parametrize(("causal", "t", "s"), [(False, 9, 9), (True, 9, 9), (True, 3, 9), (True, 1, 9)])
def test_cap_zero_is_the_plain_sdpa_call(causal: bool, t: int, s: int) -> None:
    q, k, v = _qkv(t, s, torch.float32, scale=1.0)
    mask = torch.ones(t, s, dtype=torch.bool).tril(s - t) if causal and 1 < t < s else None
    plain = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, dropout_p=0.0,
        is_causal=causal and t == s,
    ).transpose(1, 2)
    assert torch.equal(attention(q, k, v, causal, "sdpa"), plain)
    assert torch.equal(attention(q, k, v, causal, "sdpa", softcap=0.0), plain)


def test_capped_dit_decodes_with_its_cache_like_the_full_pass() -> None:
    torch.manual_seed(0)
    model = DiT(DiTConfig(23, 32, 2, 4, cond_dim=16, n_times=0, causal=True, softcap=2.0)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    uncapped = DiT(model.config.replace(softcap=0.0)).double().eval()
    uncapped.load_state_dict(model.state_dict())
    ids = torch.randint(0, 23, (2, 6))
    full = model(model.embed_ids(ids))
    assert not torch.allclose(full, uncapped(model.embed_ids(ids)), atol=1e-3)  # the cap changes the network
    cache = model.new_cache(2, 6)
    steps = torch.cat([model(model.embed_ids(ids[:, i:i + 1]), cache=cache) for i in range(6)], 1)
    assert torch.allclose(steps, full, atol=1e-10, rtol=0)


def test_flash_path_receives_the_cap_and_no_dropout(monkeypatch: pytest.MonkeyPatch) -> None:
    """flash-attn cannot run here: a stand-in ``flash_attn_func`` records what the flash path passes."""
    calls: list[dict] = []

    def flash_attn_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
                        softmax_scale: float | None = None, causal: bool = False, window_size: tuple = (-1, -1),
                        softcap: float = 0.0) -> torch.Tensor:
        calls.append({"dropout_p": dropout_p, "softmax_scale": softmax_scale, "causal": causal, "softcap": softcap})
        return _reference(q, k, v, causal, softcap).to(q.dtype)

    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_func=flash_attn_func))
    monkeypatch.setattr(layers, "_use_flash", lambda device_type, dtype: True)
    q, k, v = _qkv(4, 4)
    attention(q, k, v, True, "flash", softcap=CAP)
    attention(q, k, v, False, "flash")
    assert calls == [
        {"dropout_p": 0.0, "softmax_scale": None, "causal": True, "softcap": CAP},
        {"dropout_p": 0.0, "softmax_scale": None, "causal": False, "softcap": 0.0},
    ]
    model = DiT(DiTConfig(23, 32, 1, 4, n_times=0, causal=True, attn_impl="flash", softcap=CAP)).train()
    model(torch.randn(1, 4, 32))
    assert calls[-1] == {"dropout_p": 0.0, "softmax_scale": None, "causal": True, "softcap": CAP}
