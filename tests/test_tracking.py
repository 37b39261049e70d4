"""The MLflow tracker's experiment: created (or found) as a model-training experiment, in a real sqlite store."""

from __future__ import annotations

from pathlib import Path

from flm.tracking import EXPERIMENT_TAGS, make_tracker


def test_the_experiment_is_a_model_training_one(tmp_path: Path, restored_environ: None) -> None:
    """A new experiment gets :data:`EXPERIMENT_TAGS`; an existing one without them (or with MLflow's GenAI kind)
    gets them at the next run; MLflow's UI opens such an experiment on runs and the registry, not on traces."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    run = make_tracker("flm", run_name="one", state_dir=tmp_path, tracking_uri=uri)
    run.close()
    client = MlflowClient(uri)
    assert EXPERIMENT_TAGS == {"mlflow.experimentKind": "custom_model_development"}
    assert client.get_experiment_by_name("flm").tags["mlflow.experimentKind"] == "custom_model_development"

    old = client.create_experiment("old", artifact_location=(tmp_path / "old").as_uri(),
                                   tags={"mlflow.experimentKind": "genai_development", "owner": "me"})
    make_tracker("old", state_dir=tmp_path, tracking_uri=uri).close()
    assert client.get_experiment(old).tags == {"mlflow.experimentKind": "custom_model_development", "owner": "me"}
