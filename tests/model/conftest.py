"""Shared fixtures of the backbone tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """A clean ``torch._dynamo`` cache before and after the test (graph counts start at zero)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
