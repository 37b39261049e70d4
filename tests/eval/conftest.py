"""The eval tests run on one intra-op thread; the session's SmolLM2 judge is ``smollm2`` (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import LoadedJudge, one_thread

__all__ = ["LoadedJudge", "one_thread"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield
