"""Screenshots of the Prefect and MLflow UIs over the project's state, for docs/PIPELINE.md (headless Chromium).

Run after ``make run``, with the network cut::

    tools/offline .venv/bin/python tools/screenshots.py            # writes docs/img/*.png

It starts the Prefect server serving the deployments (``python -m pipelines.serve``) and the MLflow UI
(``python -m pipelines.mlflow_ui``) on free loopback ports over ``<root>/.state``, finds through their
APIs what to show, and writes

* ``prefect-run-form.png``: a deployment's custom-run form (``/deployments/deployment/<id>/run``),
  preferring ``train_flm``'s;
* ``prefect-flow-run.png``: the newest finished flow run with the most tasks (``/runs/flow-run/<id>``);
* ``mlflow-run.png``: the newest parent run carrying lineage tags (``prefect.flow_run_id``), preferring
  ``distill_fmlm``'s (``#/experiments/<exp>/runs/<run>``);
* ``mlflow-registry.png``: a registered model holding ``@champion``, preferring ``fmlm``
  (``#/models/<name>``).

Chromium is Debian's ``chromium`` (``apt-get install chromium``), run headless with a fresh profile and
``HOME`` in a temporary folder, background networking off. A missing browser or state, or nothing to
show, is one line and exit status 2. Both servers are stopped at the end.
"""

from __future__ import annotations

import argparse
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--disable-default-apps", "--no-default-browser-check", "--metrics-recording-only",
    "--run-all-compositor-stages-before-draw",  # else Prefect's forms are caught mid fade-in, dimmed
)


class Missing(RuntimeError):
    """Something the screenshots need is not there (the browser, the state, a run to show); one line."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def call(url: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
    """GET (``body`` None) or POST JSON to ``url``; the decoded JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def _ok(url: str) -> bool:
    """``url`` answers 200."""
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status == 200


def wait_until(check: Any, what: str, process: subprocess.Popen, timeout: float = 180.0) -> Any:
    """Call ``check()`` until it returns something truthy (errors count as not yet); fail if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what}: the server exited with status {process.returncode}")
        try:
            if found := check():
                return found
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f} s")


def start(module: str, root: Path, port: int, log: Path) -> subprocess.Popen:
    """``python -m <module> --root <root> --port <port>`` from the repository, its output in ``log``."""
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", module, "--root", str(root), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (both entry points stop their servers on it), SIGKILL after 60 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def mlflow_pages(url: str) -> dict[str, str]:
    """The MLflow pages to shoot: ``mlflow-run`` (lineage-tagged parent run) and ``mlflow-registry`` (@champion)."""
    api = f"{url}/api/2.0/mlflow"
    experiments = call(f"{api}/experiments/search", {"max_results": 1000}).get("experiments", [])
    runs = call(f"{api}/runs/search", {"experiment_ids": [e["experiment_id"] for e in experiments],
                                       "max_results": 1000, "order_by": ["attributes.start_time DESC"]}).get("runs", [])

    def tags(run: dict[str, Any]) -> dict[str, str]:
        return {t["key"]: t["value"] for t in run.get("data", {}).get("tags", [])}

    lineage = [r for r in runs if "prefect.flow_run_id" in tags(r) and "mlflow.parentRunId" not in tags(r)]
    if not lineage:
        raise Missing(f"no MLflow run with lineage tags (prefect.flow_run_id) in the store served at {url}: "
                      f"run `make run` first")
    run = next((r for r in lineage if "fmlm" in r["info"].get("run_name", "")), lineage[0])["info"]
    models = call(f"{api}/registered-models/search?max_results=1000").get("registered_models", [])
    champions = [m["name"] for m in models if any(a["alias"] == "champion" for a in m.get("aliases", []))]
    if not champions:
        raise Missing("no registered model has the alias @champion: run `make run` to its end (promotion is its "
                      "last stage)")
    name = "fmlm" if "fmlm" in champions else champions[0]
    return {"mlflow-run": f"{url}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}",
            "mlflow-registry": f"{url}/#/models/{name}"}


def prefect_pages(url: str) -> dict[str, str]:
    """The Prefect pages to shoot: ``prefect-run-form`` (a deployment's custom run) and ``prefect-flow-run``."""
    api = f"{url}/api"
    deployments = call(f"{api}/deployments/filter", {"limit": 200})
    flows = {f["id"]: f["name"] for f in call(f"{api}/flows/filter", {"limit": 200})}
    deployment = next((d for d in deployments if flows.get(d["flow_id"]) == "train_flm"), deployments[0])
    runs = call(f"{api}/flow_runs/filter", {"limit": 50, "sort": "START_TIME_DESC",
                                            "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}})
    counted = [(call(f"{api}/task_runs/count", {"flow_runs": {"id": {"any_": [r["id"]]}}}), r["id"]) for r in runs]
    best = max((n for n, _ in counted), default=0)
    if best == 0:
        raise Missing(f"no finished Prefect flow run with tasks in the server's database at {url}: run `make run` "
                      f"first")
    flow_run = next(run_id for n, run_id in counted if n == best)  # the newest among those with the most tasks
    return {"prefect-run-form": f"{url}/deployments/deployment/{deployment['id']}/run",
            "prefect-flow-run": f"{url}/runs/flow-run/{flow_run}"}


def shoot(browser: str, url: str, png: Path, budget_ms: int, size: str) -> None:
    """One screenshot of ``url`` into ``png`` by headless Chromium with a fresh profile and ``HOME``."""
    with tempfile.TemporaryDirectory(prefix="flm-chromium-") as home:
        png.unlink(missing_ok=True)
        command = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={home}/profile", f"--window-size={size}",
                   f"--virtual-time-budget={budget_ms}", f"--screenshot={png}", url]
        env = os.environ | {"HOME": home, "XDG_CONFIG_HOME": f"{home}/.config", "XDG_CACHE_HOME": f"{home}/.cache"}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        if not png.is_file() or png.stat().st_size == 0:
            raise RuntimeError(f"chromium wrote no screenshot of {url} (status {done.returncode}): "
                               f"{done.stderr.strip().splitlines()[-1:]}")


def main(argv: Sequence[str] | None = None) -> int:
    """Check the browser and the state, start both UIs, shoot the four pages, stop the UIs."""
    parser = argparse.ArgumentParser(prog="tools/screenshots.py", description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=".", help="project directory whose .state is shown (default .)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "img"), help="folder for the PNGs (docs/img)")
    parser.add_argument("--budget-ms", type=int, default=20000, help="Chromium's virtual time per page")
    parser.add_argument("--window-size", default="1600,1000")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        if browser is None:
            raise Missing("no chromium on PATH (Debian: apt-get install chromium)")
        for store in (root / ".state" / "mlflow" / "mlflow.db", root / ".state" / "prefect" / "prefect.db"):
            if not store.is_file():
                raise Missing(f"no {store}: run `make run` first (the screenshots show its state)")
    except Missing as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="flm-screenshots-"))
    mlflow_url, prefect_url = (f"http://127.0.0.1:{free_port()}" for _ in range(2))
    servers = [start("pipelines.mlflow_ui", root, int(mlflow_url.rsplit(":", 1)[1]), logs / "mlflow.log"),
               start("pipelines.serve", root, int(prefect_url.rsplit(":", 1)[1]), logs / "prefect.log")]
    try:
        wait_until(lambda: _ok(f"{mlflow_url}/health"), "MLflow UI", servers[0])
        wait_until(lambda: call(f"{prefect_url}/api/deployments/filter", {"limit": 1}), "Prefect deployments",
                   servers[1])
        pages = mlflow_pages(mlflow_url) | prefect_pages(prefect_url)
        for name, url in pages.items():
            shoot(browser, url, out / f"{name}.png", args.budget_ms, args.window_size)
            print(f"{out / f'{name}.png'}  <- {url}", flush=True)
    except Missing as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as err:  # TimeoutError and urllib's HTTP errors are OSErrors
        tails = {log.name: log.read_text(errors="replace").strip().splitlines() for log in sorted(logs.glob("*.log"))}
        last = " | ".join(f"{name}: {lines[-1]}" for name, lines in tails.items() if lines) or "none"
        print(f"error: {err} (server logs in {logs}; their last lines: {last})", file=sys.stderr)
        return 1
    finally:
        for server in servers:
            stop(server)
    shutil.rmtree(logs, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
