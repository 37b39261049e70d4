"""A run killed with SIGKILL and resumed ends bit-identical to one never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import OFFLINE_ENV

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys, time
import torch
from flm.config import ModelParams, TrainParams
from flm.data.blocks import TokenBlocks
from flm.model import DiT
from flm.objectives import FLMObjective
from flm.tracking import NullTracker
from flm.train.loop import train_loop

class Slow(NullTracker):
    def log_metrics(self, metrics, step):
        time.sleep(0.01)  # room for the parent to kill us between checkpoints

torch.set_num_threads(1)
tokens, run_dir = sys.argv[1], sys.argv[2]
train, val = TokenBlocks(tokens, "train"), TokenBlocks(tokens, "val")
torch.manual_seed(0)
model = ModelParams(d_model=32, n_layers=2, n_heads=2, cond_dim=32, time_freq_dim=32, dropout=0.1)
objective = FLMObjective(DiT(model.dit_config(train.vocab_size)), learn_loss_weight=True)
settings = TrainParams(steps=100, batch_size=8, grad_accum=2, lr=3e-3, warmup_steps=10, schedule="cosine",
                       ema_decay=0.95, val_every=30, val_batches=1, ckpt_every=20, keep_last=3, log_every=1,
                       sample_n=0)
result = train_loop(objective, "backbone", settings, train, val, run_dir, meta={"run_key": "k"},
                    tracker=Slow(), progress=False)
print(json.dumps({"resumed_from": result.resumed_from, "step": result.step}))
"""


def launch(tokens: Path, run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(tokens), str(run_dir)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_sigkill_after_a_checkpoint_then_resume_is_exact(tiny_data: dict, tmp_path: Path) -> None:
    tokens = tiny_data["tokens"]
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    ref_process = launch(tokens, reference)  # runs alongside the one we kill

    victim = launch(tokens, interrupted)
    deadline = time.monotonic() + 180
    while not (interrupted / "ckpt-00000040").is_dir():
        assert victim.poll() is None, victim.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint at step 40"
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert not (interrupted / "ckpt-00000100").exists()

    resumed = finish(launch(tokens, interrupted))
    assert resumed["resumed_from"] in (40, 60, 80) and resumed["step"] == 100
    assert finish(ref_process) == {"resumed_from": None, "step": 100}

    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "rng.safetensors"):
        a = (reference / "ckpt-00000100" / name).read_bytes()
        b = (interrupted / "ckpt-00000100" / name).read_bytes()
        assert a == b, f"{name} differs after resume"
    assert not [p.name for p in interrupted.iterdir() if ".tmp-" in p.name]
