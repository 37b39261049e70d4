"""``dvc repro`` killed mid-``train_flm`` (SIGKILL to its whole process group, as a lost machine would) and run
again resumes from the newest checkpoint and ends with the same ``models/flm`` as an uninterrupted
``dvc repro``: byte-identical safetensors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.pipelines.helpers import dvc_clone, run
from tests.train.conftest import tiny_data

__all__ = ["tiny_data"]

STEPS, CKPT_EVERY = 240, 20


def longer(params: dict[str, Any]) -> None:
    """Enough steps that a kill after the first checkpoint lands mid-run; no validation (faster)."""
    params["train"] |= {"steps": STEPS, "ckpt_every": CKPT_EVERY, "val_every": 0, "log_every": CKPT_EVERY}


def weights(repo: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((repo / "models" / "flm").glob("*.safetensors"))}


def test_a_killed_dvc_repro_resumes_to_the_uninterrupted_weights(tiny_data: dict, tmp_path: Path) -> None:
    dvc = (sys.executable, "-m", "dvc")
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    _, env = dvc_clone(killed, tiny_data, tmp_path / "killed.db", edit=longer)
    process = subprocess.Popen([*dvc, "repro", "train_flm"], cwd=killed, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT, start_new_session=True)
    runs = killed / ".state" / "runs" / "flm"
    deadline = time.monotonic() + 300
    try:
        while not list(runs.glob("*/ckpt-*/checkpoint.json")):
            assert process.poll() is None, "dvc repro ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    assert not (killed / "models" / "flm").exists()
    saved = sorted(int(path.parent.name.split("-")[1]) for path in runs.glob("*/ckpt-*/checkpoint.json"))
    assert saved and saved[-1] < STEPS

    output = run(killed, *dvc, "repro", "train_flm", env=env)
    assert "Running stage 'train_flm'" in output
    metrics = json.loads((killed / "metrics" / "flm.json").read_text())["flm"]
    assert metrics["step"] == STEPS and CKPT_EVERY <= metrics["resumed_from"] < STEPS, metrics
    lost = metrics["resumed_from"]
    print(f"killed after the checkpoint at step {saved[-1]}; resumed from step {lost}")

    _, env_whole = dvc_clone(whole, tiny_data, tmp_path / "whole.db", edit=longer)
    run(whole, *dvc, "repro", "train_flm", env=env_whole)
    assert not json.loads((whole / "metrics" / "flm.json").read_text())["flm"].get("resumed_from")  # from step 0
    resumed, uninterrupted = weights(killed), weights(whole)
    assert sorted(resumed) == sorted(uninterrupted) and "ema.safetensors" in resumed
    assert resumed == uninterrupted
