"""Training times and FMLM's batch split are drawn for the global batch, then sliced.

However a global batch is cut (workers, accumulation micro-steps), the slices together train on
exactly the global draw: the same multiset of times, and for distillation the same pairs
``(τ_s, τ_t)`` and the same diagonal / boundary / off-diagonal counts, each slice holding its share
of every kind. Checked on the objectives directly (1, 2, 4 slices) and through the training loop
(1, 2, 4 accumulation steps), whose time generator is seeded per step, not per micro-step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

from flm.data.blocks import TokenBlocks
from flm.flow import BatchSlice
from flm.model import DiT
from flm.objectives import FLMObjective, FMLMDistillation, MDLMObjective
from flm.objectives.common import LossOutput
from flm.objectives.fmlm_distill import split_sizes
from flm.train.loop import train_loop
from tests.conftest import gen
from tests.train.conftest import tiny_train
from tests.train.helpers import tiny_flm

B, L, V = 16, 8, 24


class RecordingFLM(FLMObjective):
    """FLM objective that records the times each call trains on."""

    def __init__(self, backbone: DiT) -> None:
        super().__init__(backbone)
        self.seen: list[Tensor] = []

    def loss(self, x: Tensor, tau: Tensor, noise_h: Tensor) -> LossOutput:
        self.seen.append(tau.detach().clone())
        return super().loss(x, tau, noise_h)


class RecordingMDLM(MDLMObjective):
    def __init__(self, backbone: DiT) -> None:
        super().__init__(backbone)
        self.seen: list[Tensor] = []

    def loss(self, x: Tensor, z_t: Tensor, masked: Tensor, t: Tensor) -> LossOutput:
        self.seen.append(t.detach().clone())
        return super().loss(x, z_t, masked, t)


class RecordingFMLM(FMLMDistillation):
    """Records ``(τ_s, τ_t)`` per row and the number of diagonal rows of each call."""

    seen: list[tuple[Tensor, Tensor, int]]

    def loss(
        self, x: Tensor, tau_s: Tensor, tau_t: Tensor, noise_t: Tensor, noise_s: Tensor, n_diag: int | None = None
    ) -> LossOutput:
        self.seen.append((tau_s.detach().clone(), tau_t.detach().clone(), n_diag))
        return super().loss(x, tau_s, tau_t, noise_t, noise_s, n_diag)


def tiny_dit(n_times: int, vocab: int = V) -> DiT:
    from flm.config import ModelParams
    from tests.train.conftest import TINY_MODEL

    torch.manual_seed(0)
    return DiT(ModelParams(**TINY_MODEL).dit_config(vocab).replace(n_times=n_times))


def run_slices(objective: torch.nn.Module, k: int, x: Tensor) -> None:
    """Call the objective on ``k`` slices of one global batch, each worker seeding its own times
    generator identically (as the loop does) and its noise generator differently."""
    n = x.shape[0] // k
    for j in range(k):
        rows = BatchSlice(x.shape[0], j * n, gen(11))
        objective(x[j * n : (j + 1) * n], gen(100 + j), rows)


def fmlm() -> RecordingFMLM:
    distill = RecordingFMLM.from_teacher(tiny_dit(1))
    distill.seen = []
    return distill


@pytest.mark.parametrize(("make", "eps"), [(lambda: RecordingFLM(tiny_dit(1)), 0.0),
                                           (lambda: RecordingMDLM(tiny_dit(1, V + 1)), 1e-3)], ids=["flm", "mdlm"])
def test_slices_of_a_global_batch_train_on_the_same_times(make: Callable[[], torch.nn.Module], eps: float) -> None:
    x = torch.randint(0, V, (B, L), generator=gen(0))
    drawn = {}
    for k in (1, 2, 4):
        objective = make()
        run_slices(objective, k, x)
        assert [len(t) for t in objective.seen] == [B // k] * k
        drawn[k] = torch.cat(objective.seen).sort().values
    torch.testing.assert_close(drawn[2], drawn[1], rtol=0, atol=0)
    torch.testing.assert_close(drawn[4], drawn[1], rtol=0, atol=0)
    # stratified over the global batch: one time per stratum of [0, 1) (MDLM: t = ε + (1 - ε) u)
    u = (drawn[1].double() - eps) / (1 - eps)
    assert torch.equal(torch.floor(u * B).long().clamp(0, B - 1), torch.arange(B))


def test_slices_of_a_global_batch_see_the_same_split_and_times_in_distillation() -> None:
    x = torch.randint(0, V, (64, L), generator=gen(0))
    n_diag, n_bnd, n_off = split_sizes(64, 0.5, 1 / 64)
    pairs = {}
    for k in (1, 2, 4):
        distill = fmlm()
        run_slices(distill, k, x)
        rows = []
        for tau_s, tau_t, diag in distill.seen:
            n = len(tau_s)
            # each slice: its diagonal rows first, and its share of every kind (within one row)
            assert torch.equal(tau_s[:diag], tau_t[:diag]) and (tau_t[diag:] > tau_s[diag:]).all()
            assert abs(diag - n_diag * n / 64) <= 1
            rows += list(zip(tau_s.tolist(), tau_t.tolist(), strict=True))
        pairs[k] = sorted(rows)
        kinds = [sum(1 for s, t in rows if s == t), sum(1 for s, t in rows if (s, t) == (0.0, 1.0))]
        assert kinds == [n_diag, n_bnd], f"{k} slices: {kinds} diagonal/boundary rows, global split {n_diag}/{n_bnd}"
    assert pairs[2] == pairs[1] and pairs[4] == pairs[1]
    assert len(pairs[1]) == n_diag + n_bnd + n_off


def test_the_training_loop_draws_times_per_step_for_the_global_batch(tiny_data: dict, tmp_path: Path) -> None:
    train = TokenBlocks(tiny_data["tokens"], "train")
    drawn = {}
    for accum in (1, 2, 4):
        objective = RecordingFLM(tiny_flm(train.vocab_size).backbone)
        settings = tiny_train(steps=2, batch_size=8, grad_accum=accum, warmup_steps=0)
        train_loop(objective, "backbone", settings, train, None, tmp_path / f"accum{accum}", progress=False)
        assert len(objective.seen) == 2 * accum
        per_step = [torch.cat(objective.seen[i * accum : (i + 1) * accum]).sort().values for i in range(2)]
        drawn[accum] = per_step
    for accum in (2, 4):
        for step in range(2):
            torch.testing.assert_close(drawn[accum][step], drawn[1][step], rtol=0, atol=0)
    assert not torch.equal(drawn[1][0], drawn[1][1]), "each step draws new times"


def test_a_slice_of_the_global_split_needs_no_host_sync() -> None:
    """The slice's diagonal count comes from the batch sizes, not from a device read."""
    from tests.objectives.test_host_sync import syncs

    distill, x = fmlm(), torch.randint(0, V, (16, L), generator=gen(0))
    assert syncs(lambda: distill(x, gen(1), BatchSlice(64, 16, gen(11))).loss.backward()) == []
