"""FMLM: one-stage distillation of an FLM teacher into a flow map (MATH.md §2, §3).

Batch split by fixed fractions (row order: diagonal, boundary, off-diagonal):

* diagonal: ``τ_s = τ_t ~ U[0,1]``; target the frozen teacher ``p^T(z_s, τ_s)``;
* boundary: ``(τ_s, τ_t) = (0, 1)``, treated as off-diagonal;
* off-diagonal: ``τ_d ~ U[0,1]``, ``τ_s ~ U[0, 1-τ_d]``, ``τ_t = τ_s + τ_d``, ``τ_u = (τ_s+τ_t)/2``;
  target from the online student, no gradient, by ``method`` (:mod:`flm.objectives.off_diagonal`):
  semigroup (default, the paper's) ``δ̄ = λ δ_θ(z_s; s,u) + (1-λ) δ_θ(X_{s,u}(z_s); u,t)``, or the
  Lagrangian or Eulerian teacher.

Loss ``CE(target, δ_θ(z_s; τ_s, τ_t))`` (squared error on the Eulerian off-diagonal rows) averaged
over tokens. Teacher and student see the same noise through the joint factor of ``[E_T  E_S]``;
no ``V``-wide noise or state exists.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, nn

from flm.flow import (
    BatchSlice,
    TimeSchedule,
    flow_map_sample,
    noise_factor,
    projected_state,
    sample_projected_noise,
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
from flm.objectives.off_diagonal import off_diagonal

__all__ = ["FMLMDistillation", "interleaved_rows", "split_sizes"]


def split_sizes(batch: int, diag_fraction: float, boundary_fraction: float) -> tuple[int, int, int]:
    """Rows ``(diagonal, boundary, off-diagonal)`` of a batch; fixed, independent of the step."""
    n_diag = round(batch * diag_fraction)
    n_bnd = max(1, round(batch * boundary_fraction)) if boundary_fraction > 0 else 0
    n_bnd = min(n_bnd, batch - n_diag)
    return n_diag, n_bnd, batch - n_diag - n_bnd


def interleaved_rows(sizes: tuple[int, ...]) -> np.ndarray:
    """Global row indices (rows grouped by kind, in the order of ``sizes``) dealt evenly.

    Row ``i`` of a kind with ``c`` rows gets the key ``(i + ½) / c``; sorting by it (stably, so
    ties keep the kind order) interleaves the kinds, and every contiguous slice of the result holds
    each kind in proportion to its share, within one row.
    """
    keys = np.concatenate([(np.arange(c) + 0.5) / c for c in sizes if c])
    return np.argsort(keys, kind="stable")


class FMLMDistillation(nn.Module):
    """Student flow map ``δ_θ(z; τ_s, τ_t)`` distilled from a frozen FLM teacher ``p^T(z, τ)``.

    Args:
        student: two-time DiT (``n_times = 2``).
        teacher: one-time DiT (``n_times = 1``); frozen here.
        diag_fraction: share of diagonal rows (paper: 1/2).
        boundary_fraction: share of ``(0, 1)`` rows (paper: 1/64).
        ce_chunk: if > 0, the loss runs the output heads (student, teacher targets, off-diagonal
            targets and the lifts ``δE``) this many tokens at a time, so no ``(B, L, V)`` tensor
            exists (:func:`~flm.objectives.common.chunked_soft_cross_entropy`).
        method: the off-diagonal teacher: ``"semigroup"`` (paper), ``"lagrangian"`` or
            ``"eulerian"`` (:func:`~flm.objectives.off_diagonal.off_diagonal`; the last two take
            JVPs of the student, so its attention must be ``attn_impl="sdpa"``).
    """

    def __init__(
        self, student: DiT, teacher: DiT, diag_fraction: float = 0.5, boundary_fraction: float = 1 / 64,
        ce_chunk: int = 0, method: str = "semigroup",
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
        self.off = off_diagonal(method)
        if self.off.jvp and student.config.attn_impl != "sdpa":
            raise ValueError(f"method={method!r} differentiates the student in forward mode, which "
                             f"attn_impl={student.config.attn_impl!r} cannot: use attn_impl='sdpa'")
        self.student = student
        self.teacher = teacher.requires_grad_(False).eval()
        self.ce_chunk = ce_chunk
        self.schedule = TimeSchedule(student.config.vocab_size)
        self.diag_fraction, self.boundary_fraction = diag_fraction, boundary_fraction

    @classmethod
    def from_teacher(cls, teacher: DiT, **kwargs: float | int | str) -> FMLMDistillation:
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

    def slice_times(self, batch: BatchSlice, n: int, device: torch.device) -> tuple[Tensor, Tensor, int]:
        """This slice's ``(τ_s, τ_t)`` ``(n,)`` each and its number of diagonal rows.

        The split and the times are drawn for the whole global batch (:meth:`draw_times`). The global
        rows are dealt to slices evenly by kind (:func:`interleaved_rows`, which depends on the sizes
        only, so no count needs a device read), and a slice keeps the order diagonal / boundary /
        off-diagonal. The union of the slices is the global draw, however it is cut.
        """
        tau_s, tau_t = self.draw_times(batch.size, batch.generator, device)
        sizes, mine = split_sizes(batch.size, self.diag_fraction, self.boundary_fraction), batch.rows(n)
        if n == batch.size:  # the whole batch (one worker, no accumulation): nothing to deal
            return tau_s, tau_t, sizes[0]
        rows = np.sort(interleaved_rows(sizes)[mine])
        index = torch.from_numpy(rows).to(device, non_blocking=True)
        return tau_s[index], tau_t[index], int((rows < sizes[0]).sum())

    def forward(
        self, x: Tensor, generator: torch.Generator | None = None, batch: BatchSlice | None = None
    ) -> LossOutput:
        """Distillation loss on clean tokens ``x`` ``(B, L)`` with fresh times and shared noise.

        ``batch``: which rows of the global batch ``x`` is (:meth:`slice_times`); ``None`` is the
        whole batch, times and noise both from ``generator``.
        """
        batch = batch or BatchSlice.local(x.shape[0], generator)
        tau_s, tau_t, n_diag = self.slice_times(batch, x.shape[0], x.device)
        e_t, e_s = self.teacher.embedding, self.student.embedding
        joint = sample_projected_noise(noise_factor(torch.cat([e_t, e_s], dim=1)), tuple(x.shape), generator)
        noise_t, noise_s = joint.split([e_t.shape[1], e_s.shape[1]], dim=-1)
        return self.loss(x, tau_s, tau_t, noise_t, noise_s, n_diag)

    def loss(
        self, x: Tensor, tau_s: Tensor, tau_t: Tensor, noise_t: Tensor, noise_s: Tensor, n_diag: int | None = None
    ) -> LossOutput:
        """Loss for given times and the two projections of one noise draw.

        Args:
            x: ``(B, L)`` clean tokens, rows ordered as :meth:`draw_times` orders them.
            tau_s, tau_t: ``(B,)`` model times.
            noise_t, noise_s: ``(B, L, d_T)``, ``(B, L, d_S)``: ``εE_T`` and ``εE_S`` (or their ``ξF`` law).
            n_diag: diagonal rows (the first ones); ``None``: the fixed split of a ``B``-row batch.
        """
        if n_diag is None:
            n_diag = split_sizes(x.shape[0], self.diag_fraction, self.boundary_fraction)[0]
        gamma_s = self.schedule.gamma(tau_s)
        h_s = projected_state(x, gamma_s, noise_s, self.student.embedding)
        if self.ce_chunk:
            ce = self._chunked_ce(x, h_s, gamma_s, tau_s, tau_t, noise_t, n_diag)
        else:
            logits = self.student(h_s, tau_s, tau_t)
            with torch.no_grad():
                t_diag = self._teacher_target(x[:n_diag], gamma_s[:n_diag], tau_s[:n_diag], noise_t[:n_diag])
                t_off = self.off.target(
                    self.denoise, ProjectedSpace(self.student.embedding), self.schedule,
                    h_s[n_diag:], tau_s[n_diag:], tau_t[n_diag:],
                )
            ce = torch.cat([soft_cross_entropy(logits[:n_diag], t_diag), self.off.loss(logits[n_diag:], t_off)])
        parts = {"ce_diag": ce[:n_diag], self.off.metric: ce[n_diag:]}
        metrics = {name: part.detach().mean() for name, part in parts.items() if part.numel()}
        return LossOutput(ce.mean(), metrics)

    def _teacher_target(self, x: Tensor, gamma: Tensor, tau: Tensor, noise_t: Tensor) -> Tensor:
        h_t = projected_state(x, gamma, noise_t, self.teacher.embedding)
        return at_least_float32(self.teacher(h_t, tau)).softmax(-1)

    def _chunked_ce(
        self, x: Tensor, h_s: Tensor, gamma_s: Tensor, tau_s: Tensor, tau_t: Tensor, noise_t: Tensor, n_diag: int
    ) -> Tensor:
        """The per-token loss ``(B, L)`` of :meth:`loss` with ``V``-wide tensors ``ce_chunk`` tokens at a time.

        The networks run to their ``d``-wide features; every head (and every lift ``δE``) runs
        chunk by chunk: diagonal rows against ``softmax(head_T(f_T))``, off-diagonal rows by the
        method's chunked path (:class:`~flm.objectives.off_diagonal.OffDiagonal`).
        """
        student, chunk = self.student, self.ce_chunk
        feats = student.features(h_s, tau_s, tau_t)
        ones = torch.ones(n_diag, dtype=feats.dtype, device=feats.device)
        with torch.no_grad():
            h_t = projected_state(x[:n_diag], gamma_s[:n_diag], noise_t[:n_diag], self.teacher.embedding)
            f_t = self.teacher.features(h_t, tau_s[:n_diag])
        diag = chunked_soft_cross_entropy(feats[:n_diag], student.head, [(f_t, self.teacher.head, ones)], chunk)
        off = self.off.chunked(
            student, self.schedule, feats[n_diag:], h_s[n_diag:], tau_s[n_diag:], tau_t[n_diag:], chunk
        )
        return torch.cat([diag, off])

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
