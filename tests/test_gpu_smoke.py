"""The GPU smoke script (``bench/gpu_smoke.py``) runs every check on this CPU, eager.

It is the first thing a lent GPU runs; a script that rots between GPU sessions would waste that
minute. Here every stage, generator and both evaluation protocols must pass on CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_smoke_check_passes_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "bench/gpu_smoke.py", "--device", "cpu", "--no-compile", "--json", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    report = json.loads(out.read_text())
    failed = [f"{c['check']}: {c['error']} [{c['where']}]" for c in report["checks"] if not c["ok"]]
    assert done.returncode == 0 and not failed, "\n".join(failed) or done.stderr[-2000:]
    names = " | ".join(c["check"] for c in report["checks"])
    for expected in ("train FLM", "chunked CE", "semigroup", "lagrangian", "eulerian", "train AR", "train MDLM",
                     "generate FLM, prefix", "re-noised", "generate MDLM", "KV cache", "document protocol",
                     "reference protocol"):
        assert expected in names
