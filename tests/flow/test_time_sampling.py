"""Stratified times from an explicit generator."""

from __future__ import annotations

import torch

from flm.flow import stratified_times, uniform_grid
from tests.conftest import gen


def test_one_time_per_stratum() -> None:
    n = 64
    t = stratified_times(n, gen(3), dtype=torch.float64)
    strata = torch.floor(t * n).long().sort().values
    assert torch.equal(strata, torch.arange(n))
    assert ((t >= 0) & (t < 1)).all()


def test_times_depend_only_on_the_generator_and_are_shuffled() -> None:
    """Same generator, same times; the strata are shuffled, so a slice of the global draw (what a
    worker keeps: tests/train/test_global_batch.py) still spreads over ``[0, 1]``."""
    a = stratified_times(32, gen(7))
    assert torch.equal(a, stratified_times(32, gen(7)))
    assert stratified_times(32, gen(8)).ne(a).any()
    first = a[:16]
    assert first.min() < 0.25 and first.max() > 0.75
    assert not torch.equal(torch.floor(a * 32).long(), torch.arange(32)), "strata in order: not shuffled"


def test_uniform_grid() -> None:
    assert uniform_grid(4).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
