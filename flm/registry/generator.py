"""Text from a checkpoint directory: rebuild the EMA backbone, sample token ids, decode them.

A checkpoint of :mod:`flm.train.checkpoint` carries its model config, so nothing else is needed:
a one-time backbone (``n_times = 1``) is an FLM and samples with ``steps`` Euler steps of its
denoiser (MATH.md §1); a two-time backbone is an FMLM flow map and samples with ``steps`` flow-map
jumps (MATH.md §2; ``steps = 1`` is one forward pass). Weights are read with safetensors, never
unpickled. This module knows nothing about MLflow (:mod:`flm.registry.pyfunc` wraps it).
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["TextGenerator"]


class TextGenerator:
    """Samples text from a saved FLM or FMLM.

    Args:
        checkpoint_dir: a checkpoint directory (``models/flm``, ``models/fmlm``, ``ckpt-<step>``).
        tokenizer_dir: a tokenizer saved by the ``tokenizer`` stage (``None``: ids joined by spaces).
        device: where to run (default CPU).
    """

    def __init__(self, checkpoint_dir: str | Path, tokenizer_dir: str | Path | None = None,
                 device: str | torch.device = "cpu") -> None:
        from flm.train.checkpoint import load_backbone, read_meta

        self.device = torch.device(device)
        self.meta = read_meta(checkpoint_dir)
        self.backbone = load_backbone(checkpoint_dir, ema=True, device=self.device)
        self.kind = "flm" if self.backbone.config.n_times == 1 else "fmlm"
        self.decoder = None
        if tokenizer_dir is not None:
            from flm.data.tokenizer import load_tokenizer

            self.decoder = load_tokenizer(tokenizer_dir)

    @property
    def default_length(self) -> int:
        """The training sequence length ``L`` when the checkpoint records it, else 128."""
        data = self.meta.get("params", {}).get("data", {})
        return int(data.get("packing", {}).get("seq_len", 128))

    @torch.no_grad()
    def sample_ids(self, n: int, steps: int, length: int, seed: int = 0) -> torch.Tensor:
        """``(n, length)`` token ids from ``steps`` network evaluations, noise from ``seed``."""
        if n < 1 or steps < 1 or length < 1:
            raise ValueError(f"n, steps and length must be positive (got {n}, {steps}, {length})")
        generator = torch.Generator(self.device).manual_seed(int(seed))
        if self.kind == "flm":
            from flm.objectives import FLMObjective

            return FLMObjective(self.backbone).sample(n, length, steps, generator=generator)
        from flm.flow import TimeSchedule, flow_map_sample, uniform_grid
        from flm.objectives.common import ProjectedSpace, at_least_float32

        space = ProjectedSpace(self.backbone.embedding)
        h0 = space.noise((n, length), generator)

        def denoise(h: torch.Tensor, tau_s: torch.Tensor, tau_t: torch.Tensor) -> torch.Tensor:
            return at_least_float32(self.backbone(h, tau_s, tau_t)).softmax(-1)

        schedule = TimeSchedule(self.backbone.config.vocab_size)
        return flow_map_sample(denoise, h0, uniform_grid(steps, h0.device), schedule, lift=space.lift,
                               noise=space.noise_fn((n, length), generator))

    def generate(self, n: int = 1, steps: int = 1, length: int | None = None, seed: int = 0) -> list[str]:
        """``n`` decoded texts (``steps`` NFE, ``length`` tokens, default the training ``L``)."""
        ids = self.sample_ids(n, steps, length or self.default_length, seed).cpu().tolist()
        if self.decoder is None:
            return [" ".join(map(str, row)) for row in ids]
        return [self.decoder.decode(row) for row in ids]
