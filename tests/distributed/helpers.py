"""Test-only pieces sent to Ray workers (pickled by value: workers need not import ``tests``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flm.tracking import NullTracker


class FailOnceTracker(NullTracker):
    """Raises when step ``fail_at`` is logged, the first time only (a marker file remembers)."""

    def __init__(self, marker: str, fail_at: int) -> None:
        self.marker, self.fail_at = marker, fail_at

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Fail at ``fail_at`` unless the marker exists; create it first."""
        marker = Path(self.marker)
        if step == self.fail_at and not marker.exists():
            marker.write_text("failed once", encoding="utf-8")
            raise RuntimeError(f"injected failure at step {step}")


class FailOnce:
    """``rank -> tracker``: rank 0 fails once at ``fail_at``; other ranks do nothing."""

    def __init__(self, marker: str, fail_at: int) -> None:
        self.marker, self.fail_at = marker, fail_at

    def __call__(self, rank: int) -> Any:
        return FailOnceTracker(self.marker, self.fail_at) if rank == 0 else NullTracker()


class FailEveryAttemptTracker(NullTracker):
    """Appends a line to ``attempts`` when created (one per attempt of rank 0); raises at step ``fail_at`` while
    at most ``limit`` attempts have been made (so a run that retried without end would finish instead of hang)."""

    def __init__(self, attempts: str, fail_at: int, limit: int) -> None:
        self.fail_at = fail_at
        with Path(attempts).open("a", encoding="utf-8") as log:
            log.write("attempt\n")
        self.failing = len(Path(attempts).read_text(encoding="utf-8").splitlines()) <= limit

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Fail at ``fail_at`` within the first ``limit`` attempts."""
        if step == self.fail_at and self.failing:
            raise RuntimeError(f"injected failure at step {step}")


class FailEveryAttempt:
    """``rank -> tracker``: rank 0 counts its attempts in ``attempts``, failing the first ``limit`` at ``fail_at``."""

    def __init__(self, attempts: str, fail_at: int, limit: int = 3) -> None:
        self.attempts, self.fail_at, self.limit = attempts, fail_at, limit

    def __call__(self, rank: int) -> Any:
        return FailEveryAttemptTracker(self.attempts, self.fail_at, self.limit) if rank == 0 else NullTracker()
