"""FLM objective: projected ≡ dense path, no V-wide noise or state, loss weighting."""

from __future__ import annotations

import math

import pytest
import torch

from flm.model import DiT, DiTConfig
from flm.objectives import FLMObjective
from tests.conftest import gen
from tests.objectives.vwide import VWideProbe

V, L, D = 97, 12, 16  # V prime and > D, so the projected path uses the QR factor


def _objective(dtype: torch.dtype = torch.float64, **kw: bool) -> FLMObjective:
    torch.manual_seed(0)
    obj = FLMObjective(DiT(DiTConfig(V, D, 2, 2, cond_dim=16)), **kw).to(dtype)
    with torch.no_grad():  # leave the zero init so outputs depend on inputs
        obj.backbone.final.head.weight.normal_(0, 0.3)
        for block in obj.backbone.blocks:
            block.ada.weight.normal_(0, 0.1)
    return obj


def test_initial_loss_is_log_vocab() -> None:
    obj = FLMObjective(DiT(DiTConfig(V, D, 2, 2, cond_dim=16)))
    out = obj(torch.randint(0, V, (4, L)), gen(0))
    assert abs(out.loss.item() - math.log(V)) < 1e-5


def test_projected_and_dense_paths_agree_on_loss_and_gradients() -> None:
    obj = _objective()
    x = torch.randint(0, V, (6, L), generator=gen(1))
    tau = torch.rand(6, generator=gen(2), dtype=torch.float64)
    eps = torch.randn(6, L, V, generator=gen(3), dtype=torch.float64)
    dense = obj.loss_dense(x, tau, eps)
    grads_dense = torch.autograd.grad(dense.loss, list(obj.parameters()))
    proj = obj.loss(x, tau, obj.project(eps))
    grads_proj = torch.autograd.grad(proj.loss, list(obj.parameters()))
    assert torch.allclose(dense.loss, proj.loss, atol=1e-12)
    for a, b in zip(grads_dense, grads_proj, strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_projected_and_dense_samples_agree() -> None:
    obj = _objective()
    eps = torch.randn(16, L, V, generator=gen(4), dtype=torch.float64)
    for steps in (1, 4, 16):
        assert torch.equal(obj.sample(16, L, steps, noise_h=obj.project(eps)), obj.sample_dense(eps, steps))


def test_projected_path_never_builds_vwide_noise_or_state() -> None:
    obj = _objective(torch.float32)
    x = torch.randint(0, V, (4, L))
    probe = VWideProbe(V, 4 * L)
    with probe:
        obj(x, gen(5)).loss.backward()
        obj.sample(4, L, 3, gen(6))
    assert probe.events, "the probe must see the network's V-wide output"
    assert probe.random_ops == []
    assert not any(name == "one_hot" for name, _ in probe.events)
    # the first V-wide tensor of the training step is the output head's product
    assert probe.events[0][0] in {"addmm", "mm", "bmm", "linear", "matmul"}

    dense_probe = VWideProbe(V, 4 * L)  # the detector does see the dense path's noise
    with dense_probe:
        obj.loss_dense(x, torch.rand(4), torch.randn(4, L, V))
        obj.sample_dense(torch.randn(4, L, V), 2)
    assert dense_probe.random_ops == ["randn", "randn"]
    assert dense_probe.events[0][0] == "randn" and dense_probe.events[1][0] != "addmm"


def test_learned_loss_weighting_starts_as_plain_loss_and_learns() -> None:
    plain = _objective()
    weighted = _objective(learn_loss_weight=True)
    weighted.backbone.load_state_dict(plain.backbone.state_dict())
    x = torch.randint(0, V, (4, L))
    tau = torch.rand(4, dtype=torch.float64)
    noise = torch.randn(4, L, D, dtype=torch.float64)
    a, b = plain.loss(x, tau, noise), weighted.loss(x, tau, noise)
    assert torch.allclose(a.loss, b.loss)
    b.loss.backward()
    assert weighted.loss_weight.out.weight.grad.abs().sum() > 0


def test_rejects_a_two_time_backbone() -> None:
    with pytest.raises(ValueError, match="n_times=1"):
        FLMObjective(DiT(DiTConfig(V, D, 1, 2, n_times=2)))


def test_loss_decreases_with_training() -> None:
    obj = FLMObjective(DiT(DiTConfig(V, D, 2, 2, cond_dim=16)))
    x = torch.arange(L).repeat(8, 1) % V  # one fixed sequence: learnable quickly
    opt = torch.optim.AdamW(obj.parameters(), lr=1e-2)
    g = gen(7)
    first = float(obj(x, g).loss)
    for _ in range(150):
        loss = obj(x, g).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(obj(x, gen(8)).loss) < 0.5 * first


def test_chunked_cross_entropy_equals_full_loss_and_gradients() -> None:
    full = _objective()
    chunked = _objective()
    chunked.ce_chunk = 7  # does not divide B·L = 72: the last chunk is short
    x = torch.randint(0, V, (6, L), generator=gen(9))
    tau = torch.rand(6, generator=gen(10), dtype=torch.float64)
    noise = torch.randn(6, L, D, generator=gen(11), dtype=torch.float64)
    a, b = full.loss(x, tau, noise), chunked.loss(x, tau, noise)
    assert torch.allclose(a.loss, b.loss, atol=1e-12)
    for ga, gb in zip(torch.autograd.grad(a.loss, list(full.parameters())),
                      torch.autograd.grad(b.loss, list(chunked.parameters())), strict=True):
        assert torch.allclose(ga, gb, atol=1e-10)


def test_chunked_cross_entropy_never_holds_all_logits() -> None:
    obj = _objective(torch.float32)
    obj.ce_chunk = 8
    x = torch.randint(0, V, (4, L))
    probe = VWideProbe(V, 8)  # records every V-wide tensor of >= 8 rows
    with probe:
        obj(x, gen(12)).loss.backward()
    # activations: at most one chunk of logits at a time (the (d, V) weight transpose is a parameter view)
    rows = [int(torch.tensor(shape[:-1]).prod()) for _, shape in probe.events if shape != (D, V)]
    assert rows and max(rows) <= 8
