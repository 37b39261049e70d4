"""FMLM: one-stage semigroup cross-entropy distillation of an FLM teacher (MATH.md §2, §3).

Batch split by fixed fractions (row order: diagonal, boundary, off-diagonal):

* diagonal: ``τ_s = τ_t ~ U[0,1]``; target the frozen teacher ``p^T(z_s, τ_s)``;
* boundary: ``(τ_s, τ_t) = (0, 1)``, treated as off-diagonal;
* off-diagonal: ``τ_d ~ U[0,1]``, ``τ_s ~ U[0, 1-τ_d]``, ``τ_t = τ_s + τ_d``, ``τ_u = (τ_s+τ_t)/2``;
  target ``δ̄ = λ δ_θ(z_s; s,u) + (1-λ) δ_θ(X_{s,u}(z_s); u,t)`` from the online student, no gradient.

Loss ``CE(target, δ_θ(z_s; τ_s, τ_t))`` averaged over tokens. Teacher and student see the same
noise through the joint factor of ``[E_T  E_S]``; no ``V``-wide noise or state exists.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from flm.flow import (
    TimeSchedule,
    flow_map,
    flow_map_sample,
    noise_factor,
    projected_state,
    sample_projected_noise,
    semigroup_target,
    semigroup_weight,
    stratified_times,
    uniform_grid,
)
from flm.model import DiT
from flm.objectives.common import (
    LossOutput,
    ProjectedSpace,
    at_least_float32,
    chunked_soft_cross_entropy,
    soft_cross_entropy,
)

__all__ = ["FMLMDistillation", "split_sizes"]


def split_sizes(batch: int, diag_fraction: float, boundary_fraction: float) -> tuple[int, int, int]:
    """Rows ``(diagonal, boundary, off-diagonal)`` of a batch; fixed, independent of the step."""
    n_diag = round(batch * diag_fraction)
    n_bnd = max(1, round(batch * boundary_fraction)) if boundary_fraction > 0 else 0
    n_bnd = min(n_bnd, batch - n_diag)
    return n_diag, n_bnd, batch - n_diag - n_bnd


class FMLMDistillation(nn.Module):
    """Student flow map ``δ_θ(z; τ_s, τ_t)`` distilled from a frozen FLM teacher ``p^T(z, τ)``.

    Args:
        student: two-time DiT (``n_times = 2``).
        teacher: one-time DiT (``n_times = 1``); frozen here.
        diag_fraction: share of diagonal rows (paper: 1/2).
        boundary_fraction: share of ``(0, 1)`` rows (paper: 1/64).
        ce_chunk: if > 0, the loss runs the output heads (student, teacher targets, semigroup
            targets and the midpoint lift) this many tokens at a time, so no ``(B, L, V)`` tensor
            exists (:func:`~flm.objectives.common.chunked_soft_cross_entropy`).
    """

    def __init__(
        self, student: DiT, teacher: DiT, diag_fraction: float = 0.5, boundary_fraction: float = 1 / 64,
        ce_chunk: int = 0,
    ) -> None:
        super().__init__()
        if student.config.n_times != 2 or teacher.config.n_times != 1:
            raise ValueError("FMLM needs a student with n_times=2 and a teacher with n_times=1")
        if student.config.vocab_size != teacher.config.vocab_size:
            raise ValueError("student and teacher vocabularies differ")
        if not 0.0 <= diag_fraction <= 1.0 or not 0.0 <= boundary_fraction <= 1.0:
            raise ValueError("diag_fraction and boundary_fraction must lie in [0, 1]")
        if ce_chunk < 0:
            raise ValueError(f"ce_chunk must be >= 0, got {ce_chunk}")
        self.student = student
        self.teacher = teacher.requires_grad_(False).eval()
        self.ce_chunk = ce_chunk
        self.schedule = TimeSchedule(student.config.vocab_size)
        self.diag_fraction, self.boundary_fraction = diag_fraction, boundary_fraction

    @classmethod
    def from_teacher(cls, teacher: DiT, **kwargs: float | int) -> FMLMDistillation:
        """Student = teacher's weights (pass the EMA copy) plus a zero-initialized second time
        embedding, so ``δ_θ(z; τ, τ') = p^T(z, τ)`` exactly at step 0.

        Raises:
            ValueError: ``teacher`` is not an FLM denoiser (one time input, bidirectional attention).
        """
        if teacher.config.n_times != 1 or teacher.config.causal:
            raise ValueError(f"the FLM teacher must have n_times=1 and causal=False, got n_times="
                             f"{teacher.config.n_times}, causal={teacher.config.causal} (not an FLM denoiser)")
        student = DiT(teacher.config.replace(n_times=2)).to(teacher.embedding.device, teacher.embedding.dtype)
        missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
        if unexpected or any(not k.startswith("time_embed_2.") for k in missing):
            raise RuntimeError(f"teacher/student mismatch: missing={missing}, unexpected={unexpected}")
        return cls(student, copy.deepcopy(teacher), **kwargs)

    def train(self, mode: bool = True) -> FMLMDistillation:
        """Train mode for the student only: the teacher stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    # ---------------------------------------------------------------- training
    def draw_times(self, batch: int, generator: torch.Generator | None, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(τ_s, τ_t)`` ``(B,)`` each, rows ordered diagonal / boundary / off-diagonal."""
        n_diag, n_bnd, n_off = split_sizes(batch, self.diag_fraction, self.boundary_fraction)
        diag = stratified_times(n_diag, generator, device)
        tau_d = stratified_times(n_off, generator, device)
        off_s = torch.rand(n_off, generator=generator, device=device) * (1 - tau_d)
        zeros, ones = torch.zeros(n_bnd, device=device), torch.ones(n_bnd, device=device)
        tau_s = torch.cat([diag, zeros, off_s])
        tau_t = torch.cat([diag, ones, (off_s + tau_d).clamp(max=1.0)])
        return tau_s, tau_t

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> LossOutput:
        """Distillation loss on clean tokens ``x`` ``(B, L)`` with fresh times and shared noise."""
        tau_s, tau_t = self.draw_times(x.shape[0], generator, x.device)
        e_t, e_s = self.teacher.embedding, self.student.embedding
        joint = sample_projected_noise(noise_factor(torch.cat([e_t, e_s], dim=1)), tuple(x.shape), generator)
        noise_t, noise_s = joint.split([e_t.shape[1], e_s.shape[1]], dim=-1)
        return self.loss(x, tau_s, tau_t, noise_t, noise_s)

    def loss(self, x: Tensor, tau_s: Tensor, tau_t: Tensor, noise_t: Tensor, noise_s: Tensor) -> LossOutput:
        """Loss for given times and the two projections of one noise draw.

        Args:
            x: ``(B, L)`` clean tokens, rows ordered as :meth:`draw_times` orders them.
            tau_s, tau_t: ``(B,)`` model times.
            noise_t, noise_s: ``(B, L, d_T)``, ``(B, L, d_S)``: ``εE_T`` and ``εE_S`` (or their ``ξF`` law).
        """
        n_diag = split_sizes(x.shape[0], self.diag_fraction, self.boundary_fraction)[0]
        gamma_s = self.schedule.gamma(tau_s)
        h_s = projected_state(x, gamma_s, noise_s, self.student.embedding)
        if self.ce_chunk:
            ce = self._chunked_ce(x, h_s, gamma_s, tau_s, tau_t, noise_t, n_diag)
        else:
            logits = self.student(h_s, tau_s, tau_t)
            with torch.no_grad():
                target = torch.cat([
                    self._teacher_target(x[:n_diag], gamma_s[:n_diag], tau_s[:n_diag], noise_t[:n_diag]),
                    self._semigroup_target(h_s[n_diag:], tau_s[n_diag:], tau_t[n_diag:]),
                ])
            ce = soft_cross_entropy(logits, target)
        parts = {"ce_diag": ce[:n_diag], "ce_off": ce[n_diag:]}
        metrics = {name: part.detach().mean() for name, part in parts.items() if part.numel()}
        return LossOutput(ce.mean(), metrics)

    def _teacher_target(self, x: Tensor, gamma: Tensor, tau: Tensor, noise_t: Tensor) -> Tensor:
        h_t = projected_state(x, gamma, noise_t, self.teacher.embedding)
        return at_least_float32(self.teacher(h_t, tau)).softmax(-1)

    def _semigroup_target(self, h_s: Tensor, tau_s: Tensor, tau_t: Tensor) -> Tensor:
        """``δ̄ = λ D_su + (1-λ) D_ut`` with ``D_ut`` evaluated at ``X_{s,u}(z_s)`` (MATH.md §2)."""
        tau_u = 0.5 * (tau_s + tau_t)
        s, u, t = self.schedule.gamma(tau_s), self.schedule.gamma(tau_u), self.schedule.gamma(tau_t)
        d_su = self.denoise(h_s, tau_s, tau_u)
        h_u = flow_map(h_s, ProjectedSpace(self.student.embedding).lift(d_su), s, u)
        d_ut = self.denoise(h_u, tau_u, tau_t)
        return semigroup_target(d_su, d_ut, semigroup_weight(s, u, t))

    def _chunked_ce(
        self, x: Tensor, h_s: Tensor, gamma_s: Tensor, tau_s: Tensor, tau_t: Tensor, noise_t: Tensor, n_diag: int
    ) -> Tensor:
        """The per-token loss ``(B, L)`` of :meth:`loss` with ``V``-wide tensors ``ce_chunk`` tokens at a time.

        The networks run to their ``d``-wide features; every head (and the midpoint's lift
        ``δ_{s,u} E``) runs chunk by chunk: diagonal rows against ``softmax(head_T(f_T))``,
        off-diagonal rows against ``λ softmax(head_S(f_su)) + (1-λ) softmax(head_S(f_ut))``.
        """
        student, chunk = self.student, self.ce_chunk
        feats = student.features(h_s, tau_s, tau_t)
        ones = torch.ones(n_diag, dtype=feats.dtype, device=feats.device)
        with torch.no_grad():
            h_t = projected_state(x[:n_diag], gamma_s[:n_diag], noise_t[:n_diag], self.teacher.embedding)
            f_t = self.teacher.features(h_t, tau_s[:n_diag])
            h_s_off, ts, tt = h_s[n_diag:], tau_s[n_diag:], tau_t[n_diag:]
            tu = 0.5 * (ts + tt)
            s, u, t = self.schedule.gamma(ts), self.schedule.gamma(tu), self.schedule.gamma(tt)
            f_su = student.features(h_s_off, ts, tu)
            h_u = flow_map(h_s_off, self._chunked_lift(f_su), s, u)
            f_ut = student.features(h_u, tu, tt)
            lam = semigroup_weight(s, u, t).to(feats.dtype)
        diag = chunked_soft_cross_entropy(feats[:n_diag], student.head, [(f_t, self.teacher.head, ones)], chunk)
        off = chunked_soft_cross_entropy(
            feats[n_diag:], student.head, [(f_su, student.head, lam), (f_ut, student.head, 1 - lam)], chunk
        )
        return torch.cat([diag, off])

    def _chunked_lift(self, features: Tensor) -> Tensor:
        """``softmax(head_S(f)) E_S`` ``(B, L, d)`` from features ``(B, L, d)``, ``ce_chunk`` tokens at a time."""
        lift = ProjectedSpace(self.student.embedding).lift
        flat = features.flatten(0, 1)
        parts = [lift(at_least_float32(self.student.head(f)).softmax(-1)) for f in flat.split(self.ce_chunk)]
        return torch.cat(parts).view_as(features)

    # ---------------------------------------------------------------- sampling
    def denoise(self, h: Tensor, tau_s: Tensor, tau_t: Tensor) -> Tensor:
        """``δ_θ(z; τ_s, τ_t)`` from projected ``h`` ``(B, L, d)`` → probabilities ``(B, L, V)``."""
        return at_least_float32(self.student(h, tau_s, tau_t)).softmax(-1)

    @torch.no_grad()
    def sample(
        self, n: int, length: int, steps: int, generator: torch.Generator | None = None, g: float = 0.0,
        noise_h: Tensor | None = None,
    ) -> Tensor:
        """``steps``-NFE flow-map sampling (``g``: re-noising) → ``(n, length)`` token ids.

        One step is ``argmax δ_θ(ε; 0, 1)``: a single forward pass for the whole sequence.
        """
        space = ProjectedSpace(self.student.embedding)
        h0 = space.noise((n, length), generator) if noise_h is None else noise_h
        grid = uniform_grid(steps, h0.device)
        return flow_map_sample(
            self.denoise, h0, grid, self.schedule, lift=space.lift, g=g,
            noise=space.noise_fn((n, length), generator),
        )
