"""The MLflow tracker against a real sqlite store; the no-op tracker has the same interface."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flm.data.blocks import TokenBlocks
from flm.tracking import MLflowTracker, NullTracker, Tracker, default_tracking_uri, flatten, make_tracker
from flm.train.loop import train_loop

from .conftest import tiny_train
from .helpers import tiny_flm


def test_both_trackers_implement_the_protocol() -> None:
    assert isinstance(NullTracker(), Tracker)
    assert set(dir(MLflowTracker)) >= {name for name in dir(Tracker) if not name.startswith("_")}
    assert flatten({"a": {"b": 1, "c": (1, 2)}, "d": "x"}) == {"a.b": 1, "a.c": "[1, 2]", "d": "x"}


def test_the_default_store_is_sqlite_under_state_unless_the_env_says(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default_tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_a_training_run_lands_in_mlflow(
    tiny_data: dict, mlflow_state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may appear in the cwd (./mlruns, ./mlflow.db)
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY")
    state = mlflow_state
    train, val = TokenBlocks(tiny_data["tokens"], "train"), TokenBlocks(tiny_data["tokens"], "val")
    settings = tiny_train(steps=10, log_every=5, val_every=5, sample_n=1, sample_steps=(2,))
    with make_tracker("flm-test", run_name="tiny", state_dir=state, tags={"stage": "test"}) as tracker:
        tracker.log_params({"train": settings.model_dump(mode="json")})
        result = train_loop(tiny_flm(train.vocab_size), "backbone", settings, train, val, state / "run",
                            tracker=tracker, progress=False)
        tracker.log_artifacts(result.checkpoint, "checkpoint")
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true" and os.environ["DO_NOT_TRACK"] == "true"
    assert list(tmp_path.iterdir()) == []
    assert (state / "mlflow" / "mlflow.db").is_file()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=default_tracking_uri(state))
    experiment = client.get_experiment_by_name("flm-test")
    assert experiment.artifact_location == (state / "mlflow" / "artifacts" / "flm-test").resolve().as_uri()
    (run,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'tiny'")
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny" and run.data.tags["stage"] == "test"
    assert run.data.params["train.steps"] == "10" and run.data.params["train.sample_steps"] == "[2]"
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in losses] == [5, 10]
    assert [m.value for m in losses] == pytest.approx([h["train/loss"] for h in result.history])
    val_nll = client.get_metric_history(run.info.run_id, "val/nll")
    assert [(m.step, m.value) for m in val_nll] == pytest.approx([(v["step"], v["nll"]) for v in result.val])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
    assert "checkpoint/model.safetensors" in artifacts and "checkpoint/checkpoint.json" in artifacts
    samples = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert samples == {"samples/step00000005-nfe2.txt", "samples/step00000010-nfe2.txt"}


def test_a_failed_block_marks_the_run_failed(mlflow_state: Path) -> None:
    with pytest.raises(RuntimeError), make_tracker("flm-test", state_dir=mlflow_state) as tracker:
        raise RuntimeError("boom")
    from mlflow.tracking import MlflowClient

    assert MlflowClient(default_tracking_uri(mlflow_state)).get_run(tracker.run_id).info.status == "FAILED"
