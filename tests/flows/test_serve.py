"""`python -m pipelines.serve`: a local Prefect server + served deployments, driven through the server's API.

The deployments show params.yaml's tree; a run with one override trains with exactly params.yaml + that
override (the MLflow run's logged params), shows its phases as completed task runs, links to its MLflow
run (log, markdown artifact) and back (the run's tag), and keeps the workspace's DVC outputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from flm.config import load_params
from flm.tracking import flatten
from flm.train.checkpoint import read_meta
from pipelines.serve import wait_healthy

from .conftest import tiny_params

DEPLOYMENTS = {"train_flm/train_flm", "distill_fmlm/distill_fmlm", "train_ar/train_ar", "train_mdlm/train_mdlm",
               "evaluate/evaluate", "promote/promote", "pipeline/pipeline"}
PHASES = {"check_inputs", "train_on_ray", "write_outputs", "log_and_register"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def read_deployments(api_url: str, names: set[str], timeout: float = 120) -> dict[str, Any]:
    """The deployments ``names`` once ``serve`` has registered them all."""
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api=api_url) as client:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return {name: await client.read_deployment_by_name(name) for name in sorted(names)}
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1)


async def wait_for_log_line(api_url: str, flow_run_id: str, text: str, timeout: float = 60) -> list[str]:
    """The flow run's log once a line contains ``text`` (log lines reach the API in batches, after the run)."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async with PrefectClient(api=api_url) as client:
        deadline = time.monotonic() + timeout
        while True:
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            lines = [entry.message for entry in logs]
            if any(text in line for line in lines) or time.monotonic() > deadline:
                return lines
            await asyncio.sleep(1)


async def run_deployment(api_url: str, name: str, parameters: dict, timeout: float) -> dict[str, Any]:
    """Create a flow run of deployment ``name`` through the API, wait for a final state; the run, tasks, artifacts."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
    )

    async with PrefectClient(api=api_url) as client:
        deployment = await client.read_deployment_by_name(name)
        run = await client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = await client.read_flow_run(run.id)
            if run.state is not None and run.state.is_final():
                tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
                artifacts = await client.read_artifacts(
                    artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
                return {"state": run.state.type.value, "id": str(run.id), "name": run.name,
                        "tasks": {t.name: t.state.type.value for t in tasks}, "artifacts": artifacts}
            await asyncio.sleep(1)
    raise TimeoutError(f"{name} did not finish in {timeout} s")


def test_served_deployments_start_from_params_yaml(project: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from flm.tracking import default_tracking_uri

    root = tmp_path / "project"                          # its own project: the session's models stay as they are
    shutil.copytree(project / "data", root / "data")
    tree = tiny_params(train={"steps": 2, "val_every": 0, "ckpt_every": 0, "sample_n": 0}).model_dump(mode="json")
    (root / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    expected = load_params(root / "params.yaml").model_dump(mode="json")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen([sys.executable, "-m", "pipelines.serve", "--port", str(port), "--root", str(root)],
                             stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_healthy(api_url, timeout=180, process=serve)
        found = asyncio.run(read_deployments(api_url, DEPLOYMENTS))
        assert found["train_flm/train_flm"].parameters == {"root": str(root), "params": expected, "overrides": {}}
        assert found["evaluate/evaluate"].parameters["params"] == expected

        # one override through the API: exactly params.yaml + train.lr, outputs beside the workspace's
        run = asyncio.run(run_deployment(api_url, "train_flm/train_flm",
                                         {"overrides": {"train.lr": "0.002"}, "workers": 0, "register_model": False},
                                         timeout=300))
        assert run["state"] == "COMPLETED", (tmp_path / "serve.log").read_text()[-3000:]
        assert run["name"] == "train_flm-laptop-train.lr=0.002"
        assert run["tasks"] == dict.fromkeys(PHASES, "COMPLETED")
        client = MlflowClient(default_tracking_uri(root / ".state"))
        [parent] = client.search_runs([client.get_experiment_by_name("flm").experiment_id],
                                      f"tags.`prefect.flow_run_id` = '{run['id']}'")
        logged = flatten(expected | {"train": expected["train"] | {"lr": 0.002}})
        assert parent.data.params == {key: str(value) for key, value in logged.items()}
        assert parent.data.tags["prefect.flow_run_url"] == f"http://127.0.0.1:4200/runs/flow-run/{run['id']}"
        url = f"http://127.0.0.1:5000/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"
        lines = asyncio.run(wait_for_log_line(api_url, run["id"], "step 2/2  loss"))
        assert any("step 2/2  loss" in line for line in lines), lines   # the stage's progress lines
        assert any(url in line for line in lines), lines
        [artifact] = run["artifacts"]
        assert artifact.type == "markdown" and artifact.key == "flm-training" and url in artifact.data
        assert not (root / "models" / "flm").exists()   # the DVC outputs are params.yaml's alone
        [out] = (root / ".state" / "experiments").iterdir()
        assert out.name.startswith("train_flm-laptop-") and read_meta(out / "models" / "flm")["params"]["train"][
            "lr"] == 0.002

        # params.yaml as it is: the workspace's DVC outputs
        run = asyncio.run(run_deployment(api_url, "train_flm/train_flm", {"workers": 0, "register_model": False},
                                         timeout=300))
        assert run["state"] == "COMPLETED", (tmp_path / "serve.log").read_text()[-3000:]
        assert read_meta(root / "models" / "flm")["params"] == expected
        assert json.loads((root / "metrics" / "flm.json").read_text())["flm"]["step"] == 2

        # a changed params.yaml is re-served
        tree["train"]["steps"] = 3
        (root / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
        deadline = time.monotonic() + 120
        while asyncio.run(read_deployments(api_url, {"train_ar/train_ar"}))["train_ar/train_ar"].parameters[
                "params"]["train"]["steps"] != 3:
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
    finally:
        os.killpg(serve.pid, signal.SIGTERM)             # the serving processes and its Prefect server
        with contextlib.suppress(subprocess.TimeoutExpired):
            serve.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(serve.pid, signal.SIGKILL)         # what a graceful shutdown left behind
        log.close()
