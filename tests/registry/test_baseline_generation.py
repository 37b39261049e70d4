"""TextGenerator on the baselines: saved AR and MDLM checkpoints generate text of the requested length."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flm.model import DiT, DiTConfig
from flm.objectives import ARObjective
from flm.registry.generator import TextGenerator
from flm.train.checkpoint import save_checkpoint
from flm.train.ema import EMA

from .conftest import VOCAB
from .helpers import TINY, _Holder


def baseline_checkpoint(run_dir: Path, kind: str) -> Path:
    """A random tiny AR (causal, no time) or MDLM (bidirectional, one time) with ``V + 1`` ids."""
    torch.manual_seed(0)
    causal = kind == "ar"
    backbone = DiT(DiTConfig(VOCAB + 1, n_times=0 if causal else 1, causal=causal, **TINY))
    with torch.no_grad():
        for param in backbone.parameters():
            param.normal_(0.0, 0.3)
    holder = _Holder(backbone)
    meta = {"params": {"data": {"packing": {"seq_len": 16}}}, "model_kind": kind}
    return save_checkpoint(run_dir, 1, holder, "backbone", EMA(backbone, 0.9),
                           torch.optim.AdamW(holder.parameters()), torch.Generator(), meta, keep_last=1)


@pytest.fixture(scope="module")
def baselines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("baselines")
    return {kind: baseline_checkpoint(root / kind, kind) for kind in ("ar", "mdlm")}


@pytest.mark.parametrize("kind", ["ar", "mdlm"])
def test_saved_baselines_generate_text_of_the_requested_length(baselines: dict, tokenizer_dir: Path,
                                                               kind: str) -> None:
    gen = TextGenerator(baselines[kind])
    assert gen.kind == kind and gen.vocab_size == VOCAB  # the start / mask id is not a token
    ids = gen.sample_ids(3, 4, 12, seed=1)
    assert ids.shape == (3, 12) and ids.min() >= 0 and ids.max() < VOCAB
    assert torch.equal(ids, gen.sample_ids(3, 4, 12, seed=1)) and not torch.equal(ids, gen.sample_ids(3, 4, 12, 2))
    assert [len(text.split()) for text in gen.generate(2, steps=4, length=9)] == [9, 9]
    assert [len(text.split()) for text in gen.generate(1, steps=2)] == [16]  # default length: the training L
    texts = TextGenerator(baselines[kind], tokenizer_dir).generate(2, steps=4, length=12, seed=3)
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
    with pytest.raises(ValueError, match=f"prefix is not supported for {kind}"):
        gen.sample_ids(1, 2, 8, prefix=[1, 2])
    with pytest.raises(ValueError, match="renoise applies to FMLM"):
        gen.sample_ids(1, 2, 8, renoise=True)


def test_ar_goes_through_its_cached_sampler_and_ignores_steps(baselines: dict) -> None:
    gen = TextGenerator(baselines["ar"])
    ids = gen.sample_ids(2, 1, 10, seed=5)
    assert torch.equal(ids, gen.sample_ids(2, 64, 10, seed=5))  # NFE = length whatever `steps` says
    reference = ARObjective(gen.backbone).sample_nocache(2, 10, 1, torch.Generator().manual_seed(5))
    assert torch.equal(ids, reference)


@pytest.mark.parametrize("steps", [1, 5])
def test_mdlm_makes_one_network_call_per_step(baselines: dict, steps: int) -> None:
    gen = TextGenerator(baselines["mdlm"])
    calls: list[int] = []
    hook = gen.backbone.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        gen.sample_ids(2, steps, 8)
    finally:
        hook.remove()
    assert len(calls) == steps
