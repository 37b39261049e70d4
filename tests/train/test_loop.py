"""The training loop on tiny real packed data: learning, accumulation, schedule, checkpoints kept."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from flm.data.blocks import TokenBlocks
from flm.train.checkpoint import list_checkpoints
from flm.train.ema import EMA
from flm.train.loop import optim_settings, train_loop
from flm.train.simple import lr_at
from flm.train.state import swapped_to_ema

from .conftest import tiny_train
from .helpers import RowSeeded, tiny_flm


def blocks(tiny_data: dict) -> tuple[TokenBlocks, TokenBlocks]:
    return TokenBlocks(tiny_data["tokens"], "train"), TokenBlocks(tiny_data["tokens"], "val")


def test_loss_decreases_on_real_text(tiny_data: dict, tmp_path: Path) -> None:
    train, val = blocks(tiny_data)
    objective = tiny_flm(train.vocab_size)
    settings = tiny_train(steps=80, batch_size=16, lr=3e-3, val_every=20, ema_decay=0.9, log_every=10,
                          sample_n=2, sample_steps=(4,))
    result = train_loop(objective, "backbone", settings, train, val, tmp_path / "run", progress=False)
    first, last = result.history[0]["train/loss"], result.history[-1]["train/loss"]
    uniform = math.log(train.vocab_size)
    assert first > uniform - 0.3                      # starts near log V = 6.24 nats
    assert last < first - 0.7, (first, last)          # learns the unigram statistics and more
    assert [v["step"] for v in result.val] == [20, 40, 60, 80]
    assert result.val[-1]["nll"] < result.val[0]["nll"] - 0.3, result.val
    assert result.step == 80 and result.checkpoint == tmp_path / "run" / "ckpt-00000080"
    ids = [[int(t) for t in text.split()] for text in result.samples[4]]
    assert len(ids) == 2 and all(len(row) == train.seq_len and max(row) < train.vocab_size for row in ids)


def test_two_half_batches_equal_one_full_batch(tiny_data: dict, tmp_path: Path) -> None:
    train, _ = blocks(tiny_data)
    finals = []
    for accum in (1, 2):
        torch.manual_seed(0)
        objective = RowSeeded(tiny_flm(train.vocab_size).backbone)
        settings = tiny_train(steps=3, batch_size=8, grad_accum=accum, lr=1e-3, warmup_steps=0)
        train_loop(objective, "backbone", settings, train, None, tmp_path / f"accum{accum}", progress=False)
        finals.append({k: v.clone() for k, v in objective.state_dict().items()})
    moved = [k for k in finals[0] if not torch.equal(finals[0][k], tiny_flm(train.vocab_size).state_dict()[k])]
    assert len(moved) > 10
    for key in finals[0]:
        torch.testing.assert_close(finals[1][key], finals[0][key], rtol=1e-4, atol=1e-6, msg=key)


def test_accumulated_gradient_equals_full_batch_gradient(tiny_data: dict) -> None:
    train, _ = blocks(tiny_data)
    x = torch.stack([torch.from_numpy(train[i].astype("int64")) for i in range(8)])
    grads = []
    for parts in (1, 2):
        objective = RowSeeded(tiny_flm(train.vocab_size).backbone)
        for chunk in x.chunk(parts):
            (objective(chunk).loss / parts).backward()
        grads.append([p.grad.clone() for p in objective.parameters()])
    for full, accumulated in zip(*grads, strict=True):
        torch.testing.assert_close(accumulated, full, rtol=1e-4, atol=1e-7)


def test_warmup_then_cosine_and_constant_schedules() -> None:
    cosine = optim_settings(tiny_train(steps=110, lr=1e-3, warmup_steps=10, schedule="cosine"))
    assert lr_at(0, cosine) == pytest.approx(1e-4)
    assert lr_at(4, cosine) == pytest.approx(5e-4)
    assert lr_at(9, cosine) == pytest.approx(1e-3)
    assert lr_at(10, cosine) == pytest.approx(1e-3)
    assert lr_at(60, cosine) == pytest.approx(5e-4)           # half way through the decay
    assert lr_at(35, cosine) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(109, cosine) < 1e-6
    constant = optim_settings(tiny_train(steps=110, lr=1e-3, warmup_steps=10, schedule="constant"))
    assert lr_at(5, constant) == pytest.approx(6e-4)
    assert [lr_at(s, constant) for s in (10, 60, 109)] == [1e-3] * 3
    distill = optim_settings(tiny_train(beta2=0.95))
    assert (distill.beta1, distill.beta2) == (0.9, 0.95)


def test_only_the_last_k_checkpoints_are_kept(tiny_data: dict, tmp_path: Path) -> None:
    train, _ = blocks(tiny_data)
    settings = tiny_train(steps=12, ckpt_every=3, keep_last=2)
    train_loop(tiny_flm(train.vocab_size), "backbone", settings, train, None, tmp_path, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000009", "ckpt-00000012"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000009", "ckpt-00000012"]  # no temporaries


def test_a_run_dir_of_another_run_is_refused(tiny_data: dict, tmp_path: Path) -> None:
    train, _ = blocks(tiny_data)
    settings = tiny_train(steps=2)
    train_loop(tiny_flm(train.vocab_size), "backbone", settings, train, None, tmp_path, meta={"run_key": "a"},
               progress=False)
    with pytest.raises(ValueError, match="another run"):
        train_loop(tiny_flm(train.vocab_size), "backbone", settings, train, None, tmp_path, meta={"run_key": "b"},
                   progress=False)


def test_resuming_a_finished_run_trains_nothing_and_evaluates_again(tiny_data: dict, tmp_path: Path) -> None:
    train, val = blocks(tiny_data)
    settings = tiny_train(steps=4)
    first = train_loop(tiny_flm(train.vocab_size), "backbone", settings, train, val, tmp_path, progress=False)
    again = train_loop(tiny_flm(train.vocab_size, seed=5), "backbone", settings, train, val, tmp_path, progress=False)
    assert again.resumed_from == 4 and again.history == []
    assert again.val[0]["loss"] == pytest.approx(first.val[0]["loss"], rel=1e-6)


def test_ema_swap_restores_the_live_weights_bit_for_bit() -> None:
    objective = tiny_flm(512)
    ema = EMA(objective.backbone, 0.5)
    with torch.no_grad():
        for p in objective.backbone.parameters():
            p.add_(torch.randn_like(p))
    live = {k: v.clone() for k, v in objective.backbone.state_dict().items()}
    with swapped_to_ema(objective.backbone, ema):
        for p, q in zip(objective.backbone.parameters(), ema.module.parameters(), strict=True):
            assert torch.equal(p, q)
    for key, value in objective.backbone.state_dict().items():
        assert torch.equal(value, live[key])


def test_progress_lines_one_per_logging_window(tiny_data: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train, _ = blocks(tiny_data)
    settings = tiny_train(steps=6, batch_size=4, log_every=2, val_every=0, sample_n=0)
    result = train_loop(tiny_flm(train.vocab_size), "backbone", settings, train, None, tmp_path / "run",
                        progress="lines", desc="flm")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("flm: step")]
    assert [line.split()[2] for line in lines] == ["2/6", "4/6", "6/6"]
    losses = [float(line.split()[4]) for line in lines]
    assert losses == pytest.approx([h["train/loss"] for h in result.history], abs=1e-4)
    assert lines[-1].endswith(" 0 s left")
