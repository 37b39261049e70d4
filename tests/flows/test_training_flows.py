"""The training flows under Prefect's test harness: MLflow runs, DVC outputs, registered models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flm.registry.generator import TextGenerator
from flm.train.checkpoint import read_meta

from .conftest import TOKENS_MD5


def test_dvc_outputs_are_written(trained: dict, project: Path) -> None:
    assert read_meta(project / "models" / "flm")["step"] == 8
    assert read_meta(project / "models" / "fmlm")["step"] == 8
    assert read_meta(project / "models" / "fmlm")["backbone"] == "student"
    for name in ("flm", "fmlm"):
        metrics = json.loads((project / "metrics" / f"{name}.json").read_text())[name]
        assert metrics["step"] == 8 and metrics["val_loss"] > 0
        assert metrics == pytest.approx(trained[name]["metrics"])


def test_parent_run_carries_lineage_and_child_the_history(trained: dict, mlflow_client: Any) -> None:
    from prefect import get_client  # noqa: F401  (the harness's API holds the flow runs)

    parent = mlflow_client.get_run(trained["flm"]["run_id"])
    tags = parent.data.tags
    assert tags["stage"] == "train_flm" and tags["dvc.data/tokens"] == TOKENS_MD5
    assert len(tags["git.commit"]) == 40 or tags["git.commit"] == "unknown"
    assert len(tags["prefect.flow_run_id"]) == 36
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["val_loss"] == pytest.approx(trained["flm"]["metrics"]["val_loss"])
    assert parent.data.params["train.steps"] == "8"

    child = mlflow_client.get_run(trained["flm"]["ray_run_id"])
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED"
    history = mlflow_client.get_metric_history(child.info.run_id, "train/loss")
    assert [m.step for m in history] == [2, 4, 6, 8]
    val = mlflow_client.get_metric_history(child.info.run_id, "val/loss")
    assert [m.step for m in val] == [4, 8]
    artifacts = {a.path for a in mlflow_client.list_artifacts(child.info.run_id)}
    assert {"checkpoint", "samples"} <= artifacts


def test_flow_run_id_is_the_prefect_one(trained: dict, mlflow_client: Any) -> None:
    import asyncio

    from prefect import get_client

    async def state_of(run_id: str) -> str:
        async with get_client() as client:
            return (await client.read_flow_run(run_id)).state.type.value

    run_id = mlflow_client.get_run(trained["fmlm"]["run_id"]).data.tags["prefect.flow_run_id"]
    assert asyncio.run(state_of(run_id)) == "COMPLETED"


def test_registered_models_generate_text(trained: dict, project: Path) -> None:
    import mlflow
    import pandas as pd

    from flm.tracking import default_tracking_uri

    mlflow.set_tracking_uri(default_tracking_uri(project / ".state"))
    assert trained["flm"]["model_version"] == "1" and trained["fmlm"]["model_version"] == "1"
    model = mlflow.pyfunc.load_model("models:/fmlm/1")
    out = model.predict(pd.DataFrame({"seed": [0, 1, 0]}), params={"steps": 1, "length": 12})
    texts = list(out["text"])
    assert len(texts) == 3 and texts[0] == texts[2] and texts[0] != texts[1]   # same seed, same text
    assert all(isinstance(t, str) and t for t in texts)
    # the registered weights and tokenizer are the DVC outputs': the same seed writes the same text
    local = {name: TextGenerator(project / "models" / name, project / "data" / "tokenizer") for name in ("flm", "fmlm")}
    assert texts[:2] == [local["fmlm"].generate(1, 1, 12, seed=seed)[0] for seed in (0, 1)]
    flm = mlflow.pyfunc.load_model("models:/flm/1")
    assert list(flm.predict(pd.DataFrame({"seed": [3]}), params={"steps": 4})["text"]) == local["flm"].generate(
        1, 4, seed=3)
    renoised = model.predict(pd.DataFrame({"seed": [0, 0]}), params={"steps": 2, "length": 12, "renoise": 0.8})
    assert list(renoised["text"]) == local["fmlm"].generate(1, 2, 12, seed=0, renoise=0.8) * 2  # per seed
    assert renoised["text"][0] != local["fmlm"].generate(1, 2, 12, seed=0)[0]  # re-noising changes two steps
