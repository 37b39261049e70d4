"""A Ray head on loopback for `ray job submit` tests, started in its own process group and stopped by killing
that group: never `ray stop`, which would stop every Ray on the machine."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from flm.environment import tool_home

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


@contextlib.contextmanager
def ray_head(root: Path, cpus: int = 2) -> Iterator[tuple[str, dict[str, str]]]:
    """``ray start --head --block`` on 127.0.0.1 (every port chosen free, token auth, HOME holding
    ray_bootstrap_config.yaml, temp dir under ``root``); yields the dashboard address for ``ray job`` and the
    environment to run ``ray`` commands in."""
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
         "--runtime-env-agent-port", str(runtime_env), "--num-cpus", str(cpus), "--temp-dir", str(root / "r"),
         "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{dash}/api/gcs_healthz", 180, head)   # exempt from token auth
        yield f"http://127.0.0.1:{dash}", env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
