"""`ray job submit` to a Ray head on loopback runs a tiny pretraining flow to completion.

The head is started here (`ray start --head --block` in its own process group, every port chosen
free, HOME holding ray_bootstrap_config.yaml) and stopped by killing that group: never `ray stop`,
which would stop every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from flm.environment import tool_home
from flm.train.checkpoint import read_meta

from .conftest import TINY_LOOP, TINY_MODEL

BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def wait_for(url: str, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "ray start --head exited"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(1)
    raise TimeoutError(url)


def test_ray_job_submit_to_a_loopback_head(tiny_data: dict) -> None:
    root = Path(tempfile.mkdtemp(prefix="flmj-", dir="/tmp"))          # short: Ray's socket paths
    try:
        shutil.copytree(tiny_data["tokens"], root / "data" / "tokens")
        shutil.copytree(tiny_data["tokenizer"], root / "data" / "tokenizer")
        params = {"model": TINY_MODEL, "train": TINY_LOOP | {"steps": 4, "ckpt_every": 0, "sample_n": 0},
                  "cluster": {"workers": 1, "cpus_per_worker": 1}}
        (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
        home = tool_home(root / ".state")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PREFECT_API"))}
        env |= {"HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", "DO_NOT_TRACK": "true", "RAY_AUTH_MODE": "token",
                "PATH": f"{BIN}:{env.get('PATH', '')}"}
        subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True,
                       capture_output=True)                        # token auth: HOME/.ray/auth_token
        gcs, dash, client, agent_listen, agent_grpc, metrics, runtime_env = free_ports(7)
        head = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
             "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent_listen),
             "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
             "--runtime-env-agent-port", str(runtime_env), "--num-cpus", "2", "--temp-dir", str(root / "r"),
             "--disable-usage-stats"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for(f"http://127.0.0.1:{dash}/api/gcs_healthz", 180, head)   # exempt from token auth
            entrypoint = f"cd {root} && {sys.executable} -m pipelines.run train_flm --root {root} --no-register"
            submit = subprocess.run(
                [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--", "bash", "-c",
                 entrypoint],
                env=env, capture_output=True, text=True, timeout=400)
            assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
            assert "succeeded" in submit.stdout + submit.stderr
            assert read_meta(root / "models" / "flm")["step"] == 4
            assert json.loads((root / "metrics" / "flm.json").read_text())["flm"]["step"] == 4
        finally:
            os.killpg(head.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                head.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
    finally:
        shutil.rmtree(root, ignore_errors=True)
