"""Key/value cache for incremental decoding with a causal DiT (the AR baseline, MATH.md §6)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flm.model.config import DiTConfig

__all__ = ["KVCache"]


@dataclass
class KVCache:
    """Keys and values of the positions already seen, preallocated for ``max_len`` positions.

    ``DiT.features(h, cache=cache)`` treats ``h`` ``(B, T, d)`` as positions
    ``[length, length + T)``: each block writes its new keys/values there (:meth:`extend`), its
    queries attend to positions ``[0, length + T)`` (causally), rotary angles start at ``length``,
    and the DiT advances ``length`` by ``T`` after the last block.

    Attributes:
        keys, values: ``(n_layers, B, max_len, H, Dh)`` buffers, in the attention's compute dtype
            (:meth:`flm.model.DiT.new_cache`: bf16 under bf16 autocast), so reading them back
            copies nothing.
        length: positions filled so far.
    """

    keys: Tensor
    values: Tensor
    length: int = 0

    @classmethod
    def empty(
        cls, config: DiTConfig, batch: int, max_len: int, device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> KVCache:
        """An empty cache for ``batch`` sequences of up to ``max_len`` positions of a ``config`` DiT."""
        shape = (config.n_layers, batch, max_len, config.n_heads, config.d_model // config.n_heads)
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    @property
    def max_len(self) -> int:
        """Positions the buffers hold."""
        return self.keys.shape[2]

    def extend(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``k, v`` ``(B, T, H, Dh)`` at positions ``[length, length + T)`` of ``layer``.

        Returns:
            Keys and values of positions ``[0, length + T)``, each ``(B, length + T, H, Dh)``: views
            of the buffers when they hold the dtype of ``k`` and ``v`` (the usual case), else
            converted copies.
        """
        end = self.length + k.shape[1]
        if end > self.max_len:
            raise ValueError(f"KVCache holds {self.max_len} positions; {end} requested")
        self.keys[layer, :, self.length:end] = k
        self.values[layer, :, self.length:end] = v
        return self.keys[layer, :, :end].to(k.dtype), self.values[layer, :, :end].to(v.dtype)
