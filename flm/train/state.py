"""The training state as tensors + JSON: weights, optimizer, RNG (so nothing is ever pickled).

An optimizer's ``state_dict()`` is split into its tensors (``state.{param}.{name}``, for
safetensors) and the rest (param groups, non-tensor per-parameter values, for JSON). RNG states
are uint8 tensors: torch's global CPU generator, the CUDA one when present, and the objective's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from flm.train.ema import EMA

__all__ = [
    "frozen_children",
    "optimizer_from_flat",
    "optimizer_to_flat",
    "rng_state",
    "set_rng_state",
    "swapped_to_ema",
    "trainable_state",
]


def frozen_children(objective: nn.Module) -> list[str]:
    """Names of direct children whose parameters are all frozen (e.g. a distillation teacher)."""
    names = []
    for name, child in objective.named_children():
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            names.append(name)
    return names


def trainable_state(objective: nn.Module) -> dict[str, Tensor]:
    """``objective.state_dict()`` without frozen children (a teacher is saved in its own checkpoint)."""
    skip = tuple(f"{name}." for name in frozen_children(objective))
    return {k: v for k, v in objective.state_dict().items() if not k.startswith(skip)}


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into ``{"state.<i>.<name>": tensor}`` and a JSON-ready rest."""
    full = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in full["state"].items():
        for name, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"state.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": full["param_groups"], "scalars": scalars}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], rest: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_to_flat`: load the split state into ``optimizer``."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in rest["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for group in rest["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state(generator: torch.Generator) -> dict[str, Tensor]:
    """uint8 state tensors: ``torch_cpu``, ``cuda`` (when CUDA is initialized) and ``objective``."""
    states = {"torch_cpu": torch.get_rng_state(), "objective": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_state(generator: torch.Generator, states: dict[str, Tensor]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(states["torch_cpu"])
    generator.set_state(states["objective"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


@contextmanager
def swapped_to_ema(module: nn.Module, ema: EMA) -> Iterator[nn.Module]:
    """Inside the block ``module`` holds the EMA weights; its own are put back bit for bit after.

    Lets evaluation and sampling use the EMA weights through the live objective (whatever wraps
    ``module``) without building a second objective.
    """
    live = [p.detach().clone() for p in module.parameters()]
    with torch.no_grad():
        for p, q in zip(module.parameters(), ema.module.parameters(), strict=True):
            p.copy_(q)
    try:
        yield module
    finally:
        with torch.no_grad():
            for p, saved in zip(module.parameters(), live, strict=True):
                p.copy_(saved)
