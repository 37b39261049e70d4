"""The baseline stages train_ar / train_mdlm end to end on tiny params; checkpoints tell their kind."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from flm.config import params_from_dict
from flm.data.blocks import TokenBlocks
from flm.tracking import NullTracker
from flm.train.checkpoint import load_backbone, model_kind, read_meta
from pipelines.train_stages import STAGES, StagePaths, main, train_ar, train_mdlm

from .helpers import LEARNS, MARGIN, TINY


def stage_paths(tiny_data: dict, root: Path) -> StagePaths:
    return StagePaths(tiny_data["tokens"], tiny_data["tokenizer"], root / "models", root / "metrics", root / "state")


@pytest.mark.parametrize(("stage", "name", "causal", "n_times"), [(train_ar, "ar", True, 0),
                                                                  (train_mdlm, "mdlm", False, 1)])
def test_a_baseline_stage_trains_on_the_shared_model_shape(
    tiny_data: dict, tmp_path: Path, stage: object, name: str, causal: bool, n_times: int
) -> None:
    params = params_from_dict(LEARNS)
    result = stage(params, stage_paths(tiny_data, tmp_path), tracker=NullTracker(), progress=False, device="cpu")
    assert result.checkpoint == tmp_path / "models" / name
    meta = read_meta(result.checkpoint)
    vocab = TokenBlocks(tiny_data["tokens"], "train").vocab_size
    config = meta["model_config"]
    assert meta["step"] == 12 and meta["model_kind"] == name and meta["stage"] == f"train_{name}"
    assert (config["causal"], config["n_times"], config["vocab_size"]) == (causal, n_times, vocab + 1)
    assert config["d_model"] == TINY["model"]["d_model"] and meta[name]["steps"] == 12
    assert model_kind(result.checkpoint) == name
    assert load_backbone(result.checkpoint).config.vocab_size == vocab + 1

    metrics = json.loads((tmp_path / "metrics" / f"{name}.json").read_text())[name]
    assert metrics["step"] == 12 and math.isfinite(metrics["val_loss"])
    first = result.loop.history[0]["train/loss"]
    print(f"{name}: V={vocab} first train/loss {first:.3f}, final val_loss {metrics['val_loss']:.3f}")
    assert metrics["val_loss"] < first < 1.02 * math.log(vocab), (first, metrics["val_loss"])  # starts near log V
    assert metrics["val_loss"] < math.log(vocab) - MARGIN, (metrics["val_loss"], math.log(vocab))  # and learns
    for texts in result.loop.samples.values():
        assert len(texts) == 2 and not all(t.replace(" ", "").isdigit() for t in texts)  # decoded text
    assert set(result.loop.samples) == set(TINY[name]["sample_steps"])


def test_model_kind_falls_back_to_the_time_inputs_for_older_checkpoints(tiny_data: dict, tmp_path: Path) -> None:
    params = params_from_dict(TINY | {"mdlm": TINY["mdlm"] | {"steps": 2, "sample_n": 0}})
    done = train_mdlm(params, stage_paths(tiny_data, tmp_path), tracker=NullTracker(), progress=False, device="cpu")
    old = tmp_path / "old"
    shutil.copytree(done.checkpoint, old)
    meta = json.loads((old / "checkpoint.json").read_text())
    del meta["model_kind"]
    (old / "checkpoint.json").write_text(json.dumps(meta))
    assert model_kind(done.checkpoint) == "mdlm" and model_kind(old) == "mdlm"  # its stage says so
    for key in ("stage", "vocab_size"):
        del meta[key]
    (old / "checkpoint.json").write_text(json.dumps(meta))
    assert model_kind(old) == "flm"  # n_times = 1 alone reads as FLM
    meta["model_kind"] = "gpt"
    (old / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown model kind 'gpt'"):
        model_kind(old)


def test_the_command_line_knows_the_baselines(tiny_data: dict, tmp_path: Path) -> None:
    assert {"train_ar", "train_mdlm"} <= set(STAGES)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(TINY | {"ar": TINY["ar"] | {"steps": 2, "sample_n": 0}}))
    args = ["train_ar", "--params", str(params_file), "--tokens", str(tiny_data["tokens"]), "--tokenizer",
            str(tiny_data["tokenizer"]), "--models", str(tmp_path / "m"), "--metrics", str(tmp_path / "x"),
            "--state", str(tmp_path / "s"), "--no-tracking", "--quiet", "--device", "cpu"]
    assert main(args) == 0
    assert json.loads((tmp_path / "x" / "ar.json").read_text())["ar"]["step"] == 2
