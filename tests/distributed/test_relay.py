"""Progress relay: lines a worker process prints into a file reach the driver's stdout, in order, whole."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flm.distributed.relay import lines_to_file, relay_lines

WORKER = """
import sys, time
from flm.distributed.relay import lines_to_file
with lines_to_file(sys.argv[1]):
    print("flm: step 10/20", flush=True)
    time.sleep(0.6)
    print("flm: step 20/20", end="", flush=True)  # a line still being written ...
    time.sleep(0.6)
    print("  done", flush=True)                  # ... is relayed only once complete
"""


def test_a_worker_process_lines_reach_the_driver(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "progress" / "job.log"
    with relay_lines(path, interval=0.1):
        subprocess.run([sys.executable, "-c", WORKER, str(path)], check=True)
        out_during = capsys.readouterr().out
    out_after = capsys.readouterr().out
    assert out_during + out_after == "flm: step 10/20\nflm: step 20/20  done\n"
    assert "flm: step 10/20\n" in out_during  # relayed while the worker still ran, not only at the end


def test_without_a_file_nothing_is_redirected(capsys: pytest.CaptureFixture) -> None:
    with relay_lines(None), lines_to_file(None):
        print("plain")
    assert capsys.readouterr().out == "plain\n"
