"""The local MLflow UI: ``mlflow server`` on 127.0.0.1 over the project's store, telemetry off, state kept in.

``python -m pipelines.mlflow_ui`` (``make mlflow``) serves the store the pipeline writes
(``sqlite:///<root>/.state/mlflow/mlflow.db``; each experiment keeps the artifact location it was
created with, ``<root>/.state/mlflow/artifacts/<experiment>``) at http://127.0.0.1:5000 until
Ctrl-C or SIGTERM, which stop the server and its workers. The server process gets

* MLflow's telemetry switches off (``MLFLOW_DISABLE_TELEMETRY=true``, ``DO_NOT_TRACK=true``; without
  them the UI reports every page load and writes ``~/.config/mlflow/telemetry.json``);
* ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`` (no job runner: 500 MB instead of 2 GB);
* ``HOME``, the XDG folders and ``TMPDIR`` under ``<root>/.state/home``, its working directory and
  its artifact destination (for experiments created in the UI) under ``<root>/.state/mlflow``, so
  nothing is written outside the project.

A missing store is one line and exit status 2 (run ``make run`` first), as is a port in use. It is
bound to 127.0.0.1 only, and is not run inside ``tools/offline``: your browser must reach it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.serve import wait_healthy

__all__ = ["HOST", "check_port", "main", "server_command", "server_env", "start", "stop"]

HOST = "127.0.0.1"
"""The only interface the UI listens on."""


def server_env(state: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: ``base`` (default ``os.environ``) with telemetry off and every home under ``state``.

    ``state`` is the project's ``.state`` folder (absolute); the folders named here are created.
    """
    from flm.environment import TELEMETRY_OFF

    home = state / "home"
    folders = {
        "HOME": home,
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_CACHE_HOME": home / ".cache",
        "XDG_DATA_HOME": home / ".local" / "share",
        "XDG_STATE_HOME": home / ".local" / "state",
        "TMPDIR": state / "tmp",
    }
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ if base is None else base)
    env.update({key: str(value) for key, value in folders.items()})
    env.update(TELEMETRY_OFF)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    env.pop("MLFLOW_TRACKING_URI", None)  # the server reads the store given on its command line only
    return env


def server_command(store: Path, artifacts: Path, port: int) -> list[str]:
    """``mlflow server`` on ``HOST``:``port`` over the sqlite ``store``; one worker; UI-made artifacts in ``artifacts``.

    Each experiment the pipeline made keeps its own artifact location (a ``file://`` folder under ``.state``).
    """
    mlflow = Path(sys.executable).with_name("mlflow")
    return [
        str(mlflow), "server", "--host", HOST, "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{store}", "--artifacts-destination", artifacts.as_uri(),
    ]


def check_port(port: int) -> None:
    """Raise :class:`flm.errors.UsageError` unless ``port`` is a valid TCP port free on ``HOST``."""
    from flm.errors import UsageError

    if not 0 < port < 65536:
        raise UsageError(f"--port {port}: not a TCP port (1-65535)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError as err:
            raise UsageError(f"--port {port}: {HOST}:{port} is in use ({err.strerror}); set MLFLOW_PORT "
                             f"(make mlflow MLFLOW_PORT=5001) or --port") from None


def _die_with_parent() -> None:
    """In the server's process, before exec: SIGTERM when the launching process dies (Linux ``PR_SET_PDEATHSIG``).

    So even a ``kill -9`` of ``make mlflow`` leaves no server behind. A no-op where ``prctl`` is missing.
    """
    import ctypes

    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def start(root: Path, port: int, log_file: Path) -> subprocess.Popen:
    """Start the MLflow server over ``<root>/.state/mlflow/mlflow.db``; its output goes to ``log_file``.

    The server runs in its own session (process group) so :func:`stop` ends its workers with it, and
    is sent SIGTERM if this process dies first.

    Raises:
        flm.errors.UsageError: no store (nothing tracked yet), or ``port`` not free.
    """
    from flm.errors import UsageError

    state = root / ".state"
    store = state / "mlflow" / "mlflow.db"
    if not store.is_file():
        raise UsageError(f"no MLflow store at {store}: nothing was tracked yet (run `make run` first)")
    check_port(port)
    artifacts = state / "mlflow" / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        return subprocess.Popen(server_command(store, artifacts, port), stdout=log, stderr=subprocess.STDOUT,
                                env=server_env(state), cwd=state / "mlflow", start_new_session=True,
                                preexec_fn=_die_with_parent)


def stop(process: subprocess.Popen, timeout: float = 20.0) -> int:
    """SIGTERM to the server's process group, SIGKILL after ``timeout`` seconds; return its exit status."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM ends serving like Ctrl-C."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Start the UI, print its URL, serve until Ctrl-C/SIGTERM; exit status 2 with one line on a usage error."""
    from flm.errors import OneLineParser, UsageError

    parser = OneLineParser(prog="python -m pipelines.mlflow_ui", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    parser.add_argument("--root", default=".", help="project directory whose .state/mlflow store is served")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    if not root.is_dir():
        print(f"error: --root {args.root}: no such project directory", file=sys.stderr)
        return 2
    log_file = root / ".state" / "mlflow" / "server.log"
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server = start(root, args.port, log_file)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    url = f"http://{HOST}:{args.port}"
    try:
        wait_healthy(url, process=server, name="MLflow server")
        print(f"MLflow UI: {url}  (store: {root / '.state' / 'mlflow' / 'mlflow.db'}; server log: {log_file})",
              flush=True)
        status = server.wait()
        print(f"error: the MLflow server exited with status {status} (see {log_file})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    except (RuntimeError, TimeoutError) as err:
        print(f"error: {err} (see {log_file})", file=sys.stderr)
        return 1
    finally:
        stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
