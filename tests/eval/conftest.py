"""The eval tests run on one intra-op thread; the session's SmolLM2 judge is ``smollm2`` (tests/conftest.py)."""

from tests.conftest import LoadedJudge, one_thread
from tests.threads import _one_thread

__all__ = ["LoadedJudge", "_one_thread", "one_thread"]
