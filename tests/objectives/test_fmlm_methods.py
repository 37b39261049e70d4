"""FMLM distillation methods (MATH.md §2): semigroup, Lagrangian and Eulerian teachers wired to a DiT.

The teachers' formulas are checked at their fixed point in ``tests/flow/test_distill_targets.py``;
here: the choice is made once and checked, the projected path equals the dense reference path
(the JVP's ``z``-tangent lifted to ``v_s E``), the chunked path equals the full one, and the
Lagrangian teacher is projected onto the simplex.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from flm.flow import eulerian_parts, eulerian_target, lagrangian_parts, lagrangian_target, sparsemax
from flm.model import DiT, DiTConfig
from flm.objectives import FMLMDistillation
from flm.objectives.common import ProjectedSpace
from tests.conftest import gen

V, L, D = 97, 10, 16
JVP_METHODS = ("lagrangian", "eulerian")


def _distill(method: str, chunk: int = 0, dtype: torch.dtype = torch.float64, dropout: float = 0.0) -> FMLMDistillation:
    """A teacher with non-trivial outputs and a student whose second time embedding moved away from zero."""
    torch.manual_seed(0)
    teacher = DiT(DiTConfig(V, D, 2, 2, cond_dim=16, dropout=dropout)).to(dtype)
    with torch.no_grad():
        teacher.final.head.weight.normal_(0, 0.3)
        for block in teacher.blocks:
            block.ada.weight.normal_(0, 0.1)
    distill = FMLMDistillation.from_teacher(teacher, method=method, ce_chunk=chunk)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in distill.student.time_embed_2.parameters():
            p.normal_(0, 0.3)
    return distill


def _off_times(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(seed)
    tau_s = torch.rand(n, generator=g, dtype=torch.float64) * 0.8
    tau_t = tau_s + torch.rand(n, generator=g, dtype=torch.float64) * (1 - tau_s)
    tau_s[0], tau_t[0] = 0.0, 1.0  # a boundary row
    return tau_s, tau_t


def test_unknown_method_and_forward_mode_attention_are_refused() -> None:
    teacher = _distill("semigroup").teacher
    with pytest.raises(ValueError, match=r"unknown distillation method 'mean'.*eulerian.*lagrangian.*semigroup"):
        FMLMDistillation.from_teacher(teacher, method="mean")
    flash = DiT(teacher.config.replace(attn_impl="flash"))
    for method in JVP_METHODS:
        with pytest.raises(ValueError, match="attn_impl"):
            FMLMDistillation.from_teacher(flash, method=method)
    FMLMDistillation.from_teacher(flash)  # the semigroup teacher needs no JVP


@pytest.mark.parametrize("method", JVP_METHODS)
def test_projected_teacher_equals_the_dense_reference(method: str) -> None:
    # Same ε: h_s = z_s E on the projected path, z_s itself (V-wide, lift = identity) on the dense one.
    distill = _distill(method)
    student, schedule = distill.student, distill.schedule
    tau_s, tau_t = _off_times(6, 2)
    x = torch.randint(0, V, (6, L), generator=gen(3))
    eps = torch.randn(6, L, V, generator=gen(4), dtype=torch.float64)
    s = schedule.gamma(tau_s)[:, None, None]
    z_s = (1 - s) * eps + s * F.one_hot(x, V).double()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):  # the fused CPU kernel has no forward AD
        projected = distill.off.target(
            distill.denoise, ProjectedSpace(student.embedding), schedule, z_s @ student.embedding, tau_s, tau_t
        )

        def dense(z: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return distill.denoise(student.embed_dense(z), a, b)

        if method == "lagrangian":
            parts = lagrangian_parts(dense, lambda p: p, schedule, z_s, tau_s, tau_t)
            reference = sparsemax(lagrangian_target(parts.d_x, parts.d_st_dtau, parts.coef))
        else:
            parts = eulerian_parts(dense, lambda p: p, schedule, z_s, tau_s, tau_t)
            reference = eulerian_target(parts.d_s, parts.d_st, parts.d_dir, parts.one_minus_t)
    assert torch.allclose(projected, reference, atol=1e-10)
    # and the student has moved: the teacher is not its own output
    assert (reference - distill.denoise(z_s @ student.embedding, tau_s, tau_t)).abs().max() > 1e-3


def test_lagrangian_teacher_lies_on_the_simplex() -> None:
    distill = _distill("lagrangian")
    tau_s, tau_t = _off_times(8, 5)
    h = torch.randn(8, L, D, generator=gen(6), dtype=torch.float64)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        parts = lagrangian_parts(
            distill.denoise, ProjectedSpace(distill.student.embedding).lift, distill.schedule, h, tau_s, tau_t
        )
        raw = lagrangian_target(parts.d_x, parts.d_st_dtau, parts.coef)
        target = distill.off.target(
            distill.denoise, ProjectedSpace(distill.student.embedding), distill.schedule, h, tau_s, tau_t
        )
    assert (raw < 0).any()  # the unprojected teacher leaves the simplex here ...
    assert (target >= 0).all() and torch.allclose(target.sum(-1), torch.ones(8, L, dtype=torch.float64))
    assert torch.allclose(target, sparsemax(raw))  # ... and the objective trains on its projection


@pytest.mark.parametrize("method", JVP_METHODS)
def test_chunked_equals_full_loss_and_gradients(method: str) -> None:
    full, chunked = _distill(method), _distill(method, chunk=7)  # 7 divides no row count
    x = torch.randint(0, V, (16, L), generator=gen(7))
    a, b = full(x, gen(8)), chunked(x, gen(8))
    metric = "se_off" if method == "eulerian" else "ce_off"
    assert set(a.metrics) == {"ce_diag", metric}
    assert torch.allclose(a.loss, b.loss, atol=1e-12)
    assert torch.allclose(a.metrics[metric], b.metrics[metric], atol=1e-12)
    grads_a = torch.autograd.grad(a.loss, list(full.student.parameters()))
    grads_b = torch.autograd.grad(b.loss, list(chunked.student.parameters()))
    for ga, gb in zip(grads_a, grads_b, strict=True):
        assert torch.allclose(ga, gb, atol=1e-10)


@pytest.mark.parametrize("method", JVP_METHODS)
def test_training_step_in_float32_with_dropout(method: str) -> None:
    distill = _distill(method, dtype=torch.float32, dropout=0.1).train()
    out = distill(torch.randint(0, V, (8, L), generator=gen(9)), gen(10))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is None for p in distill.teacher.parameters())
    assert distill.student.time_embed_2.mlp[2].weight.grad.abs().sum() > 0
