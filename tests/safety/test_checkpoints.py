"""Checkpoints prove what they are: a corrupt, truncated, mislabelled or foreign checkpoint or tokenizer is one
line naming the file (the library's exception class; exit 2 from ``flm generate``), and a baseline is refused
as the distillation teacher, naming both kinds."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from flm.data.errors import DataError
from flm.data.tokenizer import load_tokenizer
from flm.model import DiT, DiTConfig
from flm.objectives import FMLMDistillation
from flm.registry.generator import TextGenerator
from flm.train.checkpoint import CheckpointError, load_backbone, model_kind
from flm.train.ema import EMA
from pipelines import train_stages
from tests.pipelines.helpers import TINY
from tests.registry.helpers import TINY as TINY_DIT
from tests.registry.helpers import _Holder

STAGE = {"flm": "train_flm", "fmlm": "distill_fmlm", "ar": "train_ar", "mdlm": "train_mdlm"}
SHAPE = {"flm": (0, 1, False), "fmlm": (0, 2, False), "ar": (1, 0, True), "mdlm": (1, 1, False)}
"""Kind -> (extra ids, n_times, causal) of its backbone."""


def save_kind(run_dir: Path, kind: str, vocab: int) -> Path:
    """A tiny random checkpoint of ``kind`` for a ``vocab``-token tokenizer, with the meta the stages write."""
    from flm.train.checkpoint import save_checkpoint

    extra, n_times, causal = SHAPE[kind]
    torch.manual_seed(0)
    backbone = DiT(DiTConfig(vocab + extra, n_times=n_times, causal=causal, **TINY_DIT))
    holder = _Holder(backbone)
    meta = {"params": {"data": {"packing": {"seq_len": 16}}}, "model_kind": kind, "stage": STAGE[kind],
            "vocab_size": vocab}
    return save_checkpoint(run_dir, 1, holder, "backbone", EMA(backbone, 0.9), torch.optim.AdamW(holder.parameters()),
                           torch.Generator().manual_seed(0), meta, keep_last=1)


@pytest.fixture(scope="module")
def saved(tiny_data: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One good checkpoint per kind (``V`` of the tiny tokenizer) and that tokenizer."""
    root = tmp_path_factory.mktemp("kinds")
    vocab = load_tokenizer(tiny_data["tokenizer"]).vocab_size
    return {kind: save_kind(root / kind, kind, vocab) for kind in SHAPE} | {"tokenizer": tiny_data["tokenizer"]}


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _random(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(4096))


def _dir_instead(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "x").write_text("x")


# name -> (source kind, what breaks it (given the checkpoint and tokenizer folders; a returned Path is the
# tokenizer to pass instead), the file the message names, the library's exception class)
BROKEN: dict[str, tuple[str, Callable[[Path, Path], object], str, type[Exception]]] = {
    "truncated ema.safetensors": ("flm", lambda c, t: _truncate(c / "ema.safetensors"), "ema.safetensors",
                                  CheckpointError),
    "random ema.safetensors": ("fmlm", lambda c, t: _random(c / "ema.safetensors"), "ema.safetensors",
                               CheckpointError),
    "missing ema.safetensors": ("flm", lambda c, t: (c / "ema.safetensors").unlink(), "ema.safetensors",
                                CheckpointError),
    "checkpoint.json not JSON": ("flm", lambda c, t: (c / "checkpoint.json").write_text("{step: 1,"),
                                 "checkpoint.json", CheckpointError),
    "checkpoint.json not text": ("flm", lambda c, t: _random(c / "checkpoint.json"), "checkpoint.json",
                                 CheckpointError),
    "unknown model_config key": ("flm", lambda c, t: _edit_json(c / "checkpoint.json",
                                                                 lambda m: m["model_config"].update(n_experts=4)),
                                 "checkpoint.json", CheckpointError),
    "model_config disagrees with the weights": ("flm", lambda c, t: _edit_json(
        c / "checkpoint.json", lambda m: m["model_config"].update(d_model=64)), "ema.safetensors", CheckpointError),
    "fmlm label on flm weights": ("flm", lambda c, t: _edit_json(c / "checkpoint.json",
                                                                  lambda m: m.update(model_kind="fmlm", stage=None)),
                                  "checkpoint.json", CheckpointError),
    "ar label on mdlm weights": ("mdlm", lambda c, t: _edit_json(c / "checkpoint.json",
                                                                  lambda m: m.update(model_kind="ar", stage=None)),
                                 "checkpoint.json", CheckpointError),
    "flm label on an mdlm (stage train_mdlm)": ("mdlm", lambda c, t: _edit_json(
        c / "checkpoint.json", lambda m: m.update(model_kind="flm")), "checkpoint.json", CheckpointError),
    "flm label on an mdlm (V + 1 ids)": ("mdlm", lambda c, t: _edit_json(
        c / "checkpoint.json", lambda m: m.update(model_kind="flm", stage=None)), "checkpoint.json", CheckpointError),
    "corrupt tokenizer.json": ("flm", lambda c, t: (t / "tokenizer.json").write_text('{"model": {"type": "BPE"'),
                               "tokenizer.json", DataError),
    "tokenizer.json is a folder": ("flm", lambda c, t: _dir_instead(t / "tokenizer.json"), "tokenizer.json",
                                   DataError),
    "tokenizer meta.json not JSON": ("flm", lambda c, t: (t / "meta.json").write_text("format: x"), "meta.json",
                                     DataError),
    "a tokenizer file given as the tokenizer folder": ("flm", lambda c, t: t / "tokenizer.json", "tokenizer.json",
                                                       DataError),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_checkpoint_or_tokenizer_is_one_line_naming_the_file(
    case: str, saved: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], restored_environ: None
) -> None:
    from flm.cli import main

    kind, breaks, named, error = BROKEN[case]
    checkpoint, tokenizer = tmp_path / "ckpt", tmp_path / "tokenizer"
    shutil.copytree(saved[kind], checkpoint)
    shutil.copytree(saved["tokenizer"], tokenizer)
    given = breaks(checkpoint, tokenizer)
    tokenizer = given if isinstance(given, Path) else tokenizer

    with pytest.raises(error) as info:
        TextGenerator(checkpoint, tokenizer)
    assert type(info.value) is error
    message = str(info.value)
    assert len(message.splitlines()) == 1 and f"{tmp_path}/" in message and named in message, message

    assert main(["generate", str(checkpoint), "--tokenizer", str(tokenizer), "--steps", "1", "--length", "8",
                 "--state", str(tmp_path / "state"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err and str(tmp_path) in err, err


@pytest.mark.parametrize("kind", list(SHAPE))
def test_every_good_kind_still_loads_and_generates(kind: str, saved: dict) -> None:
    generator = TextGenerator(saved[kind], saved["tokenizer"])
    assert generator.kind == model_kind(saved[kind]) == kind
    assert len(generator.generate(1, steps=2, length=8)) == 1


# ----------------------------------------------------------------------------- the distillation teacher
@pytest.mark.parametrize("kind", ["mdlm", "ar", "fmlm"])
def test_a_non_flm_teacher_is_refused_naming_both_kinds(
    kind: str, saved: dict, tiny_data: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    shutil.copytree(saved[kind], models / "flm")
    with pytest.raises(CheckpointError, match=rf"an {kind} checkpoint where an flm checkpoint is expected"):
        load_backbone(models / "flm", kind="flm")

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(TINY))
    assert train_stages.main(["distill_fmlm", "--params", str(params), "--tokens", str(tiny_data["tokens"]),
                              "--tokenizer", str(tiny_data["tokenizer"]), "--models", str(models), "--metrics",
                              str(tmp_path / "metrics"), "--state", str(tmp_path / "state"), "--no-tracking",
                              "--quiet", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(models / "flm") in err and f"an {kind} checkpoint" in err, err
    assert "an flm checkpoint is expected" in err
    assert not (models / "fmlm").exists() and not (tmp_path / "state").exists()  # refused before any work

    from pipelines.run import main as run_flow

    assert params == tmp_path / "params.yaml"  # the flow reads <root>/params.yaml, its teacher <root>/models/flm
    assert run_flow(["distill_fmlm", "--root", str(tmp_path), "--workers", "0", "--no-register"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"an {kind} checkpoint where an flm checkpoint is expected" in err, err
    assert not (tmp_path / ".state").exists()  # before Prefect, Ray or MLflow


def test_from_teacher_refuses_a_backbone_that_is_not_an_flm_denoiser() -> None:
    for config in (DiTConfig(33, n_times=0, causal=True, **TINY_DIT), DiTConfig(33, n_times=2, **TINY_DIT)):
        with pytest.raises(ValueError, match="FLM teacher must have n_times=1 and causal=False"):
            FMLMDistillation.from_teacher(DiT(config))
