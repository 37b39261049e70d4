"""The training stages end to end on tiny params: checkpoints, metrics, MLflow runs, resume, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from flm.config import params_from_dict
from flm.tracking import default_tracking_uri
from flm.train.checkpoint import load_backbone, read_meta
from pipelines.train_stages import StagePaths, distill_fmlm, main, train_flm

from .helpers import LEARNS, MARGIN, TINY


def stage_paths(tiny_data: dict, root: Path, state: Path) -> StagePaths:
    return StagePaths(tiny_data["tokens"], tiny_data["tokenizer"], root / "models", root / "metrics", state)


def test_train_then_distill_writes_checkpoints_metrics_and_mlflow_runs(
    tiny_data: dict, mlflow_state: Path, tmp_path: Path
) -> None:
    params = params_from_dict(LEARNS)
    paths = stage_paths(tiny_data, tmp_path, mlflow_state)
    ln_v = math.log(json.loads((tiny_data["tokens"] / "meta.json").read_text())["V"])

    flm = train_flm(params, paths, progress=False, device="cpu")
    assert flm.checkpoint == tmp_path / "models" / "flm"
    meta = read_meta(flm.checkpoint)
    assert meta["step"] == 12 and meta["model_config"]["n_times"] == 1 and meta["model_config"]["d_model"] == 32
    assert meta["params"] == params.model_dump(mode="json")
    assert meta["data_fingerprint"] == json.loads((tiny_data["tokens"] / "meta.json").read_text())["source_fingerprint"]
    metrics = json.loads((tmp_path / "metrics" / "flm.json").read_text())["flm"]
    assert metrics["step"] == 12 and metrics["val_nll"] == pytest.approx(flm.loop.val[-1]["nll"])
    assert metrics["val_nll"] < ln_v - MARGIN and metrics["train_loss"] > 0, (metrics, ln_v)
    texts = flm.loop.samples[4]
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert not all(t.replace(" ", "").isdigit() for t in texts)  # decoded by the tokenizer, not raw ids

    fmlm = distill_fmlm(params, paths, progress=False, device="cpu")
    student_meta = read_meta(fmlm.checkpoint)
    assert student_meta["model_config"]["n_times"] == 2 and student_meta["backbone"] == "student"
    assert student_meta["teacher_step"] == 12
    assert load_backbone(fmlm.checkpoint).config.n_times == 2
    assert set(fmlm.loop.samples) == {1, 2}
    fmlm_metrics = json.loads((tmp_path / "metrics" / "fmlm.json").read_text())["fmlm"]
    assert fmlm_metrics["step"] == 6 and {"val_ce_diag", "val_ce_off", "val_loss"} <= set(fmlm_metrics)
    # the student starts as the trained teacher: both its diagonal and its off-diagonal (semigroup) CE stay well
    # below ln V (a student that lost the teacher's weights, or a target that is not the teacher's, scores ~ln V)
    for key in ("val_ce_diag", "val_ce_off", "val_loss"):
        assert fmlm_metrics[key] < ln_v - MARGIN, (key, fmlm_metrics, ln_v)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(default_tracking_uri(mlflow_state))
    for result, stage, n_logs in ((flm, "train_flm", 4), (fmlm, "distill_fmlm", 2)):
        run = client.get_run(result.run_id)
        assert run.info.status == "FINISHED" and run.data.tags["stage"] == stage
        assert len(client.get_metric_history(result.run_id, "train/loss")) == n_logs
        files = {a.path for a in client.list_artifacts(result.run_id, "checkpoint")}
        assert {"checkpoint/ema.safetensors", "checkpoint/checkpoint.json"} <= files
    assert client.get_run(flm.run_id).data.params["train.steps"] == "12"
    assert client.get_run(fmlm.run_id).data.params["distill.beta2"] == "0.95"

    again = train_flm(params, paths, progress=False, device="cpu")  # same params: resumes at the end
    assert again.loop.resumed_from == 12 and again.loop.history == []
    assert (again.checkpoint / "model.safetensors").read_bytes() == (flm.checkpoint / "model.safetensors").read_bytes()


def test_the_command_line_runs_a_stage_and_reports_bad_params(tiny_data: dict, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(TINY | {"train": TINY["train"] | {"steps": 3, "sample_n": 0}}))
    common = ["--params", str(params_file), "--tokens", str(tiny_data["tokens"]), "--tokenizer",
              str(tiny_data["tokenizer"]), "--models", str(tmp_path / "m"), "--metrics", str(tmp_path / "x"),
              "--state", str(tmp_path / "s"), "--no-tracking", "--quiet", "--device", "cpu"]
    assert main(["train_flm", *common]) == 0
    assert json.loads((tmp_path / "x" / "flm.json").read_text())["flm"]["step"] == 3
    assert not (tmp_path / "s" / "mlflow").exists()

    params_file.write_text(yaml.safe_dump(TINY | {"distill": {"stpes": 3}}))
    assert main(["distill_fmlm", *common]) == 2
    assert "distill.stpes" in capsys.readouterr().err
