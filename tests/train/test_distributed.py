"""Two data-parallel workers (gloo, CPU) end where one worker with the whole batch ends, and log the
whole batch's training loss (every worker's share, not rank 0's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flm.data.blocks import TokenBlocks
from flm.train.loop import train_loop

from .conftest import OFFLINE_ENV, tiny_train
from .helpers import RowSeeded, tiny_flm

REPO = Path(__file__).resolve().parents[2]

WORKER = """
import sys
import torch
import torch.distributed as dist
from flm.data.blocks import TokenBlocks
from flm.train.loop import train_loop
from tests.train.conftest import tiny_train
from tests.train.helpers import RowSeeded, tiny_flm

torch.set_num_threads(1)
tokens, store, run_dir, rank = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
train = TokenBlocks(tokens, "train")
objective = RowSeeded(tiny_flm(train.vocab_size).backbone)
result = train_loop(objective, "backbone", tiny_train(steps=3, batch_size=8, lr=1e-3, warmup_steps=0, log_every=1),
                    train, None, f"{run_dir}/rank{rank}", rank=rank, world_size=2, progress=False)
if rank == 0:
    import json
    with open(f"{run_dir}/history.json", "w") as f:
        json.dump(result.history, f)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_workers_equal_one_worker_with_the_global_batch(tiny_data: dict, tmp_path: Path) -> None:
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "GLOO_SOCKET_IFNAME": "lo"}
    args = [str(tiny_data["tokens"]), str(tmp_path / "store"), str(tmp_path / "ddp")]
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, *args, str(rank)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for worker in workers:
        _, err = worker.communicate(timeout=240)
        assert worker.returncode == 0, err
    assert not (tmp_path / "ddp" / "rank1").exists()  # only rank 0 writes checkpoints

    train = TokenBlocks(tiny_data["tokens"], "train")
    single = RowSeeded(tiny_flm(train.vocab_size).backbone)
    alone = train_loop(single, "backbone", tiny_train(steps=3, batch_size=8, lr=1e-3, warmup_steps=0, log_every=1),
                       train, None, tmp_path / "single", progress=False)
    ddp = load_file(tmp_path / "ddp" / "rank0" / "ckpt-00000003" / "model.safetensors")
    for key, value in single.state_dict().items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-4, atol=1e-6, msg=key)
    logged = json.loads((tmp_path / "ddp" / "history.json").read_text())
    for mine, theirs in zip(logged, alone.history, strict=True):  # the global batch's loss, not rank 0's half
        assert mine["train/loss"] == pytest.approx(theirs["train/loss"], rel=1e-5)
        assert mine["train/grad_norm"] == pytest.approx(theirs["train/grad_norm"], rel=1e-4)
