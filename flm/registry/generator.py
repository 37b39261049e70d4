"""Text from a saved model: rebuild the EMA backbone, sample token ids (optionally after a prefix), decode.

A checkpoint of :mod:`flm.train.checkpoint` carries its model config and kind
(:func:`flm.train.checkpoint.model_kind`), so nothing else is needed: an FLM samples with ``steps``
Euler steps of its denoiser (MATH.md §1); an FMLM flow map with ``steps`` flow-map jumps (MATH.md
§2; ``steps = 1`` is one forward pass), deterministic or re-noised; the AR baseline with one cached
network call per position (``steps`` is ignored) and MDLM with ``steps`` ancestral steps (MATH.md §6). A prefix is
clamped to its one-hot values during denoising (:class:`flm.flow.sampler.Clamp`), so the output
starts with it exactly. Weights are read with safetensors, never unpickled.

Sources: a checkpoint directory, or an MLflow model URI (``models:/NAME@ALIAS``, ``models:/NAME/3``,
``runs:/...``) whose artifacts :mod:`flm.registry.fetch` downloads (MLflow is imported only then).

Each model kind is one sampling function in ``SAMPLERS``; :func:`model_kind` reads the kind of a
checkpoint. Adding a kind is adding one function and one entry (plus ``PREFIX_KINDS`` if it can
condition on a prefix).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from flm.data.errors import DataError
from flm.device import network_autocast, seeded_generator
from flm.flow import TimeSchedule, flm_sample, flow_map_sample, uniform_grid
from flm.flow.sampler import Clamp, prefix_clamp
from flm.model import DiT
from flm.objectives import ARObjective, MDLMObjective
from flm.objectives.common import ProjectedSpace, at_least_float32
from flm.train.checkpoint import EXTRA_IDS, load_backbone, model_kind, read_meta

if TYPE_CHECKING:
    from flm.data.tokenizer import TextTokenizer

__all__ = [
    "COMPILED_KINDS", "EXTRA_IDS", "PREFIX_KINDS", "RENOISE_G", "SAMPLERS", "SampleRequest", "TextGenerator",
    "is_model_uri", "model_kind",
]

RENOISE_G = 0.8
"""Re-noising strength ``g`` of ``renoise=True`` (MATH.md §2; the paper's LM1B evaluation)."""


@dataclass(frozen=True)
class SampleRequest:
    """What to sample: ``n`` sequences of ``length`` tokens with ``steps`` network evaluations.

    Attributes:
        prefix: ``(P,)`` token ids every sequence starts with, or ``None``.
        g: re-noising strength in ``[0, 1]`` (FMLM only; 0 = the deterministic flow map).
    """

    n: int
    steps: int
    length: int
    prefix: Tensor | None = None
    g: float = 0.0


Sampler = Callable[[DiT, SampleRequest, torch.Generator], Tensor]
"""``(backbone, request, generator) -> (n, length)`` token ids."""


def _sample_flm(backbone: DiT, request: SampleRequest, generator: torch.Generator) -> Tensor:
    """FLM: Euler in γ (MATH.md §1) on the projected path (§3), the prefix clamped to ``E[x]``."""
    if request.g:
        raise ValueError("renoise applies to FMLM flow maps only; an FLM samples with the deterministic Euler ODE")
    space = ProjectedSpace(backbone.embedding)
    h0 = space.noise((request.n, request.length), generator)

    def denoise(h: Tensor, tau: Tensor) -> Tensor:
        return at_least_float32(backbone(h, tau)).softmax(-1)

    schedule = TimeSchedule(backbone.config.vocab_size).to(h0.device)
    return flm_sample(denoise, h0, uniform_grid(request.steps, h0.device), schedule, lift=space.lift,
                      clamp=_clamp(backbone, request))


def _sample_fmlm(backbone: DiT, request: SampleRequest, generator: torch.Generator) -> Tensor:
    """FMLM: ``steps`` flow-map jumps (MATH.md §2), re-noised with ``g > 0``, the prefix clamped to ``E[x]``."""
    space = ProjectedSpace(backbone.embedding)
    shape = (request.n, request.length)
    h0 = space.noise(shape, generator)

    def denoise(h: Tensor, tau_s: Tensor, tau_t: Tensor) -> Tensor:
        return at_least_float32(backbone(h, tau_s, tau_t)).softmax(-1)

    schedule = TimeSchedule(backbone.config.vocab_size).to(h0.device)
    return flow_map_sample(denoise, h0, uniform_grid(request.steps, h0.device), schedule, lift=space.lift,
                           g=request.g, noise=space.noise_fn(shape, generator), clamp=_clamp(backbone, request))


def _sample_ar(backbone: DiT, request: SampleRequest, generator: torch.Generator) -> Tensor:
    """AR baseline: one KV-cached network call per position, float64 Gumbel-max (MATH.md §6); ``steps`` ignored."""
    if request.g:
        raise ValueError("renoise applies to FMLM flow maps only, not to an AR model")
    return ARObjective(backbone).sample(request.n, request.length, request.steps, generator)


def _sample_mdlm(backbone: DiT, request: SampleRequest, generator: torch.Generator) -> Tensor:
    """MDLM baseline: ``steps`` ancestral steps from all-masked sequences (MATH.md §6)."""
    if request.g:
        raise ValueError("renoise applies to FMLM flow maps only, not to an MDLM")
    return MDLMObjective(backbone).sample(request.n, request.length, request.steps, generator)


def _clamp(backbone: DiT, request: SampleRequest) -> Clamp | None:
    """The prefix as a :class:`~flm.flow.sampler.Clamp` in the projected space: ``e(x) E = E[x]`` ``(n, L, d)``."""
    if request.prefix is None:
        return None
    return prefix_clamp(request.prefix.to(backbone.embedding.device), request.n, request.length, backbone.embed_ids)


SAMPLERS: dict[str, Sampler] = {"flm": _sample_flm, "fmlm": _sample_fmlm, "ar": _sample_ar, "mdlm": _sample_mdlm}
"""The one dispatch table: model kind -> sampling function."""
PREFIX_KINDS: frozenset[str] = frozenset({"flm", "fmlm"})
"""Kinds whose sampler can clamp a prefix."""
COMPILED_KINDS: frozenset[str] = frozenset({"flm", "fmlm", "mdlm"})
"""Kinds whose sampler calls the network with fixed shapes, so ``compile=True`` compiles it
(:meth:`flm.model.DiT.compile_for_sampling`); AR's cached decoding changes shape every position."""


def is_model_uri(source: str | Path) -> bool:
    """Whether ``source`` is a URI (``models:/...``, ``runs:/...``, ``s3://...``) rather than a directory."""
    return isinstance(source, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", source) is not None


def _load_tokenizer(folder: Path) -> TextTokenizer:
    """:func:`flm.data.tokenizer.load_tokenizer`, every failure a one-line :class:`DataError` naming the file."""
    from flm.data.tokenizer import load_tokenizer

    if not folder.is_dir():
        raise DataError(f"{folder}: not a tokenizer directory (give the folder holding tokenizer.json and meta.json)")
    try:
        return load_tokenizer(folder)
    except DataError:
        raise
    except OSError as err:  # a folder where a file belongs, no permission, ...
        raise DataError(f"{err.filename or folder}: cannot be read ({err.strerror or err})") from None
    except (ValueError, KeyError, TypeError) as err:  # JSON, missing or wrong fields
        raise DataError(f"{folder / 'meta.json'}: not a valid tokenizer meta.json ({err!r})") from None
    except Exception as err:  # tokenizers raises a bare Exception on a corrupt tokenizer.json
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{folder / 'tokenizer.json'}: cannot load the tokenizer ({reason})") from None


class TextGenerator:
    """Samples text from a saved FLM, FMLM, AR or MDLM model.

    Args:
        checkpoint_dir: a checkpoint directory (``models/flm``, ``models/fmlm``, ``ckpt-<step>``).
        tokenizer_dir: a tokenizer saved by the ``tokenizer`` stage (``None``: ids joined by spaces).
        device: where to run (default CPU).
        compile: compile the network for fixed-step sampling (FLM, FMLM, MDLM; an AR model stays
            eager): the first call of a shape compiles (seconds to a minute), later calls and every
            step within one reuse the graph.
        bf16: on CUDA, run the network under bf16 autocast (:func:`flm.device.network_autocast`), the
            precision it was trained in; noise, sampler state and lifts stay float32. Ignored on CPU,
            where generation is float32 throughout.
    """

    def __init__(self, checkpoint_dir: str | Path, tokenizer_dir: str | Path | None = None,
                 device: str | torch.device = "cpu", compile: bool = False, bf16: bool = True) -> None:
        folder = Path(checkpoint_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such checkpoint directory")
        if not (folder / "checkpoint.json").is_file():
            raise ValueError(f"{folder}: not a checkpoint directory (no checkpoint.json)")
        self.device = torch.device(device)
        self.bf16 = bf16
        self.meta = read_meta(folder)
        self.kind = model_kind(folder)
        self.backbone = load_backbone(folder, ema=True, device=self.device, kind=self.kind)
        if compile and self.kind in COMPILED_KINDS:
            self.backbone.compile_for_sampling()
        self.vocab_size = self.backbone.config.vocab_size - EXTRA_IDS.get(self.kind, 0)
        """The tokenizer's ``V``: ids a sample (or a prefix) can hold."""
        self.decoder = None
        if tokenizer_dir is not None:
            self.decoder = _load_tokenizer(Path(tokenizer_dir))
            if self.decoder.vocab_size != self.vocab_size:
                raise ValueError(f"{tokenizer_dir}: tokenizer has {self.decoder.vocab_size} tokens, the model "
                                 f"{self.vocab_size}")

    @classmethod
    def load(cls, source: str | Path, tokenizer: str | Path | None = None, device: str | torch.device = "cpu",
             tracking_uri: str | None = None, cache_dir: str | Path | None = None,
             compile: bool = False) -> TextGenerator:
        """A generator from a checkpoint directory or an MLflow model URI.

        Args:
            source: a checkpoint directory, or ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/ID/model``.
            tokenizer: a tokenizer directory; for a URI, default the model's own tokenizer artifact.
            device: where to run.
            tracking_uri: the MLflow tracking (and registry) store of a URI (default: MLflow's own default).
            cache_dir: keep downloaded models here, keyed by the resolved version (default: a
                temporary directory, removed once the weights are in memory).
            compile: compile the network for fixed-step sampling (see ``TextGenerator``).
        """
        if not is_model_uri(source):
            return cls(source, tokenizer, device, compile)
        from flm.registry.fetch import fetched_model

        with fetched_model(str(source), tracking_uri, cache_dir) as files:
            return cls(files.checkpoint, tokenizer if tokenizer is not None else files.tokenizer, device, compile)

    @property
    def default_length(self) -> int:
        """The training sequence length ``L`` when the checkpoint records it, else 128."""
        from flm.train.checkpoint import seq_len

        return seq_len(self.meta)

    @property
    def trained_length(self) -> int | None:
        """The training sequence length ``L`` the checkpoint records, or ``None`` (older checkpoints).

        :meth:`sample_ids` refuses longer sequences: positions past ``L`` were never trained.
        """
        packing = self.meta.get("params", {}).get("data", {}).get("packing", {})
        return int(packing["seq_len"]) if "seq_len" in packing else None

    def encode_prefix(self, prefix: str | list[int] | Tensor) -> Tensor:
        """``(P,)`` ids of a prefix: text through the checkpoint's tokenizer (no BOS/EOS), ids as given."""
        if isinstance(prefix, str):
            if self.decoder is None:
                raise ValueError("a text prefix needs a tokenizer; give tokenizer ids or load one with the model")
            ids = torch.tensor(self.decoder.encode_batch([prefix])[0], dtype=torch.long)
        else:
            ids = torch.as_tensor(prefix, dtype=torch.long).flatten()
        vocab = self.vocab_size
        if ids.numel() and not bool(((ids >= 0) & (ids < vocab)).all()):
            raise ValueError(f"prefix ids must lie in [0, {vocab}), got {ids.tolist()}")
        return ids

    @torch.no_grad()
    def sample_ids(self, n: int, steps: int, length: int, seed: int = 0, prefix: str | list[int] | None = None,
                   renoise: bool | float = False) -> Tensor:
        """``(n, length)`` token ids from ``steps`` network evaluations, noise from ``seed``.

        Args:
            prefix: text or ids every sequence starts with (clamped during denoising); ``None``/empty: none.
            renoise: FMLM only; ``True`` re-noises each intermediate jump with ``g = RENOISE_G``, a float
                is ``g`` itself; ``False`` is the deterministic flow map (a function of the initial noise).
        """
        if n < 1 or steps < 1 or length < 1:
            raise ValueError(f"n, steps and length must be positive (got {n}, {steps}, {length})")
        if self.trained_length is not None and length > self.trained_length:
            raise ValueError(f"length={length} is beyond the model's trained length {self.trained_length} "
                             f"(positions past it were never trained)")
        g = RENOISE_G if renoise is True else float(renoise)
        ids = self.encode_prefix(prefix) if prefix is not None else None
        if ids is not None and ids.numel() == 0:
            ids = None
        if ids is not None and self.kind not in PREFIX_KINDS:
            raise ValueError(f"a prefix is not supported for {self.kind} models yet (supported: "
                             f"{', '.join(sorted(PREFIX_KINDS))})")
        if ids is not None and ids.numel() > length:
            raise ValueError(f"the prefix has {ids.numel()} tokens, more than length={length}")
        generator = seeded_generator(self.device, seed)
        with network_autocast(self.device, self.bf16):
            return SAMPLERS[self.kind](self.backbone, SampleRequest(n, steps, length, ids, g), generator)

    def decode(self, ids: Tensor) -> list[str]:
        """Texts of ``(n, L)`` ids (ids joined by spaces without a tokenizer)."""
        rows = ids.cpu().tolist()
        if self.decoder is None:
            return [" ".join(map(str, row)) for row in rows]
        return [self.decoder.decode(row) for row in rows]

    def generate(self, n: int = 1, steps: int = 1, length: int | None = None, seed: int = 0,
                 prefix: str | list[int] | None = None, renoise: bool | float = False) -> list[str]:
        """``n`` decoded texts (``steps`` NFE, ``length`` tokens, default the training ``L``), prefix included."""
        return self.decode(self.sample_ids(n, steps, length or self.default_length, seed, prefix, renoise))
