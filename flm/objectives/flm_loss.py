"""FLM training objective and sampler wiring (MATH.md §1, §3).

``ℓ(θ) = E_{x, ε, τ} [ mean_l -log p_θ(x_l | z_γ, τ) ]`` with ``τ`` stratified on ``[0, 1]`` and
``γ = Γ(τ)``; optionally weighted by a learned ``w(τ)``: ``exp(-w) ℓ + w``.
The default path never forms ``z_γ``: the network input is ``h = (1-γ) ξF + γ E[x]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flm.flow import (
    BatchSlice,
    TimeSchedule,
    dense_state,
    flm_sample,
    project_noise,
    projected_state,
    stratified_times,
    uniform_grid,
)
from flm.model import DiT
from flm.objectives.common import (
    LossOutput,
    ProjectedSpace,
    at_least_float32,
    chunked_token_cross_entropy,
    token_cross_entropy,
)
from flm.objectives.loss_weight import LossWeight

__all__ = ["FLMObjective"]


class FLMObjective(nn.Module):
    """Wraps a one-time DiT backbone (``n_times = 1``) with the FLM loss and sampler.

    Args:
        backbone: the denoiser network ``p_θ(· | h, τ)``.
        learn_loss_weight: add the learnable weighting ``w(τ)`` (MATH.md §1).
        ce_chunk: if > 0, the training loss computes the output head and cross entropy this many
            tokens at a time (checkpointed), so the ``(B, L, V)`` logits never exist at once.
    """

    def __init__(self, backbone: DiT, learn_loss_weight: bool = False, ce_chunk: int = 0) -> None:
        super().__init__()
        if backbone.config.n_times != 1:
            raise ValueError(f"FLM needs a backbone with n_times=1, got {backbone.config.n_times}")
        if ce_chunk < 0:
            raise ValueError(f"ce_chunk must be >= 0, got {ce_chunk}")
        self.backbone = backbone
        self.ce_chunk = ce_chunk
        self.schedule = TimeSchedule(backbone.config.vocab_size)
        self.loss_weight = LossWeight() if learn_loss_weight else None

    # ---------------------------------------------------------------- training
    def forward(
        self, x: Tensor, generator: torch.Generator | None = None, batch: BatchSlice | None = None
    ) -> LossOutput:
        """Loss on clean tokens ``x`` ``(B, L)`` with fresh stratified times and projected noise.

        ``batch``: which rows of the global batch ``x`` is (times drawn for the whole global batch);
        ``None`` is the whole batch, times and noise both from ``generator``.
        """
        batch = batch or BatchSlice.local(x.shape[0], generator)
        tau = stratified_times(batch.size, batch.generator, x.device)[batch.rows(x.shape[0])]
        noise_h = ProjectedSpace(self.backbone.embedding).noise(tuple(x.shape), generator)
        return self.loss(x, tau, noise_h)

    def loss(self, x: Tensor, tau: Tensor, noise_h: Tensor) -> LossOutput:
        """Projected path: ``h = (1-γ) noise_h + γ E[x]``.

        Args:
            x: ``(B, L)`` clean tokens.
            tau: ``(B,)`` model times.
            noise_h: ``(B, L, d)`` projected noise (``ξF``, or ``εE`` to share noise with the dense path).
        """
        gamma = self.schedule.gamma(tau)
        h = projected_state(x, gamma, noise_h, self.backbone.embedding)
        return self._from_input(h, x, tau)

    def loss_dense(self, x: Tensor, tau: Tensor, eps: Tensor) -> LossOutput:
        """Reference path straight from the formulas: ``z_γ = (1-γ)ε + γ e(x)``, input ``z_γ E``.

        ``eps`` is ``(B, L, V)``; materializes ``V``-wide tensors (tests and benchmarks only).
        """
        z = dense_state(x, self.schedule.gamma(tau), eps)
        return self._from_input(self.backbone.embed_dense(z), x, tau)

    def _from_input(self, h: Tensor, x: Tensor, tau: Tensor) -> LossOutput:
        if self.ce_chunk:
            nll = chunked_token_cross_entropy(self.backbone.features(h, tau), self.backbone.head, x, self.ce_chunk)
        else:
            nll = token_cross_entropy(self.backbone(h, tau), x)
        per_token = self.loss_weight.weigh(nll, tau) if self.loss_weight is not None else nll
        return LossOutput(per_token.mean(), {"nll": nll.detach().mean()})

    # ---------------------------------------------------------------- sampling
    def denoise(self, h: Tensor, tau: Tensor) -> Tensor:
        """``p_θ(· | h, τ)``: ``(B, L, d)``, ``(B,)`` → probabilities ``(B, L, V)``."""
        return at_least_float32(self.backbone(h, tau)).softmax(-1)

    @torch.no_grad()
    def sample(
        self, n: int, length: int, steps: int, generator: torch.Generator | None = None,
        noise_h: Tensor | None = None,
    ) -> Tensor:
        """``steps``-NFE Euler sampling on the projected path → ``(n, length)`` token ids.

        ``noise_h`` ``(n, length, d)`` overrides the initial noise (e.g. ``εE`` for a shared-noise test).
        """
        space = ProjectedSpace(self.backbone.embedding)
        h0 = space.noise((n, length), generator) if noise_h is None else noise_h
        grid = uniform_grid(steps, h0.device)
        return flm_sample(self.denoise, h0, grid, self.schedule, lift=space.lift)

    @torch.no_grad()
    def sample_dense(self, eps: Tensor, steps: int) -> Tensor:
        """Reference sampler on dense states ``z`` ``(B, L, V)`` starting from ``eps``."""
        grid = uniform_grid(steps, eps.device)
        return flm_sample(
            lambda z, tau: self.denoise(self.backbone.embed_dense(z), tau), eps, grid, self.schedule
        )

    def project(self, eps: Tensor) -> Tensor:
        """``εE`` for a dense ``ε`` ``(B, L, V)`` (shares noise between the two paths)."""
        return project_noise(eps, self.backbone.embedding)
