"""Deterministic batches: which blocks a worker reads at a step is a function of (seed, step).

The training split is read in *epochs*: epoch ``e`` is a permutation of all blocks drawn from
``(seed, e)``; the global batch of step ``s`` is positions ``[s B, (s+1) B)`` of the concatenated
epochs. Worker ``rank`` of ``world_size`` takes its contiguous slice of that global batch, and
micro-batch ``i`` of ``grad_accum`` a contiguous slice of the worker's share. Nothing depends on
what was read before, so a resumed run (or a different number of workers) sees the same global
batches.
"""

from __future__ import annotations

import numpy as np
import torch

from flm.data.blocks import TokenBlocks

__all__ = ["BatchPlan", "load_blocks", "val_indices"]


class BatchPlan:
    """Block indices of every (step, rank, micro-batch) for a split of ``n_blocks`` blocks.

    Args:
        n_blocks: blocks in the training split.
        batch_size: global batch ``B`` (sequences per optimizer step, all workers together).
        seed: seed of the epoch permutations.
        rank, world_size: this worker and the number of workers (``B`` must divide by ``world_size``).
        grad_accum: micro-batches per step (the worker's share must divide by it).
    """

    def __init__(
        self, n_blocks: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, grad_accum: int = 1
    ) -> None:
        if n_blocks < 1:
            raise ValueError("no blocks to train on")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        if batch_size % (world_size * grad_accum):
            raise ValueError(
                f"global batch {batch_size} is not divisible by workers x accumulation = {world_size} x {grad_accum}"
            )
        self.n_blocks, self.batch_size, self.seed = n_blocks, batch_size, seed
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum
        self.per_rank = batch_size // world_size
        self.micro = self.per_rank // grad_accum
        self._cache: dict[int, np.ndarray] = {}

    def _epoch(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            self._cache[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)
        return self._cache[epoch]

    def global_batch(self, step: int) -> np.ndarray:
        """``(B,)`` block indices of step ``step``'s global batch."""
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size, dtype=np.int64)
        epochs, offsets = np.divmod(positions, self.n_blocks)
        out = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            out[mask] = self._epoch(int(epoch))[offsets[mask]]
        return out

    def offset(self, micro: int) -> int:
        """First row of this worker's micro-batch ``micro`` in the global batch."""
        return self.rank * self.per_rank + micro * self.micro

    def micro_batch(self, step: int, micro: int) -> np.ndarray:
        """``(B / (world_size * grad_accum),)`` indices this worker reads for micro-batch ``micro``."""
        start = self.offset(micro)
        return self.global_batch(step)[start : start + self.micro]


def val_indices(n_blocks: int, n_batches: int, batch: int) -> list[np.ndarray]:
    """``n_batches`` fixed batches of ``batch`` indices spread evenly over a split (wrapping if short)."""
    total = n_batches * batch
    spread = (np.arange(total, dtype=np.int64) * max(1, n_blocks // total)) % n_blocks
    return [spread[i * batch : (i + 1) * batch] for i in range(n_batches)]


def load_blocks(blocks: TokenBlocks, indices: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """Token ids of the given blocks, ``(len(indices), L)`` int64 on ``device``."""
    rows = np.stack([np.asarray(blocks[int(i)], dtype=np.int64) for i in indices])
    return torch.from_numpy(rows).to(device, non_blocking=True)
