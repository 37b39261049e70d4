"""The local Prefect UI: a Prefect server on 127.0.0.1 and a deployment of every flow, served.

``python -m pipelines.serve`` (``make ui``) starts ``prefect server start --host 127.0.0.1
--analytics-off`` with ``PREFECT_HOME`` under ``.state/prefect``, waits for ``/api/health``, then
serves the deployments ``train_flm/local``, ``distill_fmlm/local``, ``train_ar/local``,
``train_mdlm/local``, ``evaluate/local`` and ``promote/local`` in this process until interrupted (the server is
stopped with it). Open http://127.0.0.1:4200, pick a deployment, "Run" with custom parameters; or
from a shell::

    PREFECT_API_URL=http://127.0.0.1:4200/api prefect deployment run train_flm/local \\
        -p workers=2 -p 'params={"train": {"steps": 100}}' --watch

``--no-server`` serves against an existing ``PREFECT_API_URL`` (e.g. a shared Prefect server).
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

__all__ = ["deployments", "main", "start_server", "wait_healthy"]


def wait_healthy(api_url: str, timeout: float = 120.0, process: subprocess.Popen | None = None) -> None:
    """Poll ``<api_url>/health`` until it answers 200; raise ``TimeoutError`` (or if ``process`` died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no healthy Prefect API at {api_url} after {timeout:.0f} s")


def start_server(port: int, state: Path, log_file: Path) -> subprocess.Popen:
    """``prefect server start`` on 127.0.0.1:``port`` (analytics off), its output in ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    prefect = Path(sys.executable).with_name("prefect")
    command = [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off"]
    env = os.environ | {"PREFECT_HOME": str(state / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    with log_file.open("ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def deployments(root: str) -> list[Any]:
    """A deployment ``<flow>/local`` of every flow, with ``root`` as its default project directory."""
    from pipelines.flows import distill_fmlm, evaluate, promote, train_ar, train_flm, train_mdlm

    return [
        train_flm.to_deployment(name="local", parameters={"root": root}, tags=["flm", "train"]),
        distill_fmlm.to_deployment(name="local", parameters={"root": root}, tags=["flm", "distill"]),
        train_ar.to_deployment(name="local", parameters={"root": root}, tags=["flm", "train", "baseline"]),
        train_mdlm.to_deployment(name="local", parameters={"root": root}, tags=["flm", "train", "baseline"]),
        evaluate.to_deployment(name="local", parameters={"root": root}, tags=["flm", "eval"]),
        promote.to_deployment(name="local", parameters={"root": root}, tags=["flm", "registry"]),
    ]


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
        from prefect import serve

        serve(*deployments(str(root)))
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
