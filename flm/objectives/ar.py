"""The autoregressive baseline: next-token cross entropy and cached ancestral sampling (MATH.md §6).

``ℓ(θ) = E_x [ (1/L) Σ_l -log p_θ(x_l | ⟨s⟩, x_{<l}) ]`` with a causal, time-free DiT of vocabulary
``V + 1``: the extra id ``V`` is the start token ``⟨s⟩``, whose logit is dropped before every
softmax and every draw, so ``p_θ`` lives on the ``V`` real tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flm.flow import BatchSlice, gumbel_max
from flm.model import DiT, KVCache
from flm.objectives.common import LossOutput, chunked_token_cross_entropy, token_cross_entropy

__all__ = ["ARObjective"]


class ARObjective(nn.Module):
    """Wraps a causal DiT (``causal=True``, ``n_times=0``, ``vocab_size = V + 1``) as a left-to-right LM.

    Args:
        backbone: the network; its vocabulary is the data's ``V`` plus the start token ``V``.
        ce_chunk: if > 0, the loss computes the head and cross entropy this many tokens at a time
            (checkpointed), so the ``(B, L, V)`` logits never exist at once.
    """

    def __init__(self, backbone: DiT, ce_chunk: int = 0) -> None:
        super().__init__()
        cfg = backbone.config
        if not cfg.causal or cfg.n_times != 0:
            raise ValueError(f"AR needs a causal DiT with n_times=0, got causal={cfg.causal}, n_times={cfg.n_times}")
        if ce_chunk < 0:
            raise ValueError(f"ce_chunk must be >= 0, got {ce_chunk}")
        self.backbone = backbone
        self.ce_chunk = ce_chunk
        self.vocab_size = cfg.vocab_size - 1
        """``V``: real tokens; the start token ``⟨s⟩`` is id ``V``."""

    @property
    def start_id(self) -> int:
        """``⟨s⟩ = V``."""
        return self.vocab_size

    def shift_right(self, x: Tensor) -> Tensor:
        """Network input ``(⟨s⟩, x_1, ..., x_{L-1})`` ``(B, L)`` for targets ``x`` ``(B, L)``."""
        start = torch.full_like(x[:, :1], self.start_id)
        return torch.cat([start, x[:, :-1]], dim=1)

    # ---------------------------------------------------------------- training
    def forward(
        self, x: Tensor, generator: torch.Generator | None = None, batch: BatchSlice | None = None
    ) -> LossOutput:
        """Mean next-token NLL of ``x`` ``(B, L)``; ``generator`` and ``batch`` are unused (no times, no noise)."""
        h = self.backbone.embed_ids(self.shift_right(x))
        if self.ce_chunk:
            feats = self.backbone.features(h)
            nll = chunked_token_cross_entropy(feats, self.backbone.head, x, self.ce_chunk, classes=self.vocab_size)
        else:
            nll = token_cross_entropy(self.logits(h), x)
        return LossOutput(nll.mean(), {"nll": nll.detach().mean()})

    def logits(self, h: Tensor, cache: KVCache | None = None) -> Tensor:
        """Logits over the ``V`` real tokens ``(B, T, V)`` from inputs ``h`` ``(B, T, d)`` (``⟨s⟩`` dropped)."""
        return self.backbone(h, cache=cache)[..., : self.vocab_size]

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, n: int, length: int, steps: int = 0, generator: torch.Generator | None = None) -> Tensor:
        """``(n, length)`` ids, one position per network call through a :class:`KVCache` (``steps`` is ignored).

        ``x_l = argmax_v (logit_v + G_v)`` with float64 Gumbel noise ``G`` ``(n, V)`` per position.
        """
        cache = self.backbone.new_cache(n, length)
        out = torch.empty(n, length, dtype=torch.long, device=self.backbone.embedding.device)
        token = torch.full((n, 1), self.start_id, dtype=torch.long, device=out.device)
        for pos in range(length):
            out[:, pos] = gumbel_max(self.logits(self.backbone.embed_ids(token), cache)[:, -1], generator)
            token = out[:, pos : pos + 1]
        return out

    @torch.no_grad()
    def sample_nocache(self, n: int, length: int, steps: int = 0, generator: torch.Generator | None = None) -> Tensor:
        """Reference for :meth:`sample`: the whole prefix is recomputed at each position (same noise draws)."""
        seq = torch.full((n, 1), self.start_id, dtype=torch.long, device=self.backbone.embedding.device)
        for _ in range(length):
            nxt = gumbel_max(self.logits(self.backbone.embed_ids(seq))[:, -1], generator)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
        return seq[:, 1:]
