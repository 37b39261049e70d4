"""The backbone's own small configuration (ARCHITECTURE.md rule 3)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

__all__ = ["DiTConfig"]


@dataclass(frozen=True)
class DiTConfig:
    """Shape and options of the DiT backbone.

    Attributes:
        vocab_size: ``V``, width of the input embedding and of the output head.
        d_model: hidden width ``d``.
        n_layers: number of transformer blocks.
        n_heads: attention heads (``d_model`` must be divisible by it).
        mlp_ratio: MLP hidden width as a multiple of ``d_model``.
        cond_dim: width of the time-conditioning vector ``c``.
        n_times: time inputs: 0 (none, e.g. an AR judge), 1 (FLM ``τ``), 2 (flow map ``τ_s, τ_t``).
        causal: causal attention (autoregressive use); bidirectional otherwise.
        dropout: dropout on the block outputs (attention and MLP, before their adaLN gates); none
            on the input embedding or the attention probabilities (the reference DiT).
        attn_impl: ``"sdpa"`` (torch ``scaled_dot_product_attention``) or ``"flash"`` (flash-attn,
            imported lazily; used where it can run: CUDA tensors in fp16/bf16, else the SDPA path
            with the same weights).
        softcap: attention logit soft-cap ``c``: scores ``c·tanh(q kᵀ/(c√d_h))`` before the softmax;
            ``0`` is off (the paper: 50).
        rope_base: rotary embedding base.
        time_freq_dim: width of the sinusoidal time features.
        time_scale: ``τ`` is multiplied by this before the sinusoids (the reference feeds ``τ``
            itself: 1; checkpoints record their value).
    """

    vocab_size: int
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    cond_dim: int = 128
    n_times: int = 1
    causal: bool = False
    dropout: float = 0.0
    attn_impl: Literal["sdpa", "flash"] = "sdpa"
    softcap: float = 0.0
    rope_base: float = 10000.0
    time_freq_dim: int = 256
    time_scale: float = 1000.0

    def __post_init__(self) -> None:
        if self.vocab_size < 2:
            raise ValueError(f"DiTConfig.vocab_size must be >= 2, got {self.vocab_size}")
        if self.d_model % self.n_heads:
            raise ValueError(f"DiTConfig.d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("DiTConfig: head dimension d_model / n_heads must be even (rotary embeddings)")
        if self.n_times not in (0, 1, 2):
            raise ValueError(f"DiTConfig.n_times must be 0, 1 or 2, got {self.n_times}")
        if self.attn_impl not in ("sdpa", "flash"):
            raise ValueError(f"DiTConfig.attn_impl must be 'sdpa' or 'flash', got {self.attn_impl!r}")
        if not self.softcap >= 0:
            raise ValueError(f"DiTConfig.softcap must be >= 0 (0 = off), got {self.softcap}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"DiTConfig.dropout must lie in [0, 1), got {self.dropout}")

    def replace(self, **changes: Any) -> DiTConfig:
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``DiTConfig(**d)`` rebuilds it."""
        return asdict(self)
