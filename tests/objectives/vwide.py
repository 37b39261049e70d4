"""A dispatch-mode probe that records every operator producing a ``V``-wide tensor."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class VWideProbe(TorchDispatchMode):
    """Records ``(op name, shape)`` of op outputs with last dim ``V`` and ``≥ batch_tokens·V`` elements."""

    def __init__(self, vocab: int, batch_tokens: int) -> None:
        super().__init__()
        self.vocab, self.batch_tokens = vocab, batch_tokens
        self.events: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            wide = isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == self.vocab
            if wide and t.numel() >= self.batch_tokens * self.vocab:
                self.events.append((str(func.overloadpacket.__name__), tuple(t.shape)))
        return out

    @property
    def random_ops(self) -> list[str]:
        return [name for name, _ in self.events if name in {"randn", "normal", "normal_", "rand", "uniform_"}]
