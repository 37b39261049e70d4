"""Experiment tracking: an MLflow tracker (rank 0) and a no-op tracker with the same interface.

The training loop only knows the :class:`Tracker` protocol. :func:`make_tracker` builds the
MLflow one; it switches MLflow's telemetry off in the environment *before* importing mlflow
(nothing happens at import time of this module). Default store: a sqlite database at
``<state>/mlflow/mlflow.db`` with artifacts under ``<state>/mlflow/artifacts``; the environment
variable ``MLFLOW_TRACKING_URI`` (or the ``tracking_uri`` argument) points at a server instead;
:func:`check_reachable` makes an unreachable server an error in seconds, not minutes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "EXPERIMENT_TAGS", "MLflowTracker", "NullTracker", "Tracker", "check_reachable", "check_store",
    "default_tracking_uri", "flatten", "make_tracker",
]

TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
"""Tags of every experiment the project creates (or finds without them): MLflow's UI opens a
``custom_model_development`` experiment as model training (runs, charts, the model registry); an
experiment without the tag opens in its GenAI view (traces)."""


@runtime_checkable
class Tracker(Protocol):
    """What the pipeline tells a tracker; every method returns nothing."""

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_text(self, text: str, name: str) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Does nothing (non-zero ranks, tests, runs without tracking)."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        """Ignore ``params``."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Ignore ``metrics``."""

    def log_text(self, text: str, name: str) -> None:
        """Ignore ``text``."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Ignore ``path``."""

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        """Ignore ``folder``."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """Ignore ``tags``."""

    def close(self, status: str = "FINISHED") -> None:
        """Nothing to close."""

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, kind: type | None, *_: Any) -> None:
        self.close("FAILED" if kind else "FINISHED")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and tuples become strings)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = str(list(value)) if isinstance(value, list | tuple) else value
    return flat


class MLflowTracker:
    """One MLflow run, driven through ``MlflowClient`` (no global active-run state).

    Build it with :func:`make_tracker`; ``run_id`` names the run.
    """

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self._closed = False

    def log_params(self, params: dict[str, Any]) -> None:
        """Log a (nested) parameter tree flattened to dotted keys."""
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log scalar metrics at ``step``."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=items)

    def log_text(self, text: str, name: str) -> None:
        """Store ``text`` as the artifact ``name`` (e.g. ``samples/step00001000-nfe1.txt``)."""
        self.client.log_text(self.run_id, text, name)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy one file into the run's artifacts."""
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        """Copy a directory (e.g. a checkpoint) into the run's artifacts."""
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set run tags."""
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def close(self, status: str = "FINISHED") -> None:
        """End the run (``FINISHED``, ``FAILED`` or ``KILLED``); idempotent."""
        if not self._closed:
            self.client.set_terminated(self.run_id, status)
            self._closed = True

    def __enter__(self) -> MLflowTracker:
        return self

    def __exit__(self, kind: type | None, *_: Any) -> None:
        self.close("FAILED" if kind else "FINISHED")


def default_tracking_uri(state_dir: str | Path = ".state") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<state>/mlflow/mlflow.db`` (absolute)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(state_dir) / 'mlflow' / 'mlflow.db').resolve()}"


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """Fail in seconds when ``uri`` is an MLflow server that does not answer; local stores pass.

    MLflow itself retries a dead server for minutes and then reports the model or run as missing;
    this probe (``GET <uri>/health``, ``timeout`` seconds) runs first. Any HTTP answer except a
    gateway's 502/503/504 counts as reachable (a server asking for credentials is there).

    Raises:
        flm.errors.UnreachableError: no answer; the message names the URI.
    """
    import urllib.error
    import urllib.request

    from flm.errors import UnreachableError

    if not uri.startswith(("http://", "https://")):
        return
    url = f"{uri.rstrip('/')}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read(256)
    except urllib.error.HTTPError as err:
        if err.code in (502, 503, 504):
            raise UnreachableError(f"MLflow tracking server {uri} is unreachable (HTTP {err.code} from {url})") \
                from None
    except (OSError, ValueError) as err:  # URLError, timeouts and refused connections are OSErrors
        reason = getattr(err, "reason", None) or err
        raise UnreachableError(f"MLflow tracking server {uri} is unreachable (GET {url}: {reason})") from None


def check_store(uri: str) -> None:
    """Before reading a store: a server must answer (:func:`check_reachable`), a sqlite database must exist.

    Reading never creates a store: MLflow would create an empty sqlite database (and tables) at
    the path of a mistyped URI or of a directory that is not the project.

    Raises:
        flm.errors.UnreachableError: a server that does not answer.
        flm.errors.UsageError: no such sqlite database; the message names its path.
    """
    from flm.errors import UsageError

    check_reachable(uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise UsageError(f"no MLflow store at {uri.removeprefix('sqlite:///')} (no such database: nothing was "
                         f"tracked there)")


def make_tracker(
    experiment: str,
    run_name: str | None = None,
    state_dir: str | Path = ".state",
    tracking_uri: str | None = None,
    tags: dict[str, str] | None = None,
) -> MLflowTracker:
    """Start an MLflow run in ``experiment`` and return its tracker.

    With the default sqlite store, the experiment is created with the explicit artifact location
    ``<state>/mlflow/artifacts/<experiment>`` (MLflow would otherwise write ``./mlruns``). The experiment
    carries :data:`EXPERIMENT_TAGS` (set on an existing experiment that lacks them).
    """
    for key, value in TELEMETRY_OFF.items():
        os.environ[key] = value
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or default_tracking_uri(state_dir)
    check_reachable(uri)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
        for key, value in EXPERIMENT_TAGS.items():
            if found.tags.get(key) != value:
                client.set_experiment_tag(experiment_id, key, value)
    elif uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        artifacts = (Path(state_dir) / "mlflow" / "artifacts" / experiment).resolve()
        experiment_id = client.create_experiment(experiment, artifact_location=artifacts.as_uri(), tags=EXPERIMENT_TAGS)
    else:
        experiment_id = client.create_experiment(experiment, tags=EXPERIMENT_TAGS)  # a server chooses its artifacts
    run = client.create_run(experiment_id, run_name=run_name, tags=tags or {})
    return MLflowTracker(client, run.info.run_id)
