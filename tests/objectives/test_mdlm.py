"""MDLM baseline (MATH.md §6): NELBO on masked positions, SUBS, K-step ancestral sampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from flm.flow import mask_tokens
from flm.model import DiT, DiTConfig
from flm.objectives import MDLMObjective
from tests.conftest import gen

V, L, D = 29, 12, 16  # backbone vocabulary V + 1: id V is the mask


def _objective(dtype: torch.dtype = torch.float64, ce_chunk: int = 0) -> MDLMObjective:
    torch.manual_seed(0)
    obj = MDLMObjective(DiT(DiTConfig(V + 1, D, 2, 2, cond_dim=16)), ce_chunk=ce_chunk)
    with torch.no_grad():
        for p in obj.parameters():
            p.normal_(0, 0.3)
    return obj.to(dtype).eval()


def _noised(x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t = torch.rand(x.shape[0], generator=gen(seed), dtype=torch.float64) * 0.9 + 0.05
    z, masked = mask_tokens(x, t, V, gen(seed + 1))
    return z, masked, t


def test_loss_is_the_weighted_masked_cross_entropy_per_token() -> None:
    obj = _objective()
    x = torch.randint(0, V, (6, L), generator=gen(1))
    z, masked, t = _noised(x, 2)
    assert 0 < masked.sum() < masked.numel()
    nll = F.cross_entropy(obj.backbone(obj.backbone.embed_ids(z), t)[..., :V].transpose(1, 2), x, reduction="none")
    expected = (masked * nll / t[:, None]).sum() / x.numel()  # SUBS: unmasked positions contribute 0
    out = obj.loss(x, z, masked, t)
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-12)
    assert out.metrics["masked_ce"].item() == pytest.approx(nll[masked].mean().item(), abs=1e-12)


def test_initial_loss_is_log_vocab_in_expectation() -> None:
    obj = MDLMObjective(DiT(DiTConfig(V + 1, D, 2, 2, cond_dim=16)))  # zero head: uniform over the V tokens
    x = torch.randint(0, V, (4, L), generator=gen(3))
    z, masked, t = _noised(x, 4)
    exact = math.log(V) * (masked.sum(1) / t).sum().item() / x.numel()
    assert obj.loss(x, z, masked, t.float()).loss.item() == pytest.approx(exact, rel=1e-5)
    # E[#masked / t] = L because P(masked) = 1 - α_t = t: the NELBO of a uniform model is log V
    big = obj(torch.randint(0, V, (256, L), generator=gen(5)), gen(6)).loss.item()
    assert big == pytest.approx(math.log(V), rel=0.05)


def test_chunked_cross_entropy_equals_full_loss_and_gradients() -> None:
    full, chunked = _objective(), _objective(ce_chunk=5)
    x = torch.randint(0, V, (5, L), generator=gen(7))
    z, masked, t = _noised(x, 8)
    a, b = full.loss(x, z, masked, t), chunked.loss(x, z, masked, t)
    assert torch.allclose(a.loss, b.loss, atol=1e-12)
    for ga, gb in zip(torch.autograd.grad(a.loss, list(full.parameters())),
                      torch.autograd.grad(b.loss, list(chunked.parameters())), strict=True):
        assert torch.allclose(ga, gb, atol=1e-10)


def test_subs_the_mask_is_never_predicted() -> None:
    obj = _objective()
    z = torch.full((2, L), V)
    log_p = obj.log_probs(z, torch.ones(2, dtype=torch.float64))
    assert log_p.shape == (2, L, V)  # no column for the mask
    assert torch.allclose(log_p.exp().sum(-1), torch.ones(2, L, dtype=torch.float64))


@pytest.mark.parametrize("steps", [1, 3, 16])
def test_sampling_uses_k_network_calls_and_returns_clean_tokens(steps: int) -> None:
    obj = _objective()
    calls: list[float] = []
    hook = obj.backbone.register_forward_pre_hook(lambda _m, args: calls.append(float(args[1][0])))
    try:
        out = obj.sample(5, L, steps, gen(9))
    finally:
        hook.remove()
    assert out.shape == (5, L) and out.min() >= 0 and out.max() < V
    assert calls == pytest.approx([1 - k / steps for k in range(steps)])  # t_k from 1 down, K calls
    assert torch.equal(out, obj.sample(5, L, steps, gen(9)))  # reproducible from the seed


def test_overfits_a_fixed_batch() -> None:
    torch.manual_seed(0)
    obj = MDLMObjective(DiT(DiTConfig(V + 1, 32, 2, 2, cond_dim=32)))
    x = torch.randint(0, V, (1, L), generator=gen(10)).repeat(8, 1)  # one sequence: learnable from positions
    opt = torch.optim.AdamW(obj.parameters(), lr=1e-2)
    g = gen(11)
    first = sum(obj(x, gen(100 + i)).loss.item() for i in range(10)) / 10
    for _ in range(50):
        loss = obj(x, g).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = sum(obj(x, gen(100 + i)).loss.item() for i in range(10)) / 10  # same masks as `first`
    print(f"MDLM overfit: {first:.4f} -> {last:.4f}")
    assert math.isfinite(last) and last < 0.6 * first, (first, last)


def test_rejects_a_causal_or_untimed_backbone() -> None:
    with pytest.raises(ValueError, match="bidirectional"):
        MDLMObjective(DiT(DiTConfig(V + 1, D, 1, 2, causal=True)))
    with pytest.raises(ValueError, match="n_times=1"):
        MDLMObjective(DiT(DiTConfig(V + 1, D, 1, 2, n_times=0)))
    assert _objective().mask_id == V
