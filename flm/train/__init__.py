"""A plain PyTorch training loop: state, step, loop (no ray / mlflow / prefect imports)."""

from flm.train.ema import EMA
from flm.train.simple import OptimSettings, build_optimizer, fit, lr_at

__all__ = ["EMA", "OptimSettings", "build_optimizer", "fit", "lr_at"]
