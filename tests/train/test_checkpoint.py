"""Checkpoints: round trip of every part, teachers rebuilt from the saved config, nothing pickled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flm.data.blocks import TokenBlocks
from flm.objectives import FLMObjective, FMLMDistillation
from flm.train.checkpoint import load_backbone, read_meta, restore_checkpoint, save_checkpoint
from flm.train.ema import EMA
from flm.train.loop import train_loop
from flm.train.simple import OptimSettings, build_optimizer
from flm.train.state import optimizer_from_flat, optimizer_to_flat, trainable_state

from .conftest import tiny_train
from .helpers import tiny_flm


def trained_parts(steps: int = 3) -> tuple[FLMObjective, EMA, torch.optim.Optimizer, torch.Generator]:
    """An FLM objective (with learned loss weight) after a few real optimizer steps."""
    objective = FLMObjective(tiny_flm(512).backbone, learn_loss_weight=True)
    optimizer = build_optimizer(objective, OptimSettings(lr=1e-3, beta2=0.95))
    ema = EMA(objective.backbone, 0.9)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        optimizer.zero_grad()
        objective(torch.randint(0, 512, (4, 16), generator=generator), generator).loss.backward()
        optimizer.step()
        ema.update(objective.backbone)
    return objective, ema, optimizer, generator


def test_round_trip_restores_weights_ema_optimizer_and_rng(tmp_path: Path) -> None:
    objective, ema, optimizer, generator = trained_parts()
    meta = {"params": {"train": {"lr": 1e-3}}, "data_fingerprint": "abc"}
    path = save_checkpoint(tmp_path, 3, objective, "backbone", ema, optimizer, generator, meta, keep_last=2)
    assert sorted(p.name for p in path.iterdir()) == [
        "checkpoint.json", "ema.safetensors", "model.safetensors", "optimizer.json", "optimizer.safetensors",
        "rng.safetensors",
    ]
    info = read_meta(path)
    assert info["step"] == 3 and info["data_fingerprint"] == "abc" and info["params"] == meta["params"]
    assert info["model_config"] == objective.backbone.config.to_dict() and info["backbone"] == "backbone"
    json.loads((path / "optimizer.json").read_text())  # plain JSON, no pickle anywhere

    fresh, fresh_ema, fresh_opt, fresh_gen = trained_parts(steps=1)
    torch.manual_seed(123)  # the restore must put the global RNG back as well
    expected_rng = load_file(path / "rng.safetensors")
    assert restore_checkpoint(path, fresh, fresh_ema, fresh_opt, fresh_gen) == 3
    for key, value in objective.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert any(k.startswith("loss_weight.") for k in trainable_state(fresh))
    for key, value in ema.state_dict().items():
        assert torch.equal(fresh_ema.state_dict()[key], value), key
    saved, restored = optimizer.state_dict(), fresh_opt.state_dict()
    assert saved["param_groups"] == restored["param_groups"]
    for index, state in saved["state"].items():
        for name, value in state.items():
            assert torch.equal(restored["state"][index][name], value), (index, name)
    assert torch.equal(torch.get_rng_state(), expected_rng["torch_cpu"])
    assert torch.equal(fresh_gen.get_state(), generator.get_state())
    assert torch.equal(torch.rand(3, generator=fresh_gen), torch.rand(3, generator=generator))


def test_optimizer_state_survives_the_tensor_json_split() -> None:
    _, _, optimizer, _ = trained_parts()
    tensors, rest = optimizer_to_flat(optimizer)
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    assert any(key.endswith(".exp_avg_sq") for key in tensors)
    rest = json.loads(json.dumps(rest))  # through JSON, as on disk
    _, _, other, _ = trained_parts(steps=1)
    optimizer_from_flat(other, tensors, rest)
    assert other.param_groups[0]["betas"] == (0.9, 0.95)
    assert torch.equal(other.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_teacher_is_rebuilt_from_the_saved_config_with_ema_weights(tiny_data: dict, tmp_path: Path) -> None:
    train = TokenBlocks(tiny_data["tokens"], "train")
    objective = tiny_flm(train.vocab_size, n_layers=1, d_model=48, n_heads=2)  # not the default shape
    result = train_loop(objective, "backbone", tiny_train(steps=5), train, None, tmp_path, progress=False)
    teacher = load_backbone(result.checkpoint, ema=True)
    assert teacher.config == objective.backbone.config and not teacher.training
    ema_state = load_file(result.checkpoint / "ema.safetensors")
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, ema_state[key])
    live = load_backbone(result.checkpoint, ema=False)
    for key, value in live.state_dict().items():
        assert torch.equal(value, objective.backbone.state_dict()[key])
    assert not torch.equal(live.embedding, teacher.embedding)  # EMA (decay 0.9) lags the live weights

    student = FMLMDistillation.from_teacher(teacher)
    distilled = train_loop(student, "student", tiny_train(steps=2, beta2=0.95), train, None, tmp_path / "fmlm",
                           progress=False)
    saved = load_file(distilled.checkpoint / "model.safetensors")
    assert saved and all(key.startswith("student.") for key in saved)  # the frozen teacher is not copied
    assert load_backbone(distilled.checkpoint).config.n_times == 2


def test_a_foreign_directory_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match=r"not a flm\.checkpoint"):
        read_meta(tmp_path)
