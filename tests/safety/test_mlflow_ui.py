"""``make mlflow`` (``python -m pipelines.mlflow_ui``), the real server over a tiny real store: bound to 127.0.0.1
only, the run visible through the REST API, telemetry off and ``HOME`` untouched, stopped cleanly by SIGTERM; no
connection attempt leaves loopback while a page is fetched (``tools/netcheck``); a missing store is one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TELEMETRY = ("DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "MLFLOW_TRACKING_URI")
# MLflow switches its telemetry off by itself under pytest or CI (mlflow.telemetry.utils), which would hide a missing
# switch: the server must not see these.
CI_MARKERS = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILDKITE", "TRAVIS",
              "CIRCLECI", "TF_BUILD", "TEAMCITY_VERSION", "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A project folder whose ``.state/mlflow`` store holds one finished run (made with the project's tracker)."""
    from flm.tracking import make_tracker

    root = tmp_path_factory.mktemp("project")
    tracker = make_tracker("flm", run_name="tiny", state_dir=root / ".state", tracking_uri=None,
                           tags={"flm.stage": "train_flm"})
    tracker.log_params({"train.lr": 0.001})
    tracker.log_metrics({"train/loss": 1.5}, step=1)
    tracker.close()
    return root, tracker.run_id


def user_env(home: Path) -> dict[str, str]:
    """A user's shell: ``HOME`` at ``home``, none of the telemetry switches (the entry point must set them), no CI."""
    env = {key: value for key, value in os.environ.items() if key not in TELEMETRY + CI_MARKERS}
    return env | {"HOME": str(home), "PYTHONPATH": str(ROOT)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listeners(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} write them) of the sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def get_json(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_ui_serves_the_store_on_loopback_only_without_telemetry(project: tuple[Path, str], tmp_path: Path) -> None:
    root, run_id = project
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "pipelines.mlflow_ui", "--root", str(root), "--port", str(port)],
                          env=user_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    server = 0
    try:
        line = ui.stdout.readline()  # printed once /health answers
        assert line.startswith(f"MLflow UI: http://127.0.0.1:{port}"), line
        url = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
        experiments = get_json(f"{url}/api/2.0/mlflow/experiments/search", {"max_results": 10})["experiments"]
        flm = next(e for e in experiments if e["name"] == "flm")
        runs = get_json(f"{url}/api/2.0/mlflow/runs/search", {"experiment_ids": [flm["experiment_id"]]})["runs"]
        assert [r["info"]["run_id"] for r in runs] == [run_id]
        assert flm["artifact_location"] == (root / ".state" / "mlflow" / "artifacts" / "flm").as_uri()
        assert get_json(f"{url}/ajax-api/3.0/mlflow/ui-telemetry")["disable_ui_telemetry"] is True  # every page asks
        (server,) = children(ui.pid)
        assert listeners(port) == {"0100007F"}, "listening beyond 127.0.0.1"
        environ = dict(item.split("=", 1) for item in Path(f"/proc/{server}/environ").read_text().split("\0") if item)
        assert environ["DO_NOT_TRACK"] == "true" and environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
        assert environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
        assert Path(environ["HOME"]).is_relative_to(root / ".state")
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=30) == 0
        assert not Path(f"/proc/{server}").exists() and listeners(port) == set()
    finally:
        if ui.poll() is None:
            ui.kill()
            ui.wait()
        if server and Path(f"/proc/{server}").exists():
            os.killpg(server, signal.SIGKILL)
    assert list(home.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]  # nothing in the working directory either


def test_missing_store_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pipelines.mlflow_ui", "--root", str(tmp_path), "--port", "1"],
                          env=user_env(tmp_path), capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "no MLflow store at" in done.stderr and "make run" in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_screenshots_without_state_is_one_line(tmp_path: Path) -> None:
    """tools/screenshots.py before ``make run`` (or without chromium): one line naming what is missing, status 2."""
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "screenshots.py"), "--root", str(tmp_path), "--out",
                           str(tmp_path / "img")], env=user_env(tmp_path), capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: no ")
    assert list(tmp_path.iterdir()) == []  # no state, no image folder made


@pytest.mark.skipif(shutil.which("strace") is None or shutil.which("curl") is None,
                    reason="tools/netcheck needs strace and curl (apt-get install strace curl)")
def test_netcheck_no_connection_leaves_loopback(project: tuple[Path, str], tmp_path: Path) -> None:
    """The page, the UI-telemetry settings its script fetches on every load, and the REST API, under strace."""
    root, _ = project
    home = tmp_path / "home"
    home.mkdir()
    script = f"""
{sys.executable} -m pipelines.mlflow_ui --root {root} --port 5000 &
ui=$!
for i in $(seq 240); do curl -sf -o /dev/null http://127.0.0.1:5000/health && break; sleep 0.25; done
curl -sf -o /dev/null http://127.0.0.1:5000/ \\
  && curl -sf -o /dev/null http://127.0.0.1:5000/ajax-api/3.0/mlflow/ui-telemetry \\
  && curl -sf -o /dev/null 'http://127.0.0.1:5000/ajax-api/2.0/mlflow/experiments/search?max_results=10'
fetched=$?
kill -TERM $ui; wait $ui; stopped=$?
exit $(( fetched || stopped ))
"""
    done = subprocess.run([str(ROOT / "tools" / "netcheck"), "bash", "-c", script], env=user_env(home), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no connection attempt left loopback" in done.stdout
    assert list(home.iterdir()) == []
