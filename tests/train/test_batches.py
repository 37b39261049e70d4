"""Batches are a pure function of (seed, step); workers and micro-batches partition them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flm.data.blocks import TokenBlocks
from flm.train.batches import BatchPlan, load_blocks, val_indices


def test_each_epoch_reads_every_block_once() -> None:
    plan = BatchPlan(n_blocks=50, batch_size=10, seed=3)
    first_epoch = np.concatenate([plan.global_batch(step) for step in range(5)])
    second_epoch = np.concatenate([plan.global_batch(step) for step in range(5, 10)])
    assert sorted(first_epoch.tolist()) == list(range(50)) == sorted(second_epoch.tolist())
    assert not np.array_equal(first_epoch, second_epoch)


def test_batches_depend_only_on_seed_and_step() -> None:
    a, b = BatchPlan(37, 8, seed=1), BatchPlan(37, 8, seed=1)
    later = [a.global_batch(step) for step in range(20)]
    assert np.array_equal(b.global_batch(13), later[13])  # b never saw steps 0..12
    assert not np.array_equal(BatchPlan(37, 8, seed=2).global_batch(13), later[13])
    straddling = a.global_batch(4)  # positions 32..39 cross the end of epoch 0 (37 blocks)
    assert len(straddling) == 8 and straddling.min() >= 0 and straddling.max() < 37


@pytest.mark.parametrize(("world_size", "grad_accum"), [(1, 4), (2, 2), (4, 1)])
def test_ranks_and_micro_batches_partition_the_global_batch(world_size: int, grad_accum: int) -> None:
    plans = [BatchPlan(100, 16, 0, rank=r, world_size=world_size, grad_accum=grad_accum) for r in range(world_size)]
    for step in (0, 7):
        parts = [plan.micro_batch(step, micro) for plan in plans for micro in range(grad_accum)]
        assert all(len(part) == 16 // (world_size * grad_accum) for part in parts)
        assert np.array_equal(np.concatenate(parts), plans[0].global_batch(step))


def test_bad_splits_are_errors() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        BatchPlan(100, 10, seed=0, world_size=4)
    with pytest.raises(ValueError, match="rank"):
        BatchPlan(100, 8, seed=0, rank=2, world_size=2)


def test_validation_batches_are_fixed_and_spread(tiny_data: dict) -> None:
    val = TokenBlocks(tiny_data["tokens"], "val")
    batches = val_indices(len(val), n_batches=3, batch=4)
    assert [len(b) for b in batches] == [4, 4, 4]
    assert np.array_equal(np.concatenate(batches), np.concatenate(val_indices(len(val), 3, 4)))
    assert len(set(np.concatenate(batches).tolist())) == min(12, len(val))
    x = load_blocks(val, batches[1])
    assert x.shape == (4, val.seq_len) and x.dtype == torch.int64
    assert torch.equal(x[0], torch.from_numpy(np.asarray(val[int(batches[1][0])], dtype=np.int64)))
