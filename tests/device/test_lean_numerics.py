"""The GPU path's cheaper numerics, checked against the exact ones: the noise factor from the Gram matrix,
memory-bounded float64 Gumbel sampling, and bf16 autocast confined to CUDA generation."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

import flm.flow.masked as masked
from flm.device import network_autocast
from flm.flow import ancestral_step, gumbel_max, noise_factor
from tests.conftest import gen


def test_noise_factor_is_the_cholesky_factor_of_the_gram_matrix() -> None:
    """``RᵀR = EᵀE`` in float64; ``R`` is QR's ``R`` with its rows' signs made positive."""
    emb = torch.randn(300, 6, dtype=torch.float64, generator=gen(0))
    factor = noise_factor(emb)
    gram = emb.T @ emb
    assert factor.shape == (6, 6) and factor.dtype == torch.float64
    assert torch.allclose(factor.T @ factor, gram, rtol=1e-10, atol=1e-12)
    assert torch.equal(factor, factor.triu()) and bool((factor.diagonal() > 0).all())
    qr = torch.linalg.qr(emb).R
    assert torch.allclose(factor, qr.diagonal().sign()[:, None] * qr, rtol=1e-9, atol=1e-12)


def test_noise_factor_of_a_rank_deficient_embedding() -> None:
    """A singular Gram matrix (dependent columns: rounding makes it indefinite) still factors, ``RᵀR ≈ EᵀE``."""
    emb = torch.randn(50, 6, dtype=torch.float64, generator=gen(1))
    emb[:, 3] = 0.3 * emb[:, 2] - 1.7 * emb[:, 1]
    emb[:, 5] = 2 * emb[:, 0]
    assert torch.linalg.cholesky_ex(emb.T @ emb).info > 0  # plain Cholesky fails here
    factor = noise_factor(emb)
    assert bool(factor.isfinite().all())
    assert torch.allclose(factor.T @ factor, emb.T @ emb, rtol=0, atol=1e-9 * (emb.T @ emb).diagonal().mean())


def test_noise_factor_is_float32_for_bf16_and_under_autocast() -> None:
    emb = torch.randn(64, 8, generator=gen(2))
    assert noise_factor(emb.bfloat16()).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = noise_factor(emb)
    assert torch.equal(inside, noise_factor(emb))


@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 100), (0, 9), (300, 31)])
def test_chunked_gumbel_max_draws_what_one_draw_does(shape: tuple[int, ...]) -> None:
    """Any chunk size gives the draws of ``argmax(log w - log(-log U))`` with one ``U`` for all rows."""
    log_w = torch.randn(shape, generator=gen(3))
    log_w[..., 0] = -float("inf")
    u = torch.rand(shape, generator=gen(4), dtype=torch.float64)
    expected = (log_w.double() - torch.log(-torch.log(u))).argmax(-1)
    for chunk in (1, 13, 1 << 24):
        assert torch.equal(gumbel_max(log_w, gen(4), chunk), expected)


def test_ancestral_step_gathers_in_blocks_without_changing_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Revealed rows gathered a few positions at a time: the same ``z_s`` as one gather."""
    vocab, mask = 30, 30
    log_p = torch.randn(4, 25, vocab, generator=gen(5)).log_softmax(-1)
    z_t = torch.full((4, 25), mask)
    z_t[:, ::3] = 7
    s, t = torch.full((4,), 0.3, dtype=torch.float64), torch.full((4,), 0.8, dtype=torch.float64)
    whole = ancestral_step(z_t, log_p, s, t, mask, gen(6))
    monkeypatch.setattr(masked, "GATHER_ELEMENTS", 3 * vocab)
    assert torch.equal(ancestral_step(z_t, log_p, s, t, mask, gen(6)), whole)
    assert (whole[:, ::3] == 7).all() and (whole != mask).any() and (whole == mask).any()


def test_network_autocast_is_bf16_on_cuda_only() -> None:
    """CPU generation keeps its float32 network (bit-identical samples); CUDA runs it in bf16 unless told not to."""
    assert isinstance(network_autocast("cpu"), nullcontext)
    assert isinstance(network_autocast("cuda", bf16=False), nullcontext)
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else nullcontext():
        ctx = network_autocast("cuda:0")
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
