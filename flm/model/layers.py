"""Layers of the DiT backbone: time embedding, rotary embeddings, attention, adaLN-zero block."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flm.model.cache import KVCache

__all__ = ["DiTBlock", "FinalLayer", "Rotary", "TimeEmbedding", "attention", "modulate"]


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``x (1 + scale) + shift``; ``x`` ``(B, L, d)``, ``shift, scale`` ``(B, d)``."""
    return x * (1 + scale[:, None]) + shift[:, None]


class TimeEmbedding(nn.Module):
    """``τ ↦ MLP(sinusoidal(scale · τ))``: ``(B,)`` → ``(B, cond_dim)``.

    Args:
        scale: multiplies ``τ`` before the sinusoids (frequencies ``10000^{-i/half}``); a small
            scale keeps the features smooth in ``τ``.
        zero_last: zero-initialize the last linear layer (the flow map's second embedder
            starts at zero, so a student built from a teacher is the teacher at step 0).
    """

    def __init__(self, cond_dim: int, freq_dim: int = 256, zero_last: bool = False, scale: float = 1000.0) -> None:
        super().__init__()
        self.freq_dim, self.scale = freq_dim, scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        if zero_last:
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)

    def forward(self, tau: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=tau.device, dtype=torch.float32) / half)
        args = self.scale * tau.float()[:, None] * freqs[None]
        feats = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


class Rotary(nn.Module):
    """Rotary position embeddings applied to ``q, k`` ``(B, L, H, Dh)`` at positions ``offset + [0, L)``."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, q: Tensor, k: Tensor, offset: int = 0) -> tuple[Tensor, Tensor]:
        length = q.shape[1]
        pos = torch.arange(offset, offset + length, device=q.device, dtype=torch.float32)
        ang = pos[:, None] * self.inv_freq[None]  # (L, Dh/2)
        cos, sin = ang.cos()[None, :, None].to(q.dtype), ang.sin()[None, :, None].to(q.dtype)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool, dropout: float, impl: str) -> Tensor:
    """Multi-head attention: queries ``(B, T, H, Dh)``, keys/values ``(B, S, H, Dh)`` → ``(B, T, H, Dh)``.

    ``T < S`` happens with a key/value cache: the queries are the last ``T`` of the ``S`` positions,
    so the causal mask is aligned bottom-right (query ``i`` sees keys ``j <= S - T + i``).
    ``impl="flash"`` imports flash-attn lazily (CUDA, fp16/bf16 only; flash-attn >= 2.1 aligns its
    causal mask bottom-right too); ``"sdpa"`` uses torch's ``scaled_dot_product_attention``, which
    picks its own fused kernel.
    """
    if impl == "flash":
        try:
            from flash_attn import flash_attn_func
        except ImportError as err:  # pragma: no cover - depends on the optional gpu extra
            raise ImportError("attn_impl='flash' needs flash-attn: pip install 'flm[gpu]'") from err
        return flash_attn_func(q, k, v, dropout_p=dropout, causal=causal)
    t, s = q.shape[1], k.shape[1]
    mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t) if causal and 1 < t < s else None
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, dropout_p=dropout,
        is_causal=causal and t == s,
    )
    return out.transpose(1, 2)


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-zero time modulation (shift/scale/gate ×2)."""

    def __init__(
        self, d_model: int, n_heads: int, mlp_ratio: float, cond_dim: int, dropout: float,
        causal: bool, attn_impl: str, rope_base: float,
    ) -> None:
        super().__init__()
        self.n_heads, self.causal, self.attn_impl, self.dropout = n_heads, causal, attn_impl, dropout
        self.norm1 = nn.LayerNorm(d_model, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(d_model, elementwise_affine=False)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        hidden = int(mlp_ratio * d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d_model))
        self.rotary = Rotary(d_model // n_heads, rope_base)
        self.ada = nn.Linear(cond_dim, 6 * d_model) if cond_dim > 0 else None
        if self.ada is not None:
            nn.init.zeros_(self.ada.weight)
            nn.init.zeros_(self.ada.bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, c: Tensor | None, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        """``x`` ``(B, L, d)``, ``c`` ``(B, cond_dim)`` or None → ``(B, L, d)``.

        With ``cache``, ``x`` holds positions ``[cache.length, cache.length + L)``; this block's keys
        and values are stored in slot ``layer`` and the queries attend to every cached position.
        """
        if self.ada is not None and c is not None:
            sh1, sc1, g1, sh2, sc2, g2 = self.ada(F.silu(c)).chunk(6, dim=-1)
            a_in, gate1 = modulate(self.norm1(x), sh1, sc1), g1[:, None]
        else:
            a_in, gate1, sh2, sc2, g2 = self.norm1(x), 1.0, None, None, None
        b, length, d = x.shape
        q, k, v = self.qkv(a_in).view(b, length, 3, self.n_heads, d // self.n_heads).unbind(2)
        q, k = self.rotary(q, k, cache.length if cache is not None else 0)
        if cache is not None:
            k, v = cache.extend(layer, k, v)
        p = self.dropout if self.training else 0.0
        att = attention(q, k, v, self.causal, p, self.attn_impl).reshape(b, length, d)
        x = x + gate1 * self.drop(self.proj(att))
        if sh2 is not None:
            m_in, gate2 = modulate(self.norm2(x), sh2, sc2), g2[:, None]
        else:
            m_in, gate2 = self.norm2(x), 1.0
        return x + gate2 * self.drop(self.mlp(m_in))


class FinalLayer(nn.Module):
    """Norm, adaLN shift/scale, then the zero-initialized output head ``(B, L, d)`` → ``(B, L, V)``."""

    def __init__(self, d_model: int, vocab_size: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model, elementwise_affine=False)
        self.ada = nn.Linear(cond_dim, 2 * d_model) if cond_dim > 0 else None
        self.head = nn.Linear(d_model, vocab_size)
        for lin in (self.ada, self.head):
            if lin is not None:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    def features(self, x: Tensor, c: Tensor | None) -> Tensor:
        """The head's input: normalized, time-modulated features ``(B, L, d)``."""
        x = self.norm(x)
        if self.ada is not None and c is not None:
            shift, scale = self.ada(F.silu(c)).chunk(2, dim=-1)
            x = modulate(x, shift, scale)
        return x

    def forward(self, x: Tensor, c: Tensor | None) -> Tensor:
        return self.head(self.features(x, c))
