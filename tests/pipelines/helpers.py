"""Tiny parameter trees for end-to-end stage runs."""

from __future__ import annotations

from typing import Any

TINY: dict[str, Any] = {
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "cond_dim": 32, "time_freq_dim": 32},
    "train": {"steps": 12, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "ema_decay": 0.9, "val_every": 6,
              "val_batches": 2, "ckpt_every": 6, "log_every": 3, "sample_n": 2, "sample_steps": [4]},
    "distill": {"steps": 6, "batch_size": 8, "warmup_steps": 1, "ema_decay": 0.9, "val_every": 3, "val_batches": 2,
                "ckpt_every": 3, "log_every": 3, "sample_n": 2, "sample_steps": [1, 2]},
    "ar": {"steps": 12, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "ema_decay": 0.9, "val_every": 6,
           "val_batches": 2, "ckpt_every": 6, "log_every": 3, "sample_n": 2, "sample_steps": [1]},
    "mdlm": {"steps": 12, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "ema_decay": 0.9, "val_every": 6,
             "val_batches": 2, "ckpt_every": 6, "log_every": 3, "sample_n": 2, "sample_steps": [1, 4]},
}
TINY_EVAL: dict[str, Any] = {"models": ["flm", "fmlm", "mdlm", "ar"], "n_samples": 2, "batch_size": 2, "n_boot": 20,
                             "max_nfe": 2, "fmlm_nfe": [1, 2], "promote_nfe": 2, "n_show": 1}
"""A tiny ``eval`` section: every model, two samples, NFE 1 and 2."""
LEARNS: dict[str, Any] = TINY | {name: TINY[name] | {"lr": 1e-2, "ema_decay": 0.5} for name in ("train", "ar", "mdlm")}
"""TINY whose 12 steps learn: the EMA weights (what validation and the checkpoints hold) reach a val NLL well
below ln V = ln 512 = 6.24, the score of an untrained, zero-initialized head (TINY's own EMA: 6.21)."""
MARGIN = 0.3
"""Nats below ln V that a stage trained with LEARNS must reach (measured in the tests that use it)."""
