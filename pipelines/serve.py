"""The local Prefect UI: a Prefect server on 127.0.0.1 and a deployment of every flow, served.

``python -m pipelines.serve`` (``make ui``) starts ``prefect server start --host 127.0.0.1
--analytics-off`` with ``PREFECT_HOME`` under ``.state/prefect``, waits for ``/api/health``, then
serves one deployment per flow, named after it: ``train_flm/train_flm``, ``distill_fmlm/distill_fmlm``,
``train_ar/train_ar``, ``train_mdlm/train_mdlm``, ``evaluate/evaluate``, ``promote/promote`` and
``pipeline/pipeline``, until interrupted (the server is stopped with it). Runs that ``dvc repro``
starts through ``PREFECT_API_URL`` show under the same flows, named ``<stage>-<profile>``.

A run starts from ``params.yaml`` (:mod:`pipelines.overrides`): each stage deployment's default
``params`` is the current ``params.yaml`` tree, resolved for its profile, so the custom-run form shows
the values ``dvc repro`` would use; a user edits a field there, or leaves it and sets ``overrides``
(dotted keys, ``{"train.steps": 100}``). The deployments are re-served whenever ``params.yaml``
changes (serving runs in a child process that is restarted then). A stage run with values other
than ``params.yaml``'s writes its outputs under ``.state/experiments/``, never over the DVC outputs;
the ``pipeline`` deployment runs the whole pipeline as a DVC experiment (``dvc exp run --temp -S``).
Open http://127.0.0.1:4200, pick a deployment, "Run" with custom parameters; or from a shell::

    PREFECT_API_URL=http://127.0.0.1:4200/api prefect deployment run train_flm/train_flm \\
        -p workers=2 -p 'overrides={"train.steps": 100}' --watch
    PREFECT_API_URL=http://127.0.0.1:4200/api prefect deployment run pipeline/pipeline \\
        -p 'overrides={"profile": "smoke"}' --watch

``--no-server`` serves against an existing ``PREFECT_API_URL`` (e.g. a shared Prefect server);
``--no-watch`` serves in this process without following ``params.yaml``.
For a real work pool instead of this process, see ``infra/prefect/prefect.yaml``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["default_params", "deployments", "main", "start_server", "supervise", "wait_healthy"]


def wait_healthy(api_url: str, timeout: float = 120.0, process: subprocess.Popen | None = None,
                 name: str = "Prefect server") -> None:
    """Poll ``<api_url>/health`` until it answers 200; ``RuntimeError`` if ``process`` (the ``name`` server)
    exits first, ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the {name} exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no healthy {name} at {api_url} after {timeout:.0f} s")


def start_server(port: int, state: Path, log_file: Path) -> subprocess.Popen:
    """``prefect server start`` on 127.0.0.1:``port`` (analytics off), its output in ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    prefect = Path(sys.executable).with_name("prefect")
    command = [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off"]
    env = os.environ | {"PREFECT_HOME": str(state / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    with log_file.open("ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def default_params(root: str | Path) -> dict[str, Any]:
    """``<root>/params.yaml``'s tree for its own profile, as the deployments' forms show it (JSON values)."""
    from flm.config import load_params

    return load_params(Path(root) / "params.yaml").model_dump(mode="json")


def deployments(root: str) -> list[Any]:
    """A deployment ``<flow>/<flow>`` of every flow: ``root`` and ``params.yaml``'s current tree as defaults."""
    from pipelines.flows import distill_fmlm, evaluate, pipeline, promote, train_ar, train_flm, train_mdlm

    stage = {"root": root, "params": default_params(root), "overrides": {}}
    flows = [(train_flm, ["train"]), (distill_fmlm, ["distill"]), (train_ar, ["train", "baseline"]),
             (train_mdlm, ["train", "baseline"]), (evaluate, ["eval"])]
    return [
        *(f.to_deployment(name=f.name, parameters=stage, tags=["flm", *tags]) for f, tags in flows),
        promote.to_deployment(name=promote.name, parameters={"root": root}, tags=["flm", "registry"]),
        pipeline.to_deployment(name=pipeline.name, parameters={"root": root, "overrides": {}},
                               tags=["flm", "pipeline", "dvc"]),
    ]


def _serve_here(root: Path) -> None:
    """Serve the deployments in this process until interrupted."""
    from prefect import serve

    serve(*deployments(str(root)))


def _stop(process: subprocess.Popen, timeout: float = 30) -> None:
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def supervise(root: Path, poll: float = 2.0) -> int:
    """Serve in a child process; restart it (re-serving the deployments) whenever ``params.yaml`` changes.

    Returns the child's exit status once it exits on its own (a broken ``params.yaml`` is waited out: the
    child is restarted on the next change).
    """
    params_file = root / "params.yaml"
    command = [sys.executable, "-m", "pipelines.serve", "--no-server", "--no-watch", "--root", str(root)]
    seen = _mtime(params_file)
    child = subprocess.Popen(command)
    try:
        while True:
            time.sleep(poll)
            now = _mtime(params_file)
            if now != seen:
                seen = now
                print(f"{params_file} changed: re-serving the deployments", flush=True)
                _stop(child)
                child = subprocess.Popen(command)
            elif child.poll() is not None:
                print(f"serving exited with status {child.returncode}; waiting for {params_file} to change",
                      flush=True)
                while _mtime(params_file) == seen:
                    time.sleep(poll)
    finally:
        if child.poll() is None:
            _stop(child)


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM ends serving like Ctrl-C, so the server is stopped too."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Start the server (unless ``--no-server``) and serve the deployments until interrupted."""
    from flm.environment import hermetic

    parser = argparse.ArgumentParser(prog="python -m pipelines.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--root", default=".", help="project directory the flows run in")
    parser.add_argument("--no-server", action="store_true", help="serve against an existing PREFECT_API_URL")
    parser.add_argument("--no-watch", action="store_true", help="serve in this process; do not follow params.yaml")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    state = hermetic(root / ".state")
    server = None
    signal.signal(signal.SIGTERM, _interrupt)
    if not args.no_server:
        api_url = f"http://127.0.0.1:{args.port}/api"
        os.environ["PREFECT_API_URL"] = api_url
        server = start_server(args.port, state, state / "prefect" / "server.log")
        try:
            wait_healthy(api_url, process=server)
        except BaseException:
            server.terminate()
            raise
        print(f"Prefect UI: http://127.0.0.1:{args.port}  (server log: {state / 'prefect' / 'server.log'})", flush=True)
    try:
        if args.no_watch:
            _serve_here(root)
        else:
            supervise(root)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            _stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
