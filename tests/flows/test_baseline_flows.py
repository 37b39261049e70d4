"""The baseline flows train_ar / train_mdlm under Prefect's test harness: DVC outputs, MLflow runs, models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flm.train.checkpoint import model_kind, read_meta

from .conftest import TINY_LOOP, tiny_params


@pytest.fixture(scope="module")
def baselines(prefect_harness: None, project: Path) -> dict[str, Any]:
    """train_ar and train_mdlm, in-process (``workers=0``), each through the Prefect engine."""
    from pipelines.flows import FLOWS

    params = tiny_params(ar=TINY_LOOP, mdlm=TINY_LOOP)
    return {name: FLOWS[f"train_{name}"](params=params, root=str(project), workers=0) for name in ("ar", "mdlm")}


@pytest.mark.parametrize("name", ["ar", "mdlm"])
def test_baseline_flows_write_their_outputs_and_runs(baselines: dict, project: Path, mlflow_client: Any,
                                                     name: str) -> None:
    result = baselines[name]
    checkpoint = project / "models" / name
    assert result["checkpoint"] == str(checkpoint) and result["model_version"] == "1"
    assert read_meta(checkpoint)["step"] == 8 and model_kind(checkpoint) == name
    metrics = json.loads((project / "metrics" / f"{name}.json").read_text())[name]
    assert metrics == pytest.approx(result["metrics"]) and metrics["val_loss"] > 0
    parent = mlflow_client.get_run(result["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["stage"] == f"train_{name}"
    assert parent.data.params[f"{name}.steps"] == "8"
    history = mlflow_client.get_metric_history(result["ray_run_id"], "train/loss")
    assert [m.step for m in history] == [2, 4, 6, 8]


@pytest.mark.parametrize("name", ["ar", "mdlm"])
def test_registered_baselines_generate_text(baselines: dict, project: Path, name: str) -> None:
    import mlflow
    import pandas as pd

    from flm.tracking import default_tracking_uri

    mlflow.set_tracking_uri(default_tracking_uri(project / ".state"))
    model = mlflow.pyfunc.load_model(f"models:/{name}/1")
    texts = list(model.predict(pd.DataFrame({"seed": [0, 1, 0]}), params={"steps": 4, "length": 12})["text"])
    assert len(texts) == 3 and texts[0] == texts[2] and all(isinstance(t, str) and t for t in texts)
