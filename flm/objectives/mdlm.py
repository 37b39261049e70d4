"""The MDLM baseline: absorbing-state masked diffusion with SUBS and the continuous NELBO (MATH.md §6).

``ℓ(θ) = E_{x, t, z_t} [ (1/L) Σ_{l: z_t,l = m} (1/t) · -log p_θ(x_l | z_t, t) ]``, ``α_t = 1 - t``,
on a bidirectional one-time DiT of vocabulary ``V + 1`` whose extra id ``m = V`` is the mask. SUBS:
the mask logit is dropped before the softmax, and unmasked positions copy their input (zero loss,
never resampled), so the cross entropy is computed on masked positions only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flm.flow import BatchSlice, mask_tokens, masked_sample, nelbo_weight, training_times
from flm.model import DiT
from flm.objectives.common import LossOutput, at_least_float32, chunked_token_cross_entropy, token_cross_entropy

__all__ = ["MDLMObjective"]


class MDLMObjective(nn.Module):
    """Wraps a bidirectional DiT (``causal=False``, ``n_times=1``, ``vocab_size = V + 1``) as an MDLM.

    Args:
        backbone: the denoiser ``p_θ(· | z_t, t)``, conditioned on ``t`` (1 = all masked).
        eps: training times are ``t ∈ [eps, 1)`` (keeps the weight ``1/t`` finite).
        ce_chunk: if > 0, the head and cross entropy run this many masked tokens at a time (checkpointed).
    """

    def __init__(self, backbone: DiT, eps: float = 1e-3, ce_chunk: int = 0) -> None:
        super().__init__()
        cfg = backbone.config
        if cfg.causal or cfg.n_times != 1:
            raise ValueError(f"MDLM needs a bidirectional DiT with n_times=1, got causal={cfg.causal}, "
                             f"n_times={cfg.n_times}")
        if ce_chunk < 0:
            raise ValueError(f"ce_chunk must be >= 0, got {ce_chunk}")
        self.backbone = backbone
        self.eps, self.ce_chunk = eps, ce_chunk
        self.vocab_size = cfg.vocab_size - 1
        """``V``: real tokens; the mask ``m`` is id ``V``."""

    @property
    def mask_id(self) -> int:
        """``m = V``."""
        return self.vocab_size

    # ---------------------------------------------------------------- training
    def forward(
        self, x: Tensor, generator: torch.Generator | None = None, batch: BatchSlice | None = None
    ) -> LossOutput:
        """NELBO per token of clean ``x`` ``(B, L)`` with fresh stratified times and masks.

        ``batch``: which rows of the global batch ``x`` is (times drawn for the whole global batch,
        masks from ``generator``); ``None`` is the whole batch.
        """
        batch = batch or BatchSlice.local(x.shape[0], generator)
        t = training_times(batch.size, self.eps, batch.generator, x.device)[batch.rows(x.shape[0])]
        z_t, masked = mask_tokens(x, t, self.mask_id, generator)
        return self.loss(x, z_t, masked, t)

    def loss(self, x: Tensor, z_t: Tensor, masked: Tensor, t: Tensor) -> LossOutput:
        """The NELBO for given masks.

        Args:
            x: ``(B, L)`` clean ids.
            z_t: ``(B, L)`` noised ids (``m`` where ``masked``).
            masked: ``(B, L)`` bool, ``z_t = m``.
            t: ``(B,)`` times.

        Returns:
            ``loss = Σ_{masked} nll / t / (B L)``; metrics ``masked_ce`` (mean nll on masked
            positions) and ``mask_rate``.
        """
        feats = self.backbone.features(self.backbone.embed_ids(z_t), t)[masked]  # (N, d)
        target = x[masked]
        if self.ce_chunk:
            nll = chunked_token_cross_entropy(feats[None], self.backbone.head, target[None], self.ce_chunk,
                                              classes=self.vocab_size)[0]
        else:
            nll = token_cross_entropy(self.backbone.head(feats)[None, :, : self.vocab_size], target[None])[0]
        weight = nelbo_weight(t)[:, None].expand_as(masked)[masked]
        loss = (weight * nll).sum() / x.numel()
        metrics = {"masked_ce": nll.detach().mean() if nll.numel() else nll.detach().sum(),
                   "mask_rate": masked.float().mean()}
        return LossOutput(loss, metrics)

    # ---------------------------------------------------------------- sampling
    def log_probs(self, z_t: Tensor, t: Tensor) -> Tensor:
        """``log p_θ(· | z_t, t)`` over the ``V`` clean tokens (mask logit dropped).

        ``z_t`` ``(B, L)``, ``t`` ``(B,)`` → ``(B, L, V)``.
        """
        logits = self.backbone(self.backbone.embed_ids(z_t), t)[..., : self.vocab_size]
        return at_least_float32(logits).log_softmax(-1)

    @torch.no_grad()
    def sample(self, n: int, length: int, steps: int, generator: torch.Generator | None = None) -> Tensor:
        """``steps``-NFE ancestral sampling from all-masked sequences → ``(n, length)`` ids in ``[0, V)``."""
        device = self.backbone.embedding.device
        return masked_sample(self.log_probs, (n, length), steps, self.mask_id, generator, device)
