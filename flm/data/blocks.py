"""Packed token blocks, read back memory-mapped: the view the training side uses."""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import Any

import numpy as np

from flm.data.errors import DataError


def load_tokens_meta(tokens_dir: str | Path) -> dict[str, Any]:
    """The ``meta.json`` of a packed-tokens directory (``V``, ``L``, dtype, counts, hashes)."""
    path = Path(tokens_dir) / "meta.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{tokens_dir}: no packed tokens here ({path.name} missing); run the pack stage") from None


class TokenBlocks:
    """The blocks of one split: ``len(blocks)`` blocks, ``blocks[i]`` an array of ``L`` ids.

    Shards are opened with :class:`numpy.memmap`; nothing is read until a block is indexed.
    """

    def __init__(self, tokens_dir: str | Path, split: str) -> None:
        folder = Path(tokens_dir)
        self.meta = load_tokens_meta(folder)
        if split not in self.meta["splits"]:
            raise DataError(f"{folder}: no split {split!r}; known: {', '.join(self.meta['splits'])}")
        self.seq_len: int = self.meta["L"]
        self.vocab_size: int = self.meta["V"]
        dtype = np.dtype(self.meta["dtype"]).newbyteorder("<")
        self._shards: list[np.ndarray] = []
        self._starts: list[int] = []
        total = 0
        for shard in self.meta["splits"][split]["shards"]:
            path = folder / shard["file"]
            expected = shard["blocks"] * self.seq_len * dtype.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                raise DataError(f"{path}: missing or not {expected:,} bytes as meta.json says")
            self._starts.append(total)
            self._shards.append(np.memmap(path, dtype=dtype, mode="r").reshape(-1, self.seq_len))
            total += shard["blocks"]
        self._len = total

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> np.ndarray:
        if not -self._len <= index < self._len:
            raise IndexError(f"block {index} out of range [0, {self._len})")
        index %= self._len
        shard = bisect.bisect_right(self._starts, index) - 1
        return self._shards[shard][index - self._starts[shard]]

    def stream(self) -> np.ndarray:
        """All blocks of the split as one flat array (concatenated; for small splits and tests)."""
        return np.concatenate([shard.reshape(-1) for shard in self._shards])
