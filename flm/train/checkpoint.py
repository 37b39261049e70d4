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

Reading back proves what a checkpoint is: ``checkpoint.json`` must be JSON of this format with a
known ``model_config``; its ``model_kind`` must agree with that config (time inputs, causal
attention), with the stage and the vocabulary size it records; the weights must have exactly the
config's names and shapes. Anything else, and a truncated or foreign ``*.safetensors``, raises a
:class:`CheckpointError` whose one-line message names the file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from flm.data.atomic import atomic_dir
from flm.data.errors import DataError
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
    "EXTRA_IDS",
    "FORMAT",
    "KIND_CONFIG",
    "MODEL_KINDS",
    "CheckpointError",
    "CheckpointSync",
    "adopt_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_backbone",
    "model_kind",
    "read_meta",
    "require_kind",
    "restore_checkpoint",
    "save_checkpoint",
    "seq_len",
]

FORMAT = "flm.checkpoint/1"
MODEL_KINDS = ("flm", "fmlm", "ar", "mdlm")
"""What a checkpoint's backbone is: an FLM denoiser, an FMLM flow map, the AR or the MDLM baseline."""
KIND_CONFIG: dict[str, tuple[int, bool]] = {"flm": (1, False), "fmlm": (2, False), "ar": (0, True), "mdlm": (1, False)}
"""Model kind -> the backbone's ``(n_times, causal)``: what its weights must look like."""
EXTRA_IDS: dict[str, int] = {"ar": 1, "mdlm": 1}
"""Backbone ids past the tokenizer's vocabulary, per kind (AR's start token, MDLM's mask; MATH.md §6)."""
_NAME = re.compile(r"^ckpt-(\d{8})$")


class CheckpointError(DataError):
    """A checkpoint that is missing, unreadable or not what it says it is; the message names the file."""


class CheckpointSync(Protocol):
    """A shared copy of a run's checkpoints beside its local run directory (e.g. Ray Train's storage).

    With one, the local run directory is a cache: every rank resumes from the checkpoint :meth:`fetch`
    installs (the same on every rank, whatever each node's cache holds), and every periodic checkpoint
    is handed to :meth:`saved` (on every rank, at the same steps: the sync may be a collective).
    """

    def fetch(self, run_dir: Path, run_key: str | None) -> Path | None:
        """Install the newest shared checkpoint of ``run_key`` in ``run_dir`` (:func:`adopt_checkpoint`);
        return it, or ``None``: start from step 0."""

    def saved(self, step: int, checkpoint: Path | None, metrics: dict[str, float]) -> None:
        """Share the checkpoint just written at ``step`` (``None`` on ranks that do not write)."""


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
    with atomic_dir(final, "checkpoint.json", FORMAT) as tmp:
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


def adopt_checkpoint(source: str | Path | None, run_dir: str | Path, run_key: str | None) -> Path | None:
    """Make ``run_dir`` resume from ``source`` (a checkpoint from shared storage), exactly.

    ``source`` is copied to ``run_dir/ckpt-<step>`` unless that exists (a local copy of the same
    state: the run directory is keyed by ``run_key``); the copy goes into a unique sibling renamed
    into place, so ranks sharing a node may adopt the same checkpoint at once. Local checkpoints
    newer than ``source`` are deleted (every rank must resume from the same step, and they would
    outrank the checkpoints written next). ``source=None``, or one whose ``run_key`` differs from
    ``run_key`` (a log line says so): no resume, every local checkpoint is deleted.

    Returns:
        The checkpoint to resume from, or ``None``: start from step 0.
    """
    run_dir = Path(run_dir)
    step = None
    if source is not None:
        meta = read_meta(source)
        if run_key is not None and meta.get("run_key") != run_key:
            print(f"checkpoint {source} belongs to run_key {meta.get('run_key')}, not {run_key}: "
                  "not resuming from it, starting from step 0", flush=True)
        else:
            step = int(meta["step"])
    for local in list_checkpoints(run_dir):
        if step is None or int(_NAME.match(local.name).group(1)) > step:
            shutil.rmtree(local, ignore_errors=True)
    if step is None:
        return None
    final = run_dir / f"ckpt-{step:08d}"
    if not final.is_dir():
        tmp = run_dir / f".{final.name}.fetch-{uuid.uuid4().hex[:8]}"
        shutil.copytree(source, tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another rank on this node installed it first
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def read_meta(checkpoint_dir: str | Path) -> dict[str, Any]:
    """``checkpoint.json`` of a checkpoint (step, model config, params, ...), its format and ``model_config`` checked.

    Raises:
        CheckpointError: the file is missing, not JSON, of another format, or its ``model_config`` is not a
            valid :class:`~flm.model.DiTConfig` (an unknown key, a bad value).
    """
    path = Path(checkpoint_dir) / "checkpoint.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file; not a checkpoint directory") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a text file (not a checkpoint's JSON)") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint (format {found!r})")
    _model_config(meta, path)
    return meta


def _model_config(meta: dict[str, Any], path: Path) -> DiTConfig:
    """The :class:`DiTConfig` of ``meta["model_config"]``; a missing, unknown or invalid field names ``path``."""
    config = meta.get("model_config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: model_config is missing or not an object")
    known = set(DiTConfig.__dataclass_fields__)
    unknown = sorted(set(config) - known)
    if unknown:
        raise CheckpointError(f"{path}: unknown model_config key(s) {', '.join(map(repr, unknown))}; "
                              f"known: {', '.join(sorted(known))}")
    try:
        return DiTConfig(**config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid model_config: {err}") from None


def _read_tensors(path: Path, device: str = "cpu") -> dict[str, Tensor]:
    """The tensors of a ``*.safetensors`` file; a missing, truncated or foreign file names ``path``."""
    try:
        return load_file(path, device=device)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file (an incomplete checkpoint)") from None
    except SafetensorError as err:
        raise CheckpointError(f"{path}: not a valid safetensors file, truncated or corrupt ({err})") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror or err})") from None


def _check_fit(model: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly ``model``'s tensor names and shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{key} {tuple(state[key].shape)} != {tuple(expected[key].shape)}"
              for key in sorted(set(state) & set(expected)) if state[key].shape != expected[key].shape]
    if missing or unexpected or shapes:
        parts = [f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if items]
        raise CheckpointError(f"{path}: the weights do not fit checkpoint.json's model_config ({'; '.join(parts)})")


def seq_len(meta: dict[str, Any], default: int = 128) -> int:
    """The training sequence length ``L`` a checkpoint's meta records (``params.data.packing``), else ``default``."""
    return int(meta.get("params", {}).get("data", {}).get("packing", {}).get("seq_len", default))


def model_kind(checkpoint_dir: str | Path) -> str:
    """The checkpoint's :data:`MODEL_KINDS` entry: its meta ``model_kind``, written by the training stages.

    Checkpoints from before that field tell it by their ``stage`` (``train_mdlm``, ...), else they are
    FLM (``n_times = 1``) or FMLM (``n_times = 2``). The kind must agree with the model config, the
    stage and the vocabulary size the meta records.

    Raises:
        CheckpointError: an unknown kind, or one that disagrees with the rest of ``checkpoint.json``.
    """
    meta = read_meta(checkpoint_dir)
    kind = (meta.get("model_kind") or _stage_kind(meta)
            or {1: "flm", 2: "fmlm"}.get(meta["model_config"].get("n_times", 1)))
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"{Path(checkpoint_dir) / 'checkpoint.json'}: unknown model kind {kind!r}; "
                              f"known kinds: {', '.join(MODEL_KINDS)}")
    _check_kind(meta, kind, Path(checkpoint_dir) / "checkpoint.json")
    return kind


def _stage_kind(meta: dict[str, Any]) -> str | None:
    """The kind the recorded ``stage`` trains (``train_flm`` -> ``flm``, ``distill_fmlm`` -> ``fmlm``), or ``None``."""
    stage = meta.get("stage")
    trained = stage.split("_", 1)[-1] if isinstance(stage, str) else None
    return trained if trained in MODEL_KINDS else None


def require_kind(checkpoint_dir: str | Path, kind: str) -> None:
    """Raise :class:`CheckpointError` naming both kinds unless the checkpoint is a ``kind`` (:func:`model_kind`)."""
    found = model_kind(checkpoint_dir)
    if found != kind:
        raise CheckpointError(f"{checkpoint_dir}: an {found} checkpoint where an {kind} checkpoint is expected")


def _check_kind(meta: dict[str, Any], kind: str, path: Path) -> None:
    """``kind`` must agree with the model config's time inputs and attention, the recorded stage and vocabulary."""
    config = meta["model_config"]
    n_times, causal = KIND_CONFIG[kind]
    if (config.get("n_times", 1), bool(config.get("causal", False))) != (n_times, causal):
        raise CheckpointError(
            f"{path}: model_kind {kind!r} needs n_times={n_times}, causal={causal}, but the model has "
            f"n_times={config.get('n_times', 1)}, causal={bool(config.get('causal', False))}")
    trained = _stage_kind(meta)
    if trained is not None and trained != kind:
        raise CheckpointError(f"{path}: model_kind {kind!r} disagrees with its stage {meta['stage']!r}")
    vocab = meta.get("vocab_size")
    if isinstance(vocab, int) and config["vocab_size"] != vocab + EXTRA_IDS.get(kind, 0):
        raise CheckpointError(
            f"{path}: model_kind {kind!r} with a {vocab}-token vocabulary needs {vocab + EXTRA_IDS.get(kind, 0)} "
            f"ids, but the model has {config['vocab_size']}")


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
    missing, unexpected = objective.load_state_dict(_read_tensors(folder / "model.safetensors", str(device)),
                                                    strict=False)
    expected_missing = set(objective.state_dict()) - set(trainable_state(objective))
    if unexpected or set(missing) - expected_missing:
        raise RuntimeError(f"{folder}: checkpoint does not fit: missing={missing}, unexpected={unexpected}")
    ema.load_state_dict(_read_tensors(folder / "ema.safetensors", str(device)))
    rest = json.loads((folder / "optimizer.json").read_text(encoding="utf-8"))
    optimizer_from_flat(optimizer, _read_tensors(folder / "optimizer.safetensors", str(device)), rest)
    set_rng_state(generator, _read_tensors(folder / "rng.safetensors"))
    return int(read_meta(folder)["step"])


def load_backbone(checkpoint_dir: str | Path, ema: bool = True, device: torch.device | str = "cpu",
                  kind: str | None = None) -> DiT:
    """Rebuild the trained DiT from a checkpoint's saved config and weights (EMA by default).

    This is how a teacher is made: no code-side configuration is needed, only the directory.

    Args:
        kind: the :data:`MODEL_KINDS` entry the checkpoint must be (e.g. ``"flm"`` for a teacher);
            ``None`` accepts any kind. A recorded ``model_kind`` is checked against the config either way.

    Raises:
        CheckpointError: unreadable or corrupt files, a kind other than ``kind``, a ``model_kind`` that
            disagrees with the config, or weights whose names or shapes do not fit the config.
    """
    folder = Path(checkpoint_dir)
    meta = read_meta(folder)
    if kind is not None:
        require_kind(folder, kind)
    elif "model_kind" in meta:
        model_kind(folder)  # the recorded kind agrees with the config, stage and vocabulary
    model = DiT(_model_config(meta, folder / "checkpoint.json"))
    if ema:
        path = folder / "ema.safetensors"
        state = _read_tensors(path)
    else:
        path, prefix = folder / "model.safetensors", f"{meta['backbone']}."
        state = {k[len(prefix):]: v for k, v in _read_tensors(path).items() if k.startswith(prefix)}
    _check_fit(model, state, path)
    model.load_state_dict(state)
    return model.to(device).eval()
