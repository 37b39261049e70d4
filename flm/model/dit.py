"""The DiT backbone: tokens, times and logits; nothing about FLM (ARCHITECTURE.md)."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flm.model.cache import KVCache
from flm.model.config import DiTConfig
from flm.model.layers import DiTBlock, FinalLayer, TimeEmbedding, flash_attention_problem

__all__ = ["DiT", "compile_networks"]


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
                     cfg.rope_base, cfg.softcap)
            for _ in range(cfg.n_layers)
        )
        self.final = FinalLayer(cfg.d_model, cfg.vocab_size, cond)
        self._compiled_features: Callable[..., Tensor] | None = None

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

        After :meth:`compile` this is the compiled unit; calls with a ``cache`` stay eager (their
        shapes change at every position: compiled, each would be a new graph).
        """
        if self._compiled_features is not None and cache is None:
            return self._compiled_features(self, h, tau_s, tau_t)
        return self._features(h, tau_s, tau_t, cache)

    def _features(
        self, h: Tensor, tau_s: Tensor | None = None, tau_t: Tensor | None = None, cache: KVCache | None = None
    ) -> Tensor:
        """:meth:`features`, never compiled."""
        if cache is not None and not self.config.causal:
            raise ValueError("a KVCache needs a causal DiT (later positions would change earlier ones)")
        c = self.condition(tau_s, tau_t)
        x = h
        for layer, block in enumerate(self.blocks):
            x = block(x, c, cache, layer)
        if cache is not None:
            cache.length += h.shape[1]
        return self.final.features(x, c)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty :class:`KVCache` for ``batch`` sequences of up to ``max_len`` positions, on this DiT's device.

        Stored in the dtype the attention computes in: the autocast dtype when autocast is on here
        (a float32 network under bf16 autocast caches bf16 keys/values), else the weights' dtype.
        So decoding writes each new position once and never converts the cached ones.
        """
        device = self.embedding.device
        dtype = self.embedding.dtype
        autocast = torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type)
        if dtype == torch.float32 and autocast:
            dtype = torch.get_autocast_dtype(device.type)
        return KVCache.empty(self.config, batch, max_len, device, dtype)

    def check_attention(self, device: torch.device | str, dtype: torch.dtype) -> None:
        """Raise ``ValueError`` if this DiT asks for flash-attn and it cannot run on ``device`` in ``dtype``.

        For the start of training, where ``attn_impl: flash`` was asked for: a run that would
        silently take the slower SDPA path (or, with a soft-cap, materialize every score matrix)
        fails at once instead. Sampling and judging never call this: there a flash checkpoint falls
        back to SDPA with the same weights (:func:`flm.model.layers.attention`).

        Args:
            device: where the training runs.
            dtype: the attention's compute dtype (bf16 under bf16 autocast, else the weights' dtype).
        """
        if self.config.attn_impl != "flash":
            return
        problem = flash_attention_problem(torch.device(device).type, dtype)
        if problem is not None:
            raise ValueError(f"model.attn_impl='flash' cannot run in this training: {problem}. Train on CUDA "
                             f"with bf16 and the gpu extra, or set model.attn_impl: sdpa (the same weights)")

    def compile(
        self, backend: str | Callable[..., Any] = "inductor", mode: str | None = None, dynamic: bool | None = False
    ) -> None:
        """``torch.compile`` :meth:`features`, the unit every caller runs, in place.

        Losses with chunked cross entropy and MDLM call :meth:`features`; ``self(h, ...)`` is
        ``head(features(...))`` and goes through the same compiled graph, with the head (one
        matmul) eager. So training (full or chunked losses) and sampling run compiled alike.
        Calls with a :class:`KVCache` stay eager. ``dynamic=False``: a new input shape compiles
        once more instead of a shape-generic graph. ``torch.nn.Module.compile`` (which wraps
        ``__call__`` only, missing every direct :meth:`features` call) is replaced by this.

        Args:
            backend: the ``torch.compile`` backend (tests pass a counting callable).
            mode: ``torch.compile`` mode (e.g. ``"reduce-overhead"``: CUDA graphs).
            dynamic: ``torch.compile``'s ``dynamic``.
        """
        self._compiled_features = torch.compile(_own_features(), backend=backend, mode=mode, dynamic=dynamic)

    def compile_for_sampling(self, cuda_graphs: bool = False, backend: str | Callable[..., Any] = "inductor") -> DiT:
        """Compile this network (:meth:`compile`) for fixed-step samplers, in place.

        A K-step sampler (FLM Euler, FMLM flow map, MDLM) calls the network K times with the same
        shapes: states ``(B, L, d)`` and times ``(B,)`` as tensors, never Python numbers. So one
        compiled graph serves all K steps (``dynamic=False``: another ``(B, L)`` compiles once more)
        and no step synchronizes with the host. ``cuda_graphs=True`` (CUDA only) also captures
        that graph as a CUDA graph (inductor's ``reduce-overhead``): each step is one replay.
        Cached AR decoding changes shape at every position and stays eager.

        Args:
            cuda_graphs: capture CUDA graphs (ignored on CPU).
            backend: the ``torch.compile`` backend (tests use a counting one).

        Returns:
            ``self``.
        """
        cuda_graphs = cuda_graphs and self.embedding.device.type == "cuda" and backend == "inductor"
        self.compile(backend=backend, mode="reduce-overhead" if cuda_graphs else None, dynamic=False)
        return self

    @property
    def head(self) -> nn.Linear:
        """The zero-initialized output projection ``(d → V)``."""
        return self.final.head

    def num_parameters(self, exclude_embedding: bool = False) -> int:
        """Parameter count, optionally without the input embedding ``E``."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.embedding.numel() if exclude_embedding else n


def _own_features() -> Callable[..., Tensor]:
    """A copy of the unbound :meth:`DiT._features` with its own code object, for :meth:`DiT.compile`.

    Called with the module as first argument, so a deep copy of a compiled DiT shares the compiled
    function and runs it on its own weights (a compiled bound method would run the original's).
    Its own code object: dynamo keeps at most ``recompile_limit`` (8) graphs per code object, so
    every compiled DiT (backbone, teacher, the next stage's model in the same process) gets its own
    budget instead of silently running eager once the DiTs together pass 8 shapes.
    """
    f = DiT._features
    return types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)


def compile_networks(module: nn.Module, backend: str | Callable[..., Any] = "inductor") -> list[DiT]:
    """:meth:`DiT.compile` every DiT inside ``module`` (an objective: its backbone or student, and a
    distillation's frozen teacher), in place; returns them.

    Training's compile step: whatever the loss calls (``features`` for chunked cross entropy and
    MDLM, ``self(h, ...)`` otherwise, the teacher's targets) runs compiled.
    """
    networks = [m for m in module.modules() if isinstance(m, DiT)]
    for network in networks:
        network.compile(backend=backend)
    return networks
