"""Relay a Ray worker's progress lines to the driver's output, without forwarding all of Ray's logs.

Ray's ``log_to_driver`` forwards every actor's output, including Ray Train's own warnings (on an
embedded Ray without a dashboard, one "State API may be temporarily unavailable" line a second).
Instead, rank 0 writes its stage's output to a file (:func:`lines_to_file`) and the driver prints
that file's new lines as they come (:func:`relay_lines`). Used for the embedded local Ray, where
driver and workers share a filesystem; on a cluster the workers' output is in Ray's own logs.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["lines_to_file", "relay_lines"]


@contextlib.contextmanager
def lines_to_file(path: str | Path | None) -> Iterator[None]:
    """Inside the block, this process's ``print`` output goes to ``path`` (appended, line-buffered); ``None``: no-op."""
    if path is None:
        yield
        return
    with open(path, "a", encoding="utf-8", buffering=1) as sink, contextlib.redirect_stdout(sink):
        yield


def _copy_new_lines(source: Path, offset: int) -> int:
    """Print the complete lines of ``source`` after byte ``offset``; return the new offset."""
    if not source.is_file():
        return offset
    with open(source, "rb") as handle:
        handle.seek(offset)
        data = handle.read()
    complete = data[: data.rfind(b"\n") + 1]
    if complete:
        sys.stdout.write(complete.decode("utf-8", errors="replace"))
        sys.stdout.flush()
    return offset + len(complete)


@contextlib.contextmanager
def relay_lines(path: str | Path | None, interval: float = 1.0) -> Iterator[None]:
    """While the block runs, print every new complete line of ``path`` (polled each ``interval`` s).

    The file is created empty first; lines still unread when the block ends are printed then.
    """
    if path is None:
        yield
        return
    source = Path(path)
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(b"")
    done = threading.Event()
    offset = [0]

    def poll() -> None:
        while not done.wait(interval):
            offset[0] = _copy_new_lines(source, offset[0])

    thread = threading.Thread(target=poll, name="flm-progress-relay", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        _copy_new_lines(source, offset[0])
