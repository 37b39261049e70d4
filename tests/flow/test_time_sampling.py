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


def test_times_depend_only_on_generator_and_global_batch() -> None:
    a = stratified_times(32, gen(7))
    b = stratified_times(32, gen(7))
    assert torch.equal(a, b)
    # two workers (or accumulation steps) take slices of the one global draw: together they are
    # exactly the global batch, and each slice still spreads over [0, 1]
    first, second = a[:16], a[16:]
    assert torch.equal(torch.cat([first, second]), a)
    assert first.min() < 0.25 and first.max() > 0.75
    assert stratified_times(32, gen(8)).ne(a).any()


def test_uniform_grid() -> None:
    assert uniform_grid(4).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
