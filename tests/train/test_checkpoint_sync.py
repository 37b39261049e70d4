"""The loop with a shared checkpoint store: the local run directory is a cache, the store the copy resumed from."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flm.data.blocks import TokenBlocks
from flm.tracking import NullTracker
from flm.train.checkpoint import adopt_checkpoint, list_checkpoints
from flm.train.loop import train_loop

from .conftest import tiny_train
from .helpers import tiny_flm


class DirectoryStore:
    """A :class:`~flm.train.checkpoint.CheckpointSync` on a plain directory (what Ray's storage does, without Ray)."""

    def __init__(self, root: Path) -> None:
        self.root, self.calls, self.kept = root, [], []

    def fetch(self, run_dir: Path, run_key: str | None) -> Path | None:
        return adopt_checkpoint(self.kept[-1] if self.kept else None, run_dir, run_key)

    def saved(self, step: int, checkpoint: Path | None, metrics: dict[str, float]) -> None:
        self.calls.append((step, checkpoint, metrics["step"]))
        if checkpoint is not None:
            self.kept.append(shutil.copytree(checkpoint, self.root / f"{len(self.kept)}-{checkpoint.name}"))


class StopAt(NullTracker):
    """Raises when step ``at`` is logged: the run dies there."""

    def __init__(self, at: int) -> None:
        self.at = at

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step == self.at:
            raise RuntimeError(f"killed at step {step}")


def run(tiny_data: dict, run_dir: Path, store: DirectoryStore | None, tracker: NullTracker | None = None,
        key: str = "k") -> object:
    train = TokenBlocks(tiny_data["tokens"], "train")
    settings = tiny_train(steps=12, ckpt_every=4, keep_last=1, log_every=2, ema_decay=0.9)
    return train_loop(tiny_flm(train.vocab_size), "backbone", settings, train, None, run_dir,
                      meta={"run_key": key}, tracker=tracker, progress=False, checkpoints=store)


def test_resume_from_the_store_with_the_local_cache_gone_is_exact(tiny_data: dict, tmp_path: Path) -> None:
    """Killed at step 6 after the step-4 checkpoint reached the store; the cache is lost (another node): the
    rerun resumes at 4 from the store and ends with the uninterrupted run's EMA weights, bit for bit."""
    reference = run(tiny_data, tmp_path / "reference", None)
    store = DirectoryStore(tmp_path / "store")
    with pytest.raises(RuntimeError, match="killed at step 6"):
        run(tiny_data, tmp_path / "node-a", store, tracker=StopAt(6))
    assert [(step, path.name, at) for step, path, at in store.calls] == [(4, "ckpt-00000004", 4)]
    resumed = run(tiny_data, tmp_path / "node-b", store)
    assert resumed.resumed_from == 4 and resumed.step == 12
    assert [step for step, _, _ in store.calls] == [4, 8]            # periodic only; the final is the caller's
    for name in ("ema.safetensors", "model.safetensors"):
        a = load_file(reference.checkpoint / name)
        b = load_file(resumed.checkpoint / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_the_store_outranks_the_cache_and_another_run_key_starts_fresh(tiny_data: dict, tmp_path: Path) -> None:
    """A cache newer than the store (rank 0 wrote step 8 but died before sharing it) is dropped: every rank
    resumes from the store's step; a stored checkpoint of another run_key is never resumed from."""
    store = DirectoryStore(tmp_path / "store")
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError):
        run(tiny_data, cache, store, tracker=StopAt(10))               # store: 4, 8; cache: 8 (keep_last 1)
    assert [p.name for p in list_checkpoints(cache)] == ["ckpt-00000008"]
    store.kept.pop()                                                  # the step-8 upload never completed
    assert adopt_checkpoint(store.kept[-1], cache, "k") == cache / "ckpt-00000004"
    assert [p.name for p in list_checkpoints(cache)] == ["ckpt-00000004"]
    assert adopt_checkpoint(store.kept[-1], cache, "other") is None
    assert list_checkpoints(cache) == []
    fresh = run(tiny_data, cache, store, key="other")
    assert fresh.resumed_from is None and fresh.step == 12
