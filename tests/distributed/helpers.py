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


class MarkNodeTracker(NullTracker):
    """Once a step past ``after`` is logged (the first time only): waits ``settle`` seconds (Ray's controller
    registers the checkpoint reported at ``after``), writes this worker's Ray node id to ``marker`` (atomically),
    then pauses ``pause`` seconds, during which the test kills the node."""

    def __init__(self, marker: str, after: int, settle: float, pause: float) -> None:
        self.marker, self.after, self.settle, self.pause = marker, after, settle, pause

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Mark and pause once, past ``after``."""
        import time

        import ray

        marker = Path(self.marker)
        if step > self.after and not marker.exists():
            time.sleep(self.settle)
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(f"{ray.get_runtime_context().get_node_id()} {step}", encoding="utf-8")
            tmp.rename(marker)
            time.sleep(self.pause)


class MarkNode:
    """``rank -> tracker``: rank 0 marks its node (:class:`MarkNodeTracker`); other ranks do nothing."""

    def __init__(self, marker: str, after: int, settle: float = 3.0, pause: float = 60.0) -> None:
        self.marker, self.after, self.settle, self.pause = marker, after, settle, pause

    def __call__(self, rank: int) -> Any:
        return MarkNodeTracker(self.marker, self.after, self.settle, self.pause) if rank == 0 else NullTracker()
