"""Small builders shared by the training tests."""

from __future__ import annotations

import torch
from torch import Tensor

from flm.config import ModelParams
from flm.flow import BatchSlice
from flm.model import DiT
from flm.objectives import FLMObjective
from flm.objectives.common import LossOutput

from .conftest import TINY_MODEL


def tiny_flm(vocab_size: int, seed: int = 0, **changes: object) -> FLMObjective:
    """A ~40k-parameter FLM objective on a fresh DiT."""
    torch.manual_seed(seed)
    config = ModelParams(**(TINY_MODEL | changes)).dit_config(vocab_size)
    return FLMObjective(DiT(config))


class RowSeeded(FLMObjective):
    """FLM loss whose times and noise depend only on each row's tokens, not on the batch it sits in."""

    def forward(
        self, x: Tensor, generator: torch.Generator | None = None, batch: BatchSlice | None = None
    ) -> LossOutput:
        seeds = (x.long() * torch.arange(1, x.shape[1] + 1)).sum(1) % 100_003
        tau = (seeds.double() / 100_003).float()
        d = self.backbone.config.d_model
        rows = [torch.randn(x.shape[1], d, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        noise = torch.stack(rows)
        return self.loss(x, tau, noise)
