"""Exponential moving average of a module's weights (evaluation and teachers use it)."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """``θ_ema ← decay θ_ema + (1 - decay) θ`` after every optimizer step.

    ``self.module`` is a frozen deep copy of the tracked module (same class, same config), so it
    can be evaluated, sampled from or handed to distillation as a teacher directly.
    """

    def __init__(self, module: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(module).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Blend ``module``'s current parameters into the average (buffers are copied)."""
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in module.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - self.decay)
        for b_ema, b in zip(self.module.buffers(), module.buffers(), strict=True):
            b_ema.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
