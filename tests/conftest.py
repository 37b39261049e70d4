"""Shared test settings: deterministic, float64 where math is checked, small thread pools."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def gen(seed: int = 0) -> torch.Generator:
    """A fresh CPU generator."""
    return torch.Generator().manual_seed(seed)
