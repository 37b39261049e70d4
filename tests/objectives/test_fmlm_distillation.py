"""FMLM distillation: student = teacher at init, batch split, times, shared noise, samples."""

from __future__ import annotations

import pytest
import torch

from flm.flow import flow_map_sample, uniform_grid
from flm.model import DiT, DiTConfig
from flm.objectives import FLMObjective, FMLMDistillation, split_sizes
from tests.conftest import gen
from tests.objectives.vwide import VWideProbe

V, L, D = 97, 10, 16


def _teacher(dtype: torch.dtype = torch.float64) -> DiT:
    torch.manual_seed(0)
    teacher = DiT(DiTConfig(V, D, 2, 2, cond_dim=16)).to(dtype)
    with torch.no_grad():
        teacher.final.head.weight.normal_(0, 0.3)
        for block in teacher.blocks:
            block.ada.weight.normal_(0, 0.1)
    return teacher


def test_student_equals_teacher_at_initialization() -> None:
    teacher = _teacher()
    distill = FMLMDistillation.from_teacher(teacher)
    h = torch.randn(5, L, D, dtype=torch.float64)
    tau_s, tau_t = torch.rand(5, dtype=torch.float64), torch.rand(5, dtype=torch.float64)
    assert torch.allclose(distill.student(h, tau_s, tau_t), teacher(h, tau_s), atol=1e-12)
    assert all(not p.requires_grad for p in distill.teacher.parameters())
    assert distill.student.config.n_times == 2


def test_split_sizes_follow_the_paper() -> None:
    assert split_sizes(64, 0.5, 1 / 64) == (32, 1, 31)
    assert split_sizes(512, 0.5, 1 / 64) == (256, 8, 248)
    assert split_sizes(8, 0.5, 0.0) == (4, 0, 4)


def test_times_per_row_kind() -> None:
    distill = FMLMDistillation.from_teacher(_teacher())
    tau_s, tau_t = distill.draw_times(128, gen(1), torch.device("cpu"))
    n_diag, n_bnd, _ = split_sizes(128, 0.5, 1 / 64)
    assert torch.equal(tau_s[:n_diag], tau_t[:n_diag])
    assert tau_s[n_diag : n_diag + n_bnd].eq(0).all() and tau_t[n_diag : n_diag + n_bnd].eq(1).all()
    off_s, off_t = tau_s[n_diag + n_bnd :], tau_t[n_diag + n_bnd :]
    assert (off_s <= off_t).all() and (off_t <= 1).all() and (off_s >= 0).all()


def test_loss_trains_only_the_student_and_targets_are_probabilities() -> None:
    distill = FMLMDistillation.from_teacher(_teacher(torch.float32))
    x = torch.randint(0, V, (16, L))
    out = distill(x, gen(2))
    out.loss.backward()
    assert all(p.grad is None for p in distill.teacher.parameters())
    assert distill.student.embedding.grad is not None
    assert set(out.metrics) == {"ce_diag", "ce_off"}
    assert torch.isfinite(out.loss)


def test_diagonal_loss_at_init_is_the_teachers_entropy() -> None:
    # At step 0, δ_θ(z; τ, τ) = p^T(z, τ), so CE(p^T, δ_θ) is exactly the teacher's entropy.
    teacher = _teacher()
    distill = FMLMDistillation.from_teacher(teacher, diag_fraction=1.0, boundary_fraction=0.0)
    x = torch.randint(0, V, (6, L))
    tau = torch.rand(6, dtype=torch.float64)
    noise = torch.randn(6, L, D, dtype=torch.float64)
    out = distill.loss(x, tau, tau, noise, noise)
    assert set(out.metrics) == {"ce_diag"}
    h = (1 - distill.schedule.gamma(tau))[:, None, None] * noise + distill.schedule.gamma(tau)[:, None, None] * (
        teacher.embedding[x]
    )
    p = teacher(h, tau).softmax(-1)
    entropy = -(p * p.log()).sum(-1).mean()
    assert torch.allclose(out.loss, entropy, atol=1e-10)


def test_projected_and_dense_flow_map_samples_agree() -> None:
    distill = FMLMDistillation.from_teacher(_teacher())
    with torch.no_grad():
        distill.student.time_embed_2.mlp[2].weight.normal_(0, 0.2)
    eps = torch.randn(8, L, V, generator=gen(3), dtype=torch.float64)
    emb = distill.student.embedding
    for steps in (1, 2, 4):
        projected = distill.sample(8, L, steps, noise_h=eps @ emb)
        dense = flow_map_sample(
            lambda z, s, t: distill.denoise(distill.student.embed_dense(z), s, t), eps, uniform_grid(steps),
            distill.schedule,
        )
        assert torch.equal(projected, dense)


def test_fmlm_sampler_at_init_equals_flm_sampler() -> None:
    teacher = _teacher()
    distill = FMLMDistillation.from_teacher(teacher)
    flm = FLMObjective(teacher)
    noise = torch.randn(8, L, D, dtype=torch.float64)
    for steps in (1, 3):
        assert torch.equal(distill.sample(8, L, steps, noise_h=noise), flm.sample(8, L, steps, noise_h=noise))


def test_one_step_sampling_is_one_forward_pass() -> None:
    distill = FMLMDistillation.from_teacher(_teacher())
    calls = []
    handle = distill.student.register_forward_hook(lambda *a: calls.append(1))
    distill.sample(4, L, 1, gen(4))
    handle.remove()
    assert len(calls) == 1


def test_bad_arguments() -> None:
    teacher = _teacher()
    with pytest.raises(ValueError, match="n_times"):
        FMLMDistillation(teacher, teacher)
    with pytest.raises(ValueError, match="fraction"):
        FMLMDistillation.from_teacher(teacher, diag_fraction=1.5)
    with pytest.raises(ValueError, match="ce_chunk"):
        FMLMDistillation.from_teacher(teacher, ce_chunk=-1)


def _distill_pair(chunk: int, dtype: torch.dtype = torch.float64) -> tuple[FMLMDistillation, FMLMDistillation]:
    """The same student and teacher twice, the second with ``ce_chunk``; the student's second time
    embedding is randomized so the semigroup target differs from the teacher's."""
    full = FMLMDistillation.from_teacher(_teacher(dtype))
    with torch.no_grad():
        for p in full.student.time_embed_2.parameters():
            p.normal_(0, 0.3)
    chunked = FMLMDistillation.from_teacher(_teacher(dtype), ce_chunk=chunk)
    chunked.student.load_state_dict(full.student.state_dict())
    return full, chunked


def test_chunked_distillation_equals_full_loss_and_gradients() -> None:
    full, chunked = _distill_pair(7)  # 7 divides neither the diagonal nor the off-diagonal tokens
    x = torch.randint(0, V, (16, L), generator=gen(20))
    a, b = full(x, gen(21)), chunked(x, gen(21))
    assert torch.allclose(a.loss, b.loss, atol=1e-12)
    for name in ("ce_diag", "ce_off"):
        assert torch.allclose(a.metrics[name], b.metrics[name], atol=1e-12)
    grads_a = torch.autograd.grad(a.loss, list(full.student.parameters()))
    grads_b = torch.autograd.grad(b.loss, list(chunked.student.parameters()))
    for ga, gb in zip(grads_a, grads_b, strict=True):
        assert torch.allclose(ga, gb, atol=1e-10)


def test_chunked_distillation_never_holds_all_logits() -> None:
    _, chunked = _distill_pair(8, torch.float32)
    x = torch.randint(0, V, (8, L))
    probe = VWideProbe(V, 9)  # every V-wide tensor of more than one chunk of rows
    with probe:
        chunked(x, gen(22)).loss.backward()
    # parameter-sized only: E, Eᵀ, and [E_T  E_S]ᵀ in the Gram matrix of the joint noise factor
    assert [e for e in probe.events if e[1] not in {(D, V), (V, D), (2 * D, V)}] == []
    with VWideProbe(V, 8) as probe:  # and the chunks do happen
        chunked(x, gen(22)).loss.backward()
    assert probe.events
