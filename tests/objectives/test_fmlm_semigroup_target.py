"""The semigroup distillation target, computed independently of the library (MATH.md §2, §3).

Written out here from MATH.md §2 with nothing but the networks, the schedule ``Γ`` and tensor
algebra (no midpoint, ``λ`` or flow-map helper): ``τ_u = (τ_s + τ_t)/2`` in MODEL time,
``D_su = δ_θ(z_s; τ_s, τ_u)``, ``z_u = (1-u)/(1-s) z_s + (u-s)/(1-s) D_su``, ``D_ut = δ_θ(z_u; τ_u, τ_t)``,
``λ = (1-t)(u-s)/((1-u)(t-s))``, target ``λ D_su + (1-λ) D_ut``, loss ``CE(target, δ_θ(z_s; τ_s, τ_t))``;
diagonal rows against the teacher. Compared with the objective after the student has moved away from
the teacher (every weight perturbed, the second time embedding included), on the full and the
chunked path. And the teacher's and the student's noises must be the two projections of ONE draw:
their cross-covariance is ``E_Tᵀ E_S`` (checked with ``E_S ≠ E_T``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from flm.model import DiT, DiTConfig
from flm.objectives import FMLMDistillation, split_sizes
from tests.conftest import gen

V, L, D = 97, 10, 16


def _moved(distill: FMLMDistillation, seed: int) -> FMLMDistillation:
    """Perturb every student weight, so the student is no longer the teacher."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in distill.student.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for p in distill.student.time_embed_2.parameters():
            p.normal_(0, 0.3)
    return distill


def _distill(chunk: int) -> FMLMDistillation:
    torch.manual_seed(0)
    teacher = DiT(DiTConfig(V, D, 2, 2, cond_dim=16)).double()
    with torch.no_grad():
        teacher.final.head.weight.normal_(0, 0.3)
        for block in teacher.blocks:
            block.ada.weight.normal_(0, 0.1)
    return _moved(FMLMDistillation.from_teacher(teacher, ce_chunk=chunk), 1)


def _independent_loss(
    distill: FMLMDistillation, x: Tensor, tau_s: Tensor, tau_t: Tensor, noise_t: Tensor, noise_s: Tensor, n_diag: int
) -> tuple[Tensor, Tensor]:
    """Mean per-token CE of the diagonal and the off-diagonal rows, straight from MATH.md §2."""
    student, teacher, gamma = distill.student, distill.teacher, distill.schedule.gamma
    e_s, e_t = student.embedding, teacher.embedding

    def col(c: Tensor) -> Tensor:
        return c[:, None, None]

    s, t = col(gamma(tau_s)), col(gamma(tau_t))
    h_s = (1 - s) * noise_s + s * e_s[x]  # z_s E_S
    logp = F.log_softmax(student(h_s, tau_s, tau_t), -1)
    with torch.no_grad():
        h_teacher = (1 - s[:n_diag]) * noise_t[:n_diag] + s[:n_diag] * e_t[x[:n_diag]]  # the same z_s, seen through E_T
        p_teacher = teacher(h_teacher, tau_s[:n_diag]).softmax(-1)
        ts, tt, hs, so, to = tau_s[n_diag:], tau_t[n_diag:], h_s[n_diag:], s[n_diag:], t[n_diag:]
        tu = (ts + tt) / 2  # midpoint in model time
        u = col(gamma(tu))
        d_su = student(hs, ts, tu).softmax(-1)
        h_u = (1 - u) / (1 - so) * hs + (u - so) / (1 - so) * (d_su @ e_s)
        d_ut = student(h_u, tu, tt).softmax(-1)
        lam = (1 - to) * (u - so) / ((1 - u) * (to - so))
        target = lam * d_su + (1 - lam) * d_ut
    ce_diag = -(p_teacher * logp[:n_diag]).sum(-1)
    ce_off = -(target * logp[n_diag:]).sum(-1)
    return ce_diag.mean(), ce_off.mean()


@pytest.mark.parametrize("chunk", [0, 7])
def test_objective_matches_an_independent_semigroup_target(chunk: int) -> None:
    distill = _distill(chunk)
    n = 24
    x = torch.randint(0, V, (n, L), generator=gen(2))
    tau_s, tau_t = distill.draw_times(n, gen(3), torch.device("cpu"))
    tau_s, tau_t = tau_s.double(), tau_t.double()
    n_diag, n_bnd, _ = split_sizes(n, distill.diag_fraction, distill.boundary_fraction)
    # off-diagonal rows strictly inside (0, 1) besides the boundary rows, so λ has no 0/0
    assert (tau_t[n_diag + n_bnd :] > tau_s[n_diag + n_bnd :]).all()
    noise_t = torch.randn(n, L, D, generator=gen(4), dtype=torch.float64)
    noise_s = torch.randn(n, L, D, generator=gen(5), dtype=torch.float64)
    out = distill.loss(x, tau_s, tau_t, noise_t, noise_s)
    ce_diag, ce_off = _independent_loss(distill, x, tau_s, tau_t, noise_t, noise_s, n_diag)
    assert torch.allclose(out.metrics["ce_diag"], ce_diag, rtol=0, atol=1e-10)
    assert torch.allclose(out.metrics["ce_off"], ce_off, rtol=0, atol=1e-10)
    # the student has moved: its own diagonal output is not the semigroup target
    assert abs(float(out.metrics["ce_off"]) - float(ce_diag)) > 1e-3


class _Recording(FMLMDistillation):
    """Keeps the noises that :meth:`forward` hands to :meth:`loss`."""

    def loss(self, x: Tensor, tau_s: Tensor, tau_t: Tensor, noise_t: Tensor, noise_s: Tensor, *args, **kwargs):
        self.seen = (noise_t.detach(), noise_s.detach())
        return super().loss(x, tau_s, tau_t, noise_t, noise_s, *args, **kwargs)


def test_teacher_and_student_noise_come_from_one_draw() -> None:
    # εE_T and εE_S for one ε: E[(εE_T)ᵀ(εE_S)] per position = E_Tᵀ E_S (and not 0, as independent draws give).
    torch.manual_seed(0)
    teacher = DiT(DiTConfig(V, D, 1, 2, cond_dim=16)).double()
    distill = _Recording.from_teacher(teacher)
    with torch.no_grad():
        distill.student.embedding.add_(0.5 * torch.randn_like(distill.student.embedding))
    e_t, e_s = distill.teacher.embedding, distill.student.embedding
    assert (e_t - e_s).abs().max() > 0.1
    cross, auto_s, count = torch.zeros(D, D, dtype=torch.float64), torch.zeros(D, D, dtype=torch.float64), 0
    g = gen(6)
    with torch.no_grad():
        for _ in range(30):
            distill(torch.randint(0, V, (64, 32), generator=g), g)
            nt, ns = (n.reshape(-1, D) for n in distill.seen)
            cross += nt.T @ ns
            auto_s += ns.T @ ns
            count += nt.shape[0]
    expected = e_t.T @ e_s
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    assert rel(cross / count, expected) < 0.1  # Monte Carlo, 61,440 positions: measured 0.026
    assert rel(auto_s / count, e_s.T @ e_s) < 0.1
