"""Device options (``--device``), checked against this machine before anything starts, and the
device-bound objects generation builds.

:func:`resolve_device` accepts ``cpu``, ``cuda`` and ``cuda:N``; ``None`` means CUDA when
available, else CPU. A device this machine does not have is a :class:`flm.errors.UsageError`
naming the option, raised before a flow, a server or a model is started.
:func:`seeded_generator` is the one place a sampler's random number generator is made (on the
model's device: CUDA kernels refuse a CPU generator); :func:`network_autocast` is the precision a
network runs in during generation.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from flm.errors import UsageError

if TYPE_CHECKING:
    import torch

__all__ = ["network_autocast", "resolve_device", "seeded_generator"]

_DEVICE = re.compile(r"(?P<kind>cpu|cuda)(?::(?P<index>\d+))?")


def resolve_device(device: str | None, option: str = "--device") -> str:
    """``device`` checked against this machine (``None``: ``cuda`` if available, else ``cpu``).

    Raises:
        UsageError: not ``cpu``, ``cuda`` or ``cuda:N``, or a CUDA device this machine lacks; the
            message names ``option``.
    """
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device is None:
        return "cuda" if available else "cpu"
    match = _DEVICE.fullmatch(device)
    if match is None or (match["kind"] == "cpu" and match["index"] is not None):
        raise UsageError(f"{option} {device}: unknown device; expected cpu, cuda or cuda:N")
    if match["kind"] == "cuda":
        if available == 0:
            raise UsageError(f"{option} {device}: no CUDA device is available on this machine")
        if match["index"] is not None and int(match["index"]) >= available:
            raise UsageError(f"{option} {device}: this machine has {available} CUDA device(s), "
                             f"cuda:0 to cuda:{available - 1}")
    return device


def seeded_generator(device: torch.device | str, seed: int) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` (the model's), seeded with ``seed``."""
    import torch

    return torch.Generator(device).manual_seed(int(seed))


def network_autocast(device: torch.device | str, bf16: bool = True) -> AbstractContextManager[None]:
    """bf16 autocast on CUDA when ``bf16``; a no-op on every other device (CPU generation stays float32).

    Only the network's matmuls change precision: the samplers build their noise, state and lifts
    in float32 with autocast switched off (:func:`flm.flow.interpolant.full_precision`), and read
    the network's output in float32.
    """
    import torch

    if bf16 and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
