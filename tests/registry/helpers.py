"""Tiny self-describing checkpoints (``flm.train.checkpoint``) for the generation tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from flm.model import DiT, DiTConfig
from flm.train.checkpoint import save_checkpoint
from flm.train.ema import EMA

TINY = {"d_model": 32, "n_layers": 2, "n_heads": 2, "cond_dim": 32, "time_freq_dim": 32}


class _Holder(nn.Module):
    """The trainable objective as a checkpoint sees it: just the backbone."""

    def __init__(self, backbone: DiT) -> None:
        super().__init__()
        self.backbone = backbone


def save_backbone(backbone: DiT, run_dir: Path, seq_len: int = 16) -> Path:
    """``run_dir/ckpt-00000001`` holding ``backbone`` as its EMA weights; records ``seq_len`` as ``L``."""
    holder = _Holder(backbone)
    optimizer = torch.optim.AdamW(holder.parameters(), lr=1e-3)
    meta = {"params": {"data": {"packing": {"seq_len": seq_len}}}}
    return save_checkpoint(run_dir, 1, holder, "backbone", EMA(backbone, 0.9), optimizer,
                           torch.Generator().manual_seed(0), meta, keep_last=1)


def tiny_checkpoint(run_dir: Path, vocab_size: int, n_times: int, seed: int = 0, seq_len: int = 16) -> Path:
    """A random ~50k-parameter FLM (``n_times = 1``) or FMLM (``n_times = 2``) checkpoint."""
    torch.manual_seed(seed)
    backbone = DiT(DiTConfig(vocab_size, n_times=n_times, **TINY))
    with torch.no_grad():
        for param in backbone.parameters():
            if not param.any():  # adaLN-zero and head layers: randomized, so the output depends on the input
                param.normal_(0.0, 0.3)
    return save_backbone(backbone, run_dir, seq_len)
