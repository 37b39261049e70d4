"""Device options (``--device``), checked against this machine before anything starts.

:func:`resolve_device` accepts ``cpu``, ``cuda`` and ``cuda:N``; ``None`` means CUDA when
available, else CPU. A device this machine does not have is a :class:`flm.errors.UsageError`
naming the option, raised before a flow, a server or a model is started.
"""

from __future__ import annotations

import re

from flm.errors import UsageError

__all__ = ["resolve_device"]

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
