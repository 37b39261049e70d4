"""The shared MLflow tracking server of infra/: a real ``mlflow server`` on loopback, started by the recipe
(infra/mlflow/server.sh) with the Kubernetes manifest's settings, a database backend (sqlite here) and its
artifacts on the loopback S3 server. A training flow logs its runs, metrics, checkpoints and registered
model to it, and ``flm generate models:/flm/1`` reads the model back, neither holding S3 credentials."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from .conftest import S3_ENV, S3Server, free_port
from .tiny_project import build_data, tiny_params

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "infra" / "mlflow" / "server.sh"
MANIFEST = ROOT / "infra" / "ray" / "mlflow-server.yaml"
RAYJOB = ROOT / "infra" / "ray" / "rayjob-kuberay.yaml"
CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
NO_CREDENTIALS = {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"}
"""With these and no ``AWS_*_KEY*`` variables, boto3 finds no credentials at all (metadata is off too)."""


def deployment_env() -> dict[str, str]:
    """The plain ``env`` values of the MLflow Deployment's container (secrets left out)."""
    docs = [doc for doc in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")) if doc]
    (deployment,) = [doc for doc in docs if doc["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


def rayjob_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` of the KubeRay RayJob's runtime environment."""
    (job,) = [doc for doc in yaml.safe_load_all(RAYJOB.read_text(encoding="utf-8")) if doc and doc["kind"] == "RayJob"]
    return yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["MLFLOW_TRACKING_URI"]


@dataclass(frozen=True)
class Server:
    url: str
    """``http://127.0.0.1:<port>``."""
    bucket: str
    """The S3 bucket holding the artifacts (under ``mlflow/``)."""
    log: Path


def get(url: str, host: str | None = None) -> int:
    """HTTP status of ``GET url`` (with a ``Host`` header when given); 0 when nothing answers."""
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


@pytest.fixture(scope="module")
def mlflow_server(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """infra/mlflow/server.sh with the manifest's settings, on 127.0.0.1, a sqlite backend, artifacts in S3."""
    work = tmp_path_factory.mktemp("mlflow-server")
    bucket = f"flm-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    port = free_port()
    env = os.environ | deployment_env() | S3_ENV | {
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{work / 'mlflow.db'}",
        "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{bucket}/mlflow",
        "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint,
        "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HOME": str(work),
    }
    log = work / "server.log"
    with log.open("wb") as out:  # its own process group: the server's workers end with it
        process = subprocess.Popen([str(SERVER)], env=env, cwd=work, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while get(f"{url}/health") != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield Server(url, bucket, log)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group may be gone (a server that failed to start)
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def test_the_recipe_refuses_to_start_without_its_stores(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"HOME": str(tmp_path)}
    done = subprocess.run([str(SERVER)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "MLFLOW_BACKEND_STORE_URI" in done.stderr
    env["MLFLOW_BACKEND_STORE_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = subprocess.run([str(SERVER)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "MLFLOW_ARTIFACTS_DESTINATION" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_the_server_answers_the_rayjobs_host_and_refuses_foreign_ones(mlflow_server: Server) -> None:
    api = f"{mlflow_server.url}/api/2.0/mlflow/experiments/search?max_results=1"
    service = urlparse(rayjob_tracking_uri()).netloc            # mlflow.mlflow.svc:5000, the Service's name
    assert get(api, host=service) == 200
    assert get(api, host="127.0.0.1:5000") == 200               # kubectl port-forward
    assert get(api, host="mlflow.attacker.example:5000") == 403  # DNS rebinding: refused
    assert get(f"{mlflow_server.url}/health", host="10.1.2.3:5000") == 200  # the kubelet's probes


def test_a_training_flow_logs_to_the_server_and_generate_reads_the_registered_model(
    mlflow_server: Server, s3_server: S3Server, tmp_path: Path, restored_environ: None,
) -> None:
    from mlflow import MlflowClient
    from prefect.testing.utilities import prefect_test_harness

    from flm.registry.generator import TextGenerator
    from pipelines.flows import train_flm

    project = tmp_path / "project"
    build_data(project)
    client_env = {"MLFLOW_TRACKING_URI": mlflow_server.url} | NO_CREDENTIALS
    with pytest.MonkeyPatch.context() as mp:  # the flow holds no S3 credentials: the server streams artifacts
        for key in CREDENTIALS:
            mp.delenv(key, raising=False)
        for key, value in client_env.items():
            mp.setenv(key, value)
        with prefect_test_harness(server_startup_timeout=120):  # the flow runs through Prefect's engine
            result = train_flm(params=tiny_params(), root=str(project), workers=0)

    client = MlflowClient(mlflow_server.url)
    parent = client.get_run(result["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["stage"] == "train_flm"
    assert len(parent.data.tags["prefect.flow_run_id"]) == 36
    assert parent.data.metrics["val_loss"] == pytest.approx(result["metrics"]["val_loss"])
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.artifact_location.startswith("mlflow-artifacts:/")  # proxied: the server's store
    child = client.get_run(result["ray_run_id"])
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")] == [2, 4]
    assert {"checkpoint", "samples"} <= {a.path for a in client.list_artifacts(child.info.run_id)}
    (version,) = client.search_model_versions("name = 'flm'")
    assert version.version == "1" and version.run_id == parent.info.run_id

    keys = [obj["Key"] for page in s3_server.client().get_paginator("list_objects_v2").paginate(
        Bucket=mlflow_server.bucket, Prefix="mlflow/") for obj in page.get("Contents", [])]
    checkpoints = [k for k in keys if f"/{child.info.run_id}/artifacts/checkpoint/" in k]
    assert any(k.endswith("ema.safetensors") for k in checkpoints), keys
    assert any(k.endswith("/MLmodel") for k in keys), keys                 # the registered model's files
    assert any(k.endswith("/flm.json") and parent.info.run_id in k for k in keys), keys  # the metrics artifact

    env = {k: v for k, v in os.environ.items() if k not in CREDENTIALS} | client_env
    done = subprocess.run([str(Path(sys.executable).with_name("flm")), "generate", "models:/flm/1", "--steps", "2",
                           "--seed", "3", "--json", "--device", "cpu"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(record["text"], str) and record["text"].strip()
    local = TextGenerator(project / "models" / "flm", project / "data" / "tokenizer")
    assert record["text"] == local.generate(1, 2, seed=3)[0]               # the DVC output's weights, served
    assert not list(tmp_path.glob("mlruns")) and not (tmp_path / "mlartifacts").exists()
