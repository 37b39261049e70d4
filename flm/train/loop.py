"""The training loop: one flat function that reads top to bottom (plain PyTorch).

Used for both FLM pretraining and FMLM distillation: the *objective* (a module whose forward
``(x, generator, batch) -> LossOutput`` gives the loss) and the name of its trained backbone are all
that differ. AdamW, warmup then constant or cosine, gradient clipping, EMA, gradient
accumulation, bf16 autocast on CUDA, optional ``torch.compile``, periodic validation and sample
snapshots with the EMA weights, atomic checkpoints, exact resume.

Determinism: the blocks of every step come from ``(seed, step)`` (:class:`BatchPlan`), and the
objective's generator is re-seeded from ``(seed, rank, step, micro)`` before each micro-batch,
so a resumed run, and every worker of a data-parallel run, draws exactly what an uninterrupted
run would. The training times (and FMLM's diagonal / off-diagonal split) are drawn for the whole
global batch from a generator seeded by ``(seed, step)`` alone, the same on every worker, and each
micro-batch takes its rows (:class:`~flm.flow.BatchSlice`): 1, 2 or 4 workers, with or without
accumulation, train on the same set of times. Several workers: the caller initializes
``torch.distributed`` and passes ``rank`` / ``world_size``; the objective is then wrapped in
``DistributedDataParallel``. Only rank 0 validates, samples, checkpoints and talks to the tracker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from flm.config import LoopParams
from flm.data.blocks import TokenBlocks
from flm.flow import BatchSlice
from flm.model import compile_networks
from flm.tracking import NullTracker, Tracker
from flm.train.batches import BatchPlan, load_blocks, val_indices
from flm.train.checkpoint import (
    CheckpointSync,
    latest_checkpoint,
    read_meta,
    restore_checkpoint,
    save_checkpoint,
)
from flm.train.ema import EMA
from flm.train.simple import OptimSettings, build_optimizer, lr_at
from flm.train.state import swapped_to_ema

__all__ = ["LoopResult", "evaluate", "optim_settings", "train_loop"]


@dataclass
class LoopResult:
    """What a finished run returns (rank 0 fills ``val`` and ``samples``)."""

    step: int
    checkpoint: Path | None
    history: list[dict[str, float]] = field(default_factory=list)
    """Training metrics averaged over each ``log_every`` window, with their ``step``."""
    val: list[dict[str, float]] = field(default_factory=list)
    """Validation metrics (EMA weights), with their ``step``."""
    samples: dict[int, list[str]] = field(default_factory=dict)
    """Last snapshot: NFE -> decoded samples (token ids joined by spaces without a decoder)."""
    resumed_from: int | None = None
    seconds: float = 0.0


_GLOBAL_TIMES = 1 << 22
"""Seed part of the global batch's times generator (distinct from ranks, validation, samples)."""


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (``np.random.SeedSequence``)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _mean_over_workers(means: dict[str, float], world_size: int) -> dict[str, float]:
    """Each logged mean averaged over the workers that report it (a collective: every rank calls it).

    Every worker trains on an equal share of the global batch, so the mean of the workers' means is
    the global batch's; a metric a worker lacks this window (e.g. FMLM's ``ce_diag`` on a one-row
    slice without diagonal rows) is averaged over the others. Objects, not tensors: the key sets
    may differ between workers, and this runs once per logging window.
    """
    gathered: list[dict[str, float] | None] = [None] * world_size
    torch.distributed.all_gather_object(gathered, means)
    keys = dict.fromkeys(k for worker in gathered if worker for k in worker)
    return {k: float(np.mean([w[k] for w in gathered if w and k in w])) for k in keys}


def optim_settings(s: LoopParams) -> OptimSettings:
    """AdamW + schedule settings of a ``train`` / ``distill`` section (cosine ends at ``steps``)."""
    return OptimSettings(
        lr=s.lr, beta1=s.beta1, beta2=s.beta2, weight_decay=s.weight_decay, warmup_steps=s.warmup_steps,
        grad_clip=s.grad_clip, ema_decay=s.ema_decay, cosine_steps=s.steps if s.schedule == "cosine" else 0,
    )


@torch.no_grad()
def evaluate(
    objective: nn.Module, blocks: TokenBlocks, n_batches: int, batch: int, seed: int, device: torch.device,
    autocast: Callable[[], Any],
) -> dict[str, float]:
    """Mean loss and metrics over fixed validation blocks with a fixed generator (comparable across evals)."""
    generator = torch.Generator(device).manual_seed(_seed(seed, 1 << 20))
    totals: dict[str, float] = {}
    for indices in val_indices(len(blocks), n_batches, batch):
        with autocast():
            out = objective(load_blocks(blocks, indices, device), generator)
        for name, value in {"loss": out.loss, **out.metrics}.items():
            totals[name] = totals.get(name, 0.0) + float(value) / n_batches
    return totals


def train_loop(
    objective: nn.Module,
    backbone_name: str,
    settings: LoopParams,
    train_blocks: TokenBlocks,
    val_blocks: TokenBlocks | None,
    run_dir: str | Path,
    meta: dict[str, Any] | None = None,
    tracker: Tracker | None = None,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
    decode: Callable[[list[int]], str] | None = None,
    progress: bool | Literal["lines"] = True,
    desc: str = "train",
    checkpoints: CheckpointSync | None = None,
) -> LoopResult:
    """Train ``objective`` for ``settings.steps`` optimizer steps, resuming from ``run_dir`` if it holds a checkpoint.

    Args:
        objective: module with ``forward(x (B, L) int64, generator) -> LossOutput`` and
            ``sample(n, length, steps, generator) -> (n, length)`` ids; already on ``device``.
        backbone_name: attribute of ``objective`` holding the trained DiT (``backbone`` for FLM,
            ``student`` for FMLM); its EMA is kept, evaluated, sampled and checkpointed.
        settings: the ``train`` or ``distill`` section of the params.
        train_blocks, val_blocks: packed blocks (``val_blocks=None``: no validation).
        run_dir: checkpoints go to ``run_dir/ckpt-<step>``; an existing one is resumed from.
        meta: JSON-ready extras written into every checkpoint (params, data fingerprint, ...);
            resuming from a checkpoint whose ``run_key`` differs from ``meta["run_key"]`` is an error.
        tracker: receives ``log_metrics`` / ``log_text`` on rank 0 (default: no-op).
        rank, world_size: this worker of a data-parallel run (``torch.distributed`` initialized
            by the caller when ``world_size > 1``).
        decode: token ids -> text for sample snapshots.
        progress: a tqdm bar on rank 0 (``True``), none (``False``), or ``"lines"``: one printed line
            per logging window (step, loss, it/s, time left), for output that is forwarded line by
            line (Ray workers, CI logs).
        checkpoints: shared storage of the run's checkpoints (Ray Train's, :mod:`flm.distributed.worker`):
            every rank resumes from the checkpoint it fetches into ``run_dir`` (``None`` fetched: step 0),
            and it gets every periodic checkpoint before the last step on every rank, right after rank 0
            wrote it (the caller shares the final one with its own metrics). ``None``: ``run_dir`` alone.

    Returns:
        A :class:`LoopResult`; the final checkpoint is ``run_dir/ckpt-<steps>``.
    """
    start_time = time.perf_counter()
    s = settings
    device = torch.device(device)
    run_dir, meta = Path(run_dir), dict(meta or {})
    tracker = tracker if tracker is not None and rank == 0 else NullTracker()
    backbone: nn.Module = getattr(objective, backbone_name)
    optim = optim_settings(s)
    optimizer = build_optimizer(objective, optim)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    ema = EMA(backbone, s.ema_decay)
    generator = torch.Generator(device)
    times_generator = torch.Generator(device)
    use_bf16 = s.bf16 and device.type == "cuda"

    def autocast() -> Any:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)

    # ---- resume: the newest complete checkpoint of this run (in the shared storage when there is one), if any
    result = LoopResult(step=0, checkpoint=None)
    if checkpoints is not None:
        checkpoint = checkpoints.fetch(run_dir, meta.get("run_key"))
    else:
        checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        saved = read_meta(checkpoint)
        if "run_key" in meta and saved.get("run_key") != meta["run_key"]:
            raise ValueError(f"{checkpoint} belongs to another run (run_key differs); use a fresh run_dir")
        result.step = result.resumed_from = restore_checkpoint(checkpoint, objective, ema, optimizer, generator)
        result.checkpoint = checkpoint

    backbone.check_attention(device, torch.bfloat16 if use_bf16 else backbone.embedding.dtype)
    if s.compile:
        compile_networks(objective)
    model: nn.Module = objective
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(objective, broadcast_buffers=False)

    plan = BatchPlan(len(train_blocks), s.batch_size, s.seed, rank, world_size, s.grad_accum)
    length = train_blocks.seq_len
    window: dict[str, torch.Tensor] = {}
    window_steps = 0

    def snapshot(done: int) -> None:
        """Validation loss and sample snapshots with the EMA weights, sent to the tracker."""
        objective.eval()
        with swapped_to_ema(backbone, ema):
            if val_blocks is not None:
                val = evaluate(objective, val_blocks, s.val_batches, plan.micro, s.seed, device, autocast)
                tracker.log_metrics({f"val/{k}": v for k, v in val.items()}, step=done)
                result.val.append({"step": done, **val})
            for nfe in s.sample_steps if s.sample_n else ():
                sample_gen = torch.Generator(device).manual_seed(_seed(s.seed, 1 << 21))
                with autocast():
                    ids = objective.sample(s.sample_n, length, nfe, generator=sample_gen).cpu().tolist()
                texts = [decode(row) if decode else " ".join(map(str, row)) for row in ids]
                result.samples[nfe] = texts
                tracker.log_text("\n\n".join(texts), f"samples/step{done:08d}-nfe{nfe}.txt")
        objective.train()

    bar = tqdm(total=s.steps, initial=result.step, desc=desc, disable=progress is not True or rank != 0,
               mininterval=2.0)
    lines, first_step, loop_start = progress == "lines" and rank == 0, result.step, time.perf_counter()
    objective.train()
    for step in range(result.step, s.steps):
        # ---- one optimizer step: accumulate grad_accum micro-batches
        lr = lr_at(step, optim)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        for micro in range(s.grad_accum):
            x = load_blocks(train_blocks, plan.micro_batch(step, micro), device)
            generator.manual_seed(_seed(s.seed, rank, step, micro))
            times_generator.manual_seed(_seed(s.seed, _GLOBAL_TIMES, step))
            rows = BatchSlice(plan.batch_size, plan.offset(micro), times_generator)
            last = micro == s.grad_accum - 1
            with model.no_sync() if world_size > 1 and not last else nullcontext():
                with autocast():
                    out = model(x, generator, rows)
                (out.loss / s.grad_accum).backward()
            for name, value in {"loss": out.loss, **out.metrics}.items():
                window[name] = window.get(name, 0.0) + value.detach().float() / s.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(params, s.grad_clip if s.grad_clip > 0 else float("inf"))
        optimizer.step()
        ema.update(backbone)
        window["grad_norm"] = window.get("grad_norm", 0.0) + grad_norm.detach().float()
        window_steps += 1
        done = step + 1
        bar.update(1)

        # ---- log the window's means
        if done % s.log_every == 0 or done == s.steps:
            means = {k: float(v) / window_steps for k, v in window.items()}
            if world_size > 1:
                means = _mean_over_workers(means, world_size)
            record = {f"train/{k}": v for k, v in means.items()} | {"train/lr": lr}
            tracker.log_metrics(record, step=done)
            result.history.append({"step": done, **record})
            bar.set_postfix(loss=f"{record['train/loss']:.3f}")
            if lines:
                rate = (done - first_step) / (time.perf_counter() - loop_start)
                print(f"{desc}: step {done}/{s.steps}  loss {record['train/loss']:.4f}  lr {lr:.2e}  "
                      f"{rate:.2f} it/s  {(s.steps - done) / rate:.0f} s left", flush=True)
            window, window_steps = {}, 0

        # ---- validation and samples, with the EMA weights (rank 0)
        if rank == 0 and ((s.val_every and done % s.val_every == 0) or done == s.steps):
            snapshot(done)

        # ---- checkpoint (rank 0), atomically; the last keep_last are kept; shared from every rank
        if (s.ckpt_every and done % s.ckpt_every == 0) or done == s.steps:
            if rank == 0:
                result.checkpoint = save_checkpoint(
                    run_dir, done, objective, backbone_name, ema, optimizer, generator, meta, s.keep_last
                )
            if checkpoints is not None and done < s.steps:
                last = result.history[-1] if result.history else {}
                checkpoints.saved(done, result.checkpoint if rank == 0 else None, last | {"step": done})
        result.step = done
    bar.close()
    if rank == 0 and not result.val and not result.samples:
        snapshot(result.step)  # resumed from the final checkpoint: evaluate it again
    result.seconds = time.perf_counter() - start_time
    return result
