"""A checkpoint saved with ``attn_impl: flash`` samples anywhere; training asking for flash where it cannot run stops.

Generation on CPU in float32 (where flash-attn cannot run, installed or not) takes the SDPA path with
the same weights: the same tokens as the checkpoint saved with ``sdpa``, through the real save
(``flm.train.checkpoint``) and load (``TextGenerator.load``) path.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from flm.config import TrainParams
from flm.model import DiT, DiTConfig, layers
from flm.objectives import FLMObjective
from flm.registry.generator import TextGenerator
from flm.train.checkpoint import save_checkpoint
from flm.train.ema import EMA
from flm.train.loop import train_loop

V = 40
KINDS = {"flm": {"n_times": 1, "causal": False}, "ar": {"n_times": 0, "causal": True}}  # AR: the KV-cache path


class _Holder(nn.Module):
    def __init__(self, backbone: DiT) -> None:
        super().__init__()
        self.backbone = backbone


def _save(backbone: DiT, run_dir: Path, kind: str) -> Path:
    """``backbone`` as the EMA weights of a real checkpoint of ``kind`` (``L = 12``)."""
    holder = _Holder(backbone)
    meta = {"model_kind": kind, "params": {"data": {"packing": {"seq_len": 12}}}}
    return save_checkpoint(run_dir, 1, holder, "backbone", EMA(backbone, 0.9),
                           torch.optim.AdamW(holder.parameters()), torch.Generator(), meta, keep_last=1)


@pytest.mark.parametrize("softcap", [0.0, 0.2])
@pytest.mark.parametrize("kind", ["flm", "ar"])
def test_flash_checkpoint_generates_the_sdpa_tokens_on_cpu(
    tmp_path: Path, kind: str, softcap: float, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    extra = 1 if kind == "ar" else 0  # AR's start token
    sdpa = DiT(DiTConfig(V + extra, 32, 2, 2, cond_dim=16, time_freq_dim=32, softcap=softcap, **KINDS[kind]))
    with torch.no_grad():
        for p in sdpa.parameters():
            if not p.any():  # adaLN-zero and head layers: randomized, so the output depends on the input
                p.normal_(0, 0.3)
    flash = DiT(sdpa.config.replace(attn_impl="flash"))
    flash.load_state_dict(sdpa.state_dict())
    nets = {"sdpa": sdpa, "flash": flash}
    if softcap:  # the same weights without the cap: other tokens, so the cap matters at this size
        nets["uncapped"] = DiT(sdpa.config.replace(softcap=0.0))
        nets["uncapped"].load_state_dict(sdpa.state_dict())
    paths = {name: _save(net, tmp_path / name, kind) for name, net in nets.items()}

    layers._log_fallback.cache_clear()
    with caplog.at_level(logging.INFO, logger="flm.model.layers"):
        generators = {name: TextGenerator.load(path) for name, path in paths.items()}
        assert generators["flash"].backbone.config.attn_impl == "flash"
        assert generators["flash"].backbone.embedding.dtype == torch.float32
        tokens = {name: gen.sample_ids(3, 4, 12, seed=5) for name, gen in generators.items()}
    assert torch.equal(tokens["flash"], tokens["sdpa"])
    if softcap:
        assert not torch.equal(tokens["uncapped"], tokens["sdpa"])
    assert len({tuple(row) for row in tokens["flash"].tolist()}) > 1  # real samples, not a constant
    assert any("falls back to SDPA" in r.getMessage() and "CUDA only" in r.getMessage() for r in caplog.records)


def test_training_that_asks_for_flash_where_it_cannot_run_stops_at_start(tmp_path: Path) -> None:
    """CPU training (any dtype) cannot run flash-attn: an error naming the fix, before any step."""
    objective = FLMObjective(DiT(DiTConfig(V, 32, 1, 2, cond_dim=16, attn_impl="flash")))
    settings = TrainParams(steps=1, batch_size=2, sample_n=0)
    with pytest.raises(ValueError, match=r"attn_impl='flash' cannot run in this training: flash-attn runs on CUDA"):
        train_loop(objective, "backbone", settings, None, None, tmp_path, progress=False)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())  # nothing was trained or written
    DiT(DiTConfig(V, 32, 1, 2, cond_dim=16)).check_attention("cpu", torch.float32)  # sdpa: always runs
