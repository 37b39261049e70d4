"""KV cache of a causal DiT: incremental decoding equals the full forward pass."""

from __future__ import annotations

import pytest
import torch

from flm.model import DiT, DiTConfig
from flm.model.layers import attention


def _causal(n_times: int = 0, dtype: torch.dtype = torch.float64) -> DiT:
    torch.manual_seed(0)
    model = DiT(DiTConfig(vocab_size=23, d_model=32, n_layers=3, n_heads=4, cond_dim=16, n_times=n_times, causal=True))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.to(dtype).eval()


@pytest.mark.parametrize("chunks", [[1] * 9, [4, 1, 1, 3], [9], [2, 5, 2]])
def test_cached_logits_equal_the_full_forward_pass(chunks: list[int]) -> None:
    model = _causal()
    ids = torch.randint(0, 23, (3, 9), generator=torch.Generator().manual_seed(1))
    full = model(model.embed_ids(ids))
    cache = model.new_cache(batch=3, max_len=9)
    parts, start = [], 0
    for size in chunks:
        parts.append(model(model.embed_ids(ids[:, start:start + size]), cache=cache))
        start += size
        assert cache.length == start
    cached = torch.cat(parts, dim=1)
    assert cached.shape == full.shape == (3, 9, 23)
    assert torch.allclose(cached, full, atol=1e-10, rtol=0)
    assert full.abs().max() > 1.0  # a randomized network: the comparison is not between zeros


def test_cache_with_time_conditioning_and_float32() -> None:
    model = _causal(n_times=1, dtype=torch.float32)
    ids, tau = torch.randint(0, 23, (2, 7)), torch.rand(2)
    full = model(model.embed_ids(ids), tau)
    cache = model.new_cache(2, 7)
    steps = [model(model.embed_ids(ids[:, i:i + 1]), tau, cache=cache) for i in range(7)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)


def test_cache_errors() -> None:
    model = _causal()
    cache = model.new_cache(1, 4)
    model(model.embed_ids(torch.zeros(1, 4, dtype=torch.long)), cache=cache)
    with pytest.raises(ValueError, match="holds 4 positions"):
        model(model.embed_ids(torch.zeros(1, 1, dtype=torch.long)), cache=cache)
    bidirectional = DiT(DiTConfig(vocab_size=23, d_model=32, n_layers=1, n_heads=4, n_times=0))
    with pytest.raises(ValueError, match="causal"):
        bidirectional(torch.randn(1, 2, 32), cache=bidirectional.new_cache(1, 2))


def test_bottom_right_causal_mask_for_fewer_queries_than_keys() -> None:
    q, k, v = (torch.randn(2, 6, 3, 8, dtype=torch.float64) for _ in range(3))
    full = attention(q, k, v, causal=True, impl="sdpa")
    assert torch.allclose(attention(q[:, 2:], k, v, causal=True, impl="sdpa"), full[:, 2:], atol=1e-12)
    assert torch.allclose(attention(q[:, 5:], k, v, causal=True, impl="sdpa"), full[:, 5:], atol=1e-12)


def test_cache_under_bf16_autocast_is_stored_in_bf16_and_read_without_copies() -> None:
    model = _causal(dtype=torch.float32)
    assert model.new_cache(2, 5).keys.dtype == torch.float32  # no autocast: the weights' dtype
    ids = torch.randint(0, 23, (2, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = model(model.embed_ids(ids)).float()
        cache = model.new_cache(2, 5)
        steps = torch.cat([model(model.embed_ids(ids[:, i:i + 1]), cache=cache).float() for i in range(5)], 1)
    assert cache.keys.dtype == cache.values.dtype == torch.bfloat16
    assert (steps - full).abs().max() < 0.05 * full.abs().max()
    # reading the cache back hands out views of the buffers, not per-token copies
    cache.length = 0
    k = torch.randn(2, 3, 4, 8, dtype=torch.bfloat16)
    keys, values = cache.extend(1, k, k)
    assert keys.data_ptr() == cache.keys[1].data_ptr() and values.data_ptr() == cache.values[1].data_ptr()
    assert torch.equal(keys, k)


def test_cache_on_a_device_without_autocast() -> None:
    """The ``meta`` device (placement tests' stand-in device) has no autocast: the weights' dtype, no error."""
    with torch.device("meta"):
        model = DiT(DiTConfig(vocab_size=23, d_model=32, n_layers=1, n_heads=4, n_times=0, causal=True))
    cache = model.new_cache(2, 4)
    assert cache.keys.device.type == "meta" and cache.keys.dtype == torch.float32
