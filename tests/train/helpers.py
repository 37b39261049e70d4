"""Small builders shared by the training tests."""

from __future__ import annotations

import torch

from flm.config import ModelParams
from flm.model import DiT
from flm.objectives import FLMObjective

from .conftest import TINY_MODEL


def tiny_flm(vocab_size: int, seed: int = 0, **changes: object) -> FLMObjective:
    """A ~40k-parameter FLM objective on a fresh DiT."""
    torch.manual_seed(seed)
    config = ModelParams(**(TINY_MODEL | changes)).dit_config(vocab_size)
    return FLMObjective(DiT(config))
