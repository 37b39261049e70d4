"""Device placement without a GPU: generation, training steps and the evaluation's sampling on a fake CUDA device.

Every module and input is moved to ``cuda`` under :class:`~tests.device.fake_cuda.FakeCuda`, which
computes on the CPU but enforces CUDA's rules (one device per op, generators on their tensors'
device). A table, grid, mask or generator left on the CPU fails the run the way it would on a GPU;
values are real, so each fake-CUDA result must also equal the same run on the CPU.

The one patch here: ``torch.Generator("cuda")`` cannot be built without CUDA, so the generator's
:func:`flm.device.seeded_generator` is routed to :meth:`FakeCuda.generator` (a CPU generator the
mode holds to be a CUDA one, seeded identically). The mode itself wraps ``torch.func.jvp`` (the
Lagrangian and Eulerian distillation), whose outputs functorch unwraps outside any mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import flm.registry.generator as generator_module
from flm.config import EvalParams
from flm.eval.stage import model_entries
from flm.model import DiT, DiTConfig
from flm.objectives import ARObjective, FLMObjective, FMLMDistillation, MDLMObjective
from flm.registry.generator import TextGenerator
from flm.train.checkpoint import save_checkpoint
from flm.train.ema import EMA
from tests.device.fake_cuda import DeviceMismatch, FakeCuda

VOCAB, LENGTH = 48, 12
TINY = {"d_model": 32, "n_layers": 2, "n_heads": 2, "cond_dim": 32, "time_freq_dim": 32}
PREFIX = [5, 17, 3]
pytestmark = pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")  # autocast("cuda") on a CPU build


class _Holder(nn.Module):
    def __init__(self, backbone: DiT) -> None:
        super().__init__()
        self.backbone = backbone


def _backbone(kind: str) -> DiT:
    torch.manual_seed(0)
    extra = 1 if kind in ("ar", "mdlm") else 0
    times = {"flm": 1, "fmlm": 2, "mdlm": 1, "ar": 0}[kind]
    backbone = DiT(DiTConfig(VOCAB + extra, n_times=times, causal=kind == "ar", **TINY))
    with torch.no_grad():
        for param in backbone.parameters():
            if not param.any():  # zero-initialized layers: random, so outputs depend on inputs
                param.normal_(0.0, 0.3)
    return backbone


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("placement")
    out = {}
    for kind in ("flm", "fmlm", "mdlm", "ar"):
        holder = _Holder(_backbone(kind))
        meta = {"params": {"data": {"packing": {"seq_len": LENGTH}}}, "model_kind": kind}
        out[kind] = save_checkpoint(root / kind, 1, holder, "backbone", EMA(holder.backbone, 0.9),
                                    torch.optim.AdamW(holder.parameters()), torch.Generator(), meta, keep_last=1)
    return out


@pytest.fixture
def cuda(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCuda]:
    mode = FakeCuda()
    monkeypatch.setattr(generator_module, "seeded_generator",
                        lambda device, seed: mode.generator(device).manual_seed(int(seed)))
    with mode:
        yield mode


REQUESTS = {  # name -> (kind, sample_ids keywords)
    "flm": ("flm", {"steps": 4}),
    "flm-prefix": ("flm", {"steps": 4, "prefix": PREFIX}),
    "fmlm-1": ("fmlm", {"steps": 1}),
    "fmlm-deterministic": ("fmlm", {"steps": 4}),
    "fmlm-renoised": ("fmlm", {"steps": 4, "renoise": True}),
    "fmlm-prefix-renoised": ("fmlm", {"steps": 4, "prefix": PREFIX, "renoise": True}),
    "mdlm": ("mdlm", {"steps": 4}),
    "ar": ("ar", {"steps": 1}),
}


@pytest.mark.parametrize("name", list(REQUESTS))
def test_generation_runs_on_cuda_and_matches_cpu(checkpoints: dict[str, Path], name: str) -> None:
    kind, request = REQUESTS[name]
    expected = TextGenerator(checkpoints[kind]).sample_ids(3, length=LENGTH, seed=7, **request)
    mode = FakeCuda()
    with pytest.MonkeyPatch.context() as patch, mode:
        patch.setattr(generator_module, "seeded_generator",
                      lambda device, seed: mode.generator(device).manual_seed(int(seed)))
        generator = TextGenerator(checkpoints[kind], device="cuda")
        assert mode.on_cuda(generator.backbone.embedding)
        ids = generator.sample_ids(3, length=LENGTH, seed=7, **request)
        assert ids.device.type == "cuda"
        texts = generator.decode(ids)
    assert torch.equal(ids, expected)  # the same numbers: only placement differs
    assert len(texts) == 3


def _objective(kind: str, chunk: int) -> tuple[nn.Module, nn.Module]:
    """``(objective, trained backbone)`` built on the CPU, as the training stages build them."""
    if kind == "flm":
        obj = FLMObjective(_backbone("flm"), learn_loss_weight=True, ce_chunk=chunk)
        return obj, obj.backbone
    if kind.startswith("fmlm"):
        method = kind.partition("-")[2] or "semigroup"
        obj = FMLMDistillation.from_teacher(_backbone("flm"), ce_chunk=chunk, method=method)
        return obj, obj.student
    if kind == "mdlm":
        obj = MDLMObjective(_backbone("mdlm"), ce_chunk=chunk)
        return obj, obj.backbone
    obj = ARObjective(_backbone("ar"), ce_chunk=chunk)
    return obj, obj.backbone


@pytest.mark.parametrize("chunk", [0, 16])
@pytest.mark.parametrize("kind", ["flm", "fmlm", "fmlm-lagrangian", "fmlm-eulerian", "mdlm", "ar"])
def test_training_step_runs_on_cuda(cuda: FakeCuda, kind: str, chunk: int) -> None:
    """Forward and backward of one step, objective moved with ``.to("cuda")`` like the training stages."""
    objective, backbone = _objective(kind, chunk)
    objective = objective.to("cuda").train()
    x = torch.randint(0, VOCAB, (8, LENGTH), device="cuda")
    out = objective(x, cuda.generator("cuda").manual_seed(1))
    out.loss.backward()
    assert out.loss.device.type == "cuda" and torch.isfinite(out.loss)
    assert all(v.device.type == "cuda" for v in out.metrics.values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.parameters())


def test_evaluation_sampling_runs_on_cuda(checkpoints: dict[str, Path], cuda: FakeCuda) -> None:
    """The evaluate stage's entries (every model, NFE and variant of a small grid) sample on ``cuda``."""
    params = EvalParams(models=("flm", "fmlm", "mdlm", "ar"), max_nfe=2, fmlm_nfe=(1, 2), promote_nfe=2)
    for name in params.models:
        generator = TextGenerator(checkpoints[name], device="cuda")
        for entry in model_entries(name, generator, params, LENGTH):
            rows = entry.sample(2, entry.nfe, 11)
            assert len(rows) == 2 and all(len(r) == LENGTH and all(isinstance(t, int) for t in r) for r in rows)


def test_the_mode_catches_a_table_left_on_the_cpu(cuda: FakeCuda) -> None:
    """The bug this file guards against, in miniature: a CPU lookup table indexed by CUDA times."""
    from flm.flow import TimeSchedule

    tau = torch.rand(4, device="cuda")
    with pytest.raises(DeviceMismatch, match="same device"):
        TimeSchedule(VOCAB).gamma(tau)
    assert cuda.on_cuda(TimeSchedule(VOCAB).to(tau.device).gamma(tau))
    with pytest.raises(DeviceMismatch, match="generator"):
        torch.randn(3, generator=torch.Generator(), device="cuda")
