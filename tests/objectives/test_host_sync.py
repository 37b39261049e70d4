"""No host synchronization inside a training or sampling step.

On a GPU, a host sync is any op whose result the CPU must read before it can go on: ``.item()``,
``float(t)``, ``bool(t)``, data-dependent shapes (``nonzero``, boolean indexing, ``unique``). They
all reach the dispatcher as one of the ops in ``SYNC_OPS``, whatever the device, so recording the
dispatched ops of a step on CPU finds every sync the same step would make on CUDA.

The probe covers what runs per step: the objective's forward (times, noise, interpolant, network,
loss), the backward, gradient clipping, the EMA update, and every sampler's loop. The optimizer's
``step()`` is outside: PyTorch's AdamW keeps its step count on the host (foreach) or on the device
(fused, what ``build_optimizer`` picks on CUDA), neither a device sync.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from flm.flow.sampler import flow_map_sample, prefix_clamp
from flm.flow.time_sampling import uniform_grid
from flm.model import DiT, DiTConfig
from flm.objectives import ARObjective, FLMObjective, FMLMDistillation, MDLMObjective
from flm.objectives.common import ProjectedSpace
from flm.train.ema import EMA

aten = torch.ops.aten
SYNC_OPS = {
    aten._local_scalar_dense, aten.item, aten.is_nonzero, aten.equal, aten.nonzero, aten.nonzero_static,
    aten.masked_select, aten._unique2, aten.unique_consecutive, aten.unique_dim, aten.repeat_interleave,
}


MASKED_INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}
"""Indexing ops that sync when an index is boolean (they run ``nonzero`` inside the kernel)."""


def _boolean_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


class SyncProbe(TorchDispatchMode):
    """Records every dispatched op that makes the host wait for a device value."""

    def __init__(self) -> None:
        super().__init__()
        self.hits: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in SYNC_OPS or (packet in MASKED_INDEXING and _boolean_index(args)):
            self.hits.append(str(func))
        return func(*args, **(kwargs or {}))


def syncs(fn: Callable[[], object]) -> list[str]:
    """The host-sync ops dispatched while ``fn()`` runs."""
    with SyncProbe() as probe:
        fn()
    return probe.hits


def test_probe_sees_host_syncs() -> None:
    """The probe itself: the usual ways to sync are all caught."""
    t = torch.arange(6.0)
    assert syncs(lambda: t.sum().item())
    assert syncs(lambda: float(t.max()))
    assert syncs(lambda: bool((t > 2).any()))
    assert syncs(lambda: t[t > 2])
    assert syncs(lambda: t.clone().__setitem__(t > 2, 0.0))
    assert not syncs(lambda: (t * 2).softmax(0).argmax())


def _dit(times: int, vocab: int = 40, causal: bool = False) -> DiT:
    torch.manual_seed(0)
    return DiT(DiTConfig(vocab, 32, 2, 2, cond_dim=32, n_times=times, causal=causal))


def _train_step(objective: torch.nn.Module, backbone: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    ema = EMA(backbone, 0.99)
    params = [p for p in objective.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(3)

    def step() -> None:
        out = objective(x, gen)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        ema.update(backbone)
        {k: v.detach().float() for k, v in out.metrics.items()}  # the loop's window sums

    return step


def test_flm_training_step_never_syncs() -> None:
    flm = FLMObjective(_dit(1))
    x = torch.randint(0, 40, (4, 16))
    assert syncs(_train_step(flm, flm.backbone, x)) == []
    chunked = FLMObjective(_dit(1), ce_chunk=24)
    assert syncs(_train_step(chunked, chunked.backbone, x)) == []


def test_fmlm_distillation_step_never_syncs() -> None:
    x = torch.randint(0, 40, (8, 16))
    for chunk in (0, 24):
        fmlm = FMLMDistillation.from_teacher(_dit(1), ce_chunk=chunk)
        assert syncs(_train_step(fmlm, fmlm.student, x)) == []


MDLM_GATHERS = {"aten.index.Tensor", "aten.index_put.default", "aten.index_put_.default"}
"""The MDLM baseline's one deliberate sync: its loss sends only the masked positions through the head
(half the head's work on average) and its sampler draws float64 Gumbel noise only for the positions
it reveals (about B·L/K rows instead of B·L·V numbers); both select rows with a boolean mask."""


def test_baseline_training_steps_sync_only_where_documented() -> None:
    x = torch.randint(0, 40, (4, 16))
    ar = ARObjective(_dit(0, vocab=41, causal=True))
    assert syncs(_train_step(ar, ar.backbone, x)) == []
    mdlm = MDLMObjective(_dit(1, vocab=41))
    assert set(syncs(_train_step(mdlm, mdlm.backbone, x))) <= MDLM_GATHERS


def test_samplers_never_sync() -> None:
    gen = torch.Generator().manual_seed(5)
    flm = FLMObjective(_dit(1)).eval()
    fmlm = FMLMDistillation.from_teacher(_dit(1)).eval()
    assert syncs(lambda: flm.sample(3, 16, 8, gen)) == []
    assert syncs(lambda: fmlm.sample(3, 16, 1, gen)) == []
    assert syncs(lambda: fmlm.sample(3, 16, 4, gen, g=0.8)) == []
    assert set(syncs(lambda: MDLMObjective(_dit(1, vocab=41)).eval().sample(3, 16, 8, gen))) <= MDLM_GATHERS
    assert syncs(lambda: ARObjective(_dit(0, vocab=41, causal=True)).eval().sample(3, 16, 0, gen)) == []

    student = fmlm.student
    space = ProjectedSpace(student.embedding)
    clamp = prefix_clamp(torch.tensor([1, 2, 3]), 3, 16, student.embed_ids)

    def clamped() -> None:
        flow_map_sample(fmlm.denoise, space.noise((3, 16), gen), uniform_grid(4), fmlm.schedule,
                        lift=space.lift, g=0.8, noise=space.noise_fn((3, 16), gen), clamp=clamp)

    assert syncs(clamped) == []
