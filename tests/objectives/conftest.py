"""The objectives' tests run tiny models: one intra-op thread (more only add contention on a busy machine)."""

from tests.threads import _one_thread

__all__ = ["_one_thread"]
