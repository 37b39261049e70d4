"""The DiT backbone: tokens, times and logits; nothing about FLM (ARCHITECTURE.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flm.model.cache import KVCache
from flm.model.config import DiTConfig
from flm.model.layers import DiTBlock, FinalLayer, TimeEmbedding

__all__ = ["DiT"]


class DiT(nn.Module):
    """Diffusion transformer over a sequence of states in embedding space.

    The first layer is linear, ``z ↦ zE`` with ``E = self.embedding`` ``(V, d)``; callers give the
    network its input already projected (``h``), which makes three input kinds one:
    token ids (:meth:`embed_ids`, ``E[x]``), dense ``V``-wide states (:meth:`embed_dense`, ``zE``)
    and projected states built without ever forming ``z`` (MATH.md §3).

    Time conditioning: ``c = emb(τ_s) [+ emb'(τ_t)]``; ``emb'`` exists when ``n_times = 2`` and
    its last layer starts at zero.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        self.embedding = nn.Parameter(torch.randn(cfg.vocab_size, cfg.d_model) / cfg.d_model**0.5)
        cond = cfg.cond_dim if cfg.n_times > 0 else 0
        self.time_embed = (
            TimeEmbedding(cfg.cond_dim, cfg.time_freq_dim, scale=cfg.time_scale) if cfg.n_times >= 1 else None
        )
        self.time_embed_2 = (
            TimeEmbedding(cfg.cond_dim, cfg.time_freq_dim, zero_last=True, scale=cfg.time_scale)
            if cfg.n_times == 2
            else None
        )
        self.blocks = nn.ModuleList(
            DiTBlock(cfg.d_model, cfg.n_heads, cfg.mlp_ratio, cond, cfg.dropout, cfg.causal, cfg.attn_impl,
                     cfg.rope_base)
            for _ in range(cfg.n_layers)
        )
        self.final = FinalLayer(cfg.d_model, cfg.vocab_size, cond)
        self.drop = nn.Dropout(cfg.dropout)

    def embed_ids(self, ids: Tensor) -> Tensor:
        """``E[x]``: ``(B, L)`` ids → ``(B, L, d)``."""
        return F.embedding(ids, self.embedding)

    def embed_dense(self, z: Tensor) -> Tensor:
        """``zE``: dense ``(B, L, V)`` states → ``(B, L, d)`` (reference path)."""
        return z.to(self.embedding.dtype) @ self.embedding

    def condition(self, tau_s: Tensor | None, tau_t: Tensor | None = None) -> Tensor | None:
        """Conditioning vector ``c`` ``(B, cond_dim)`` from ``(B,)`` times, or None when ``n_times = 0``."""
        if self.time_embed is None:
            return None
        if tau_s is None:
            raise ValueError(f"this DiT has n_times={self.config.n_times}: pass tau_s")
        c = self.time_embed(tau_s)
        if self.time_embed_2 is not None:
            c = c + self.time_embed_2(tau_s if tau_t is None else tau_t)
        return c

    def forward(
        self, h: Tensor, tau_s: Tensor | None = None, tau_t: Tensor | None = None, cache: KVCache | None = None
    ) -> Tensor:
        """Logits ``(B, L, V)`` from projected inputs ``h`` ``(B, L, d)`` and times ``(B,)``.

        For a flow map (``n_times = 2``) ``tau_t`` defaults to ``tau_s`` (the diagonal). ``cache``:
        see :meth:`features`.
        """
        return self.head(self.features(h, tau_s, tau_t, cache))

    def features(
        self, h: Tensor, tau_s: Tensor | None = None, tau_t: Tensor | None = None, cache: KVCache | None = None
    ) -> Tensor:
        """The output head's input ``(B, L, d)``: ``forward = head ∘ features``.

        Losses that never hold all ``V``-wide logits at once (chunked cross entropy) start here.
        With a ``cache`` (causal DiTs only, see :meth:`new_cache`), ``h`` holds the positions
        ``[cache.length, cache.length + L)`` that follow the cached ones; the result equals the
        last ``L`` rows of a full forward pass over all positions, and ``cache.length`` grows by ``L``.
        """
        if cache is not None and not self.config.causal:
            raise ValueError("a KVCache needs a causal DiT (later positions would change earlier ones)")
        c = self.condition(tau_s, tau_t)
        x = self.drop(h)
        for layer, block in enumerate(self.blocks):
            x = block(x, c, cache, layer)
        if cache is not None:
            cache.length += h.shape[1]
        return self.final.features(x, c)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty :class:`KVCache` for ``batch`` sequences of up to ``max_len`` positions, on this DiT's device."""
        return KVCache.empty(self.config, batch, max_len, self.embedding.device, self.embedding.dtype)

    def compile_for_sampling(self, cuda_graphs: bool = False, backend: str = "inductor") -> DiT:
        """Compile this network's calls (``self(h, τ_s, τ_t)``) for fixed-step samplers, in place.

        A K-step sampler (FLM Euler, FMLM flow map, MDLM) calls the network K times with the same
        shapes: states ``(B, L, d)`` and times ``(B,)`` as tensors, never Python numbers. So one
        compiled graph serves all K steps (``dynamic=False``: another ``(B, L)`` compiles once more)
        and no step synchronizes with the host. ``cuda_graphs=True`` (CUDA only) also captures
        that graph as a CUDA graph (inductor's ``reduce-overhead``): each step is one replay.
        Cached AR decoding changes shape at every position; keep that network eager.

        Args:
            cuda_graphs: capture CUDA graphs (ignored on CPU).
            backend: the ``torch.compile`` backend (tests use a counting one).

        Returns:
            ``self``.
        """
        if cuda_graphs and self.embedding.device.type == "cuda" and backend == "inductor":
            self.compile(backend=backend, mode="reduce-overhead", dynamic=False)
        else:
            self.compile(backend=backend, dynamic=False)
        return self

    @property
    def head(self) -> nn.Linear:
        """The zero-initialized output projection ``(d → V)``."""
        return self.final.head

    def num_parameters(self, exclude_embedding: bool = False) -> int:
        """Parameter count, optionally without the input embedding ``E``."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.embedding.numel() if exclude_embedding else n
