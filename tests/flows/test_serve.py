"""`python -m pipelines.serve`: a local Prefect server + served deployments; a run triggered by API completes."""

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

from flm.train.checkpoint import read_meta
from pipelines.serve import wait_healthy

from .conftest import tiny_params


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run_deployment(api_url: str, name: str, parameters: dict, timeout: float) -> tuple[str, str]:
    """Create a flow run of deployment ``name`` through the API and wait for a final state."""
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api=api_url) as client:
        deadline = time.monotonic() + 120
        while True:  # the deployments appear once `serve` has registered them
            try:
                deployment = await client.read_deployment_by_name(name)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1)
        run = await client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = await client.read_flow_run(run.id)
            if run.state is not None and run.state.is_final():
                return run.state.type.value, str(run.id)
            await asyncio.sleep(1)
    raise TimeoutError(f"{name} did not finish in {timeout} s")


def test_deployment_triggered_through_the_api_completes(project: Path, tmp_path: Path) -> None:
    root = tmp_path / "project"                          # its own project: the session's models stay as they are
    shutil.copytree(project / "data", root / "data")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen([sys.executable, "-m", "pipelines.serve", "--port", str(port), "--root", str(root)],
                             stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_healthy(api_url, timeout=180, process=serve)
        params = tiny_params(train={"steps": 2, "val_every": 0, "ckpt_every": 0, "sample_n": 0}).model_dump(mode="json")
        state, _ = asyncio.run(run_deployment(
            api_url, "train_flm/local", {"params": params, "workers": 0, "register_model": False}, timeout=300))
        assert state == "COMPLETED", (tmp_path / "serve.log").read_text()[-3000:]
        assert read_meta(root / "models" / "flm")["params"]["train"]["steps"] == 2
        assert json.loads((root / "metrics" / "flm.json").read_text())["flm"]["step"] == 2
    finally:
        os.killpg(serve.pid, signal.SIGTERM)             # the serving process and its Prefect server
        with contextlib.suppress(subprocess.TimeoutExpired):
            serve.wait(timeout=10)
        os.killpg(serve.pid, signal.SIGKILL)             # what a graceful shutdown left behind
        log.close()
