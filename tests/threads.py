"""The one-thread autouse fixture, imported by the conftests of the directories that run tiny models."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import one_thread


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Every test of the importing directory on one intra-op thread (:func:`tests.conftest.one_thread`)."""
    with one_thread():
        yield
