"""Self-describing checkpoints, written atomically; the last ``K`` are kept.

A checkpoint is a directory ``ckpt-<step:08d>`` holding

* ``model.safetensors``: the objective's trainable state (backbone, learned loss weight, ...;
  never a frozen teacher, which has its own checkpoint);
* ``ema.safetensors``: the EMA copy of the backbone (what evaluation, samplers and teachers use);
* ``optimizer.safetensors`` + ``optimizer.json``: the optimizer's tensors and the rest of its state;
* ``rng.safetensors``: uint8 RNG states (torch CPU, CUDA if used, the objective's generator);
* ``checkpoint.json``: format, step, backbone name, ``model_config`` (``DiTConfig.to_dict()``),
  and what the caller adds (params, data fingerprint, ``model_kind``, ...).

It is written into a hidden temporary sibling and renamed into place, so a run killed at any
moment leaves either the complete checkpoint or none. Nothing is unpickled when reading back.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from flm.data.atomic import atomic_dir
from flm.model import DiT, DiTConfig
from flm.train.ema import EMA
from flm.train.state import (
    optimizer_from_flat,
    optimizer_to_flat,
    rng_state,
    set_rng_state,
    trainable_state,
)

__all__ = [
    "FORMAT",
    "MODEL_KINDS",
    "latest_checkpoint",
    "list_checkpoints",
    "load_backbone",
    "model_kind",
    "read_meta",
    "restore_checkpoint",
    "save_checkpoint",
    "seq_len",
]

FORMAT = "flm.checkpoint/1"
MODEL_KINDS = ("flm", "fmlm", "ar", "mdlm")
"""What a checkpoint's backbone is: an FLM denoiser, an FMLM flow map, the AR or the MDLM baseline."""
_NAME = re.compile(r"^ckpt-(\d{8})$")


def _tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous, unshared copies (safetensors refuses tensors that share memory)."""
    return {key: value.detach().to("cpu", copy=True).contiguous() for key, value in state.items()}


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    objective: nn.Module,
    backbone_name: str,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    meta: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write ``run_dir/ckpt-<step>`` atomically, then delete all but the newest ``keep_last``.

    Args:
        backbone_name: attribute of ``objective`` holding the trained DiT (``backbone``/``student``).
        meta: JSON-ready extras for ``checkpoint.json`` (params, data fingerprint, ...).
    """
    run_dir = Path(run_dir)
    backbone = getattr(objective, backbone_name)
    final = run_dir / f"ckpt-{step:08d}"
    with atomic_dir(final) as tmp:
        save_file(_tensors(trainable_state(objective)), tmp / "model.safetensors")
        save_file(_tensors(ema.state_dict()), tmp / "ema.safetensors")
        opt_tensors, opt_rest = optimizer_to_flat(optimizer)
        save_file(_tensors(opt_tensors), tmp / "optimizer.safetensors")
        (tmp / "optimizer.json").write_text(json.dumps(opt_rest, indent=1), encoding="utf-8")
        save_file(_tensors(rng_state(generator)), tmp / "rng.safetensors")
        info = {
            **meta,
            "format": FORMAT,
            "step": step,
            "backbone": backbone_name,
            "ema_decay": ema.decay,
            "model_config": backbone.config.to_dict(),
        }
        (tmp / "checkpoint.json").write_text(json.dumps(info, indent=2, sort_keys=True), encoding="utf-8")
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary leftovers are ignored)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or ``None``."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def read_meta(checkpoint_dir: str | Path) -> dict[str, Any]:
    """``checkpoint.json`` of a checkpoint (step, model config, params, ...)."""
    path = Path(checkpoint_dir) / "checkpoint.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint (format {meta.get('format')!r})")
    return meta


def seq_len(meta: dict[str, Any], default: int = 128) -> int:
    """The training sequence length ``L`` a checkpoint's meta records (``params.data.packing``), else ``default``."""
    return int(meta.get("params", {}).get("data", {}).get("packing", {}).get("seq_len", default))


def model_kind(checkpoint_dir: str | Path) -> str:
    """The checkpoint's :data:`MODEL_KINDS` entry: its meta ``model_kind``, written by the training stages.

    Checkpoints from before that field are FLM (``n_times = 1``) or FMLM (``n_times = 2``); FLM and
    MDLM both have ``n_times = 1``, so only the field tells them apart.
    """
    meta = read_meta(checkpoint_dir)
    kind = meta.get("model_kind") or {1: "flm", 2: "fmlm"}.get(meta["model_config"]["n_times"])
    if kind not in MODEL_KINDS:
        raise ValueError(f"{checkpoint_dir}: unknown model kind {kind!r}; known kinds: {', '.join(MODEL_KINDS)}")
    return kind


def restore_checkpoint(
    checkpoint_dir: str | Path,
    objective: nn.Module,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> int:
    """Load a checkpoint into live objects (same shapes); return its step.

    Frozen children of ``objective`` (a teacher) are not in the checkpoint and stay as they are.
    """
    folder = Path(checkpoint_dir)
    device = next(objective.parameters()).device
    missing, unexpected = objective.load_state_dict(load_file(folder / "model.safetensors", device=str(device)),
                                                    strict=False)
    expected_missing = set(objective.state_dict()) - set(trainable_state(objective))
    if unexpected or set(missing) - expected_missing:
        raise RuntimeError(f"{folder}: checkpoint does not fit: missing={missing}, unexpected={unexpected}")
    ema.load_state_dict(load_file(folder / "ema.safetensors", device=str(device)))
    rest = json.loads((folder / "optimizer.json").read_text(encoding="utf-8"))
    optimizer_from_flat(optimizer, load_file(folder / "optimizer.safetensors", device=str(device)), rest)
    set_rng_state(generator, load_file(folder / "rng.safetensors"))
    return int(read_meta(folder)["step"])


def load_backbone(checkpoint_dir: str | Path, ema: bool = True, device: torch.device | str = "cpu") -> DiT:
    """Rebuild the trained DiT from a checkpoint's saved config and weights (EMA by default).

    This is how a teacher is made: no code-side configuration is needed, only the directory.
    """
    folder = Path(checkpoint_dir)
    meta = read_meta(folder)
    model = DiT(DiTConfig(**meta["model_config"]))
    if ema:
        state = load_file(folder / "ema.safetensors")
    else:
        prefix = f"{meta['backbone']}."
        state = {k[len(prefix):]: v for k, v in load_file(folder / "model.safetensors").items() if k.startswith(prefix)}
    model.load_state_dict(state)
    return model.to(device).eval()
