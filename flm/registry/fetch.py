"""A logged text model's files from MLflow: download the artifacts, find the checkpoint and tokenizer.

The model of :func:`flm.registry.publish.log_text_model` is a pyfunc directory whose ``MLmodel``
(YAML) names its artifacts ``checkpoint`` (``checkpoint.json`` + ``ema.safetensors``) and
``tokenizer``. Only those files are read, with safetensors and JSON: nothing is unpickled and the
model's code is not run. ``models:/NAME@ALIAS`` is resolved to its version first, so an unknown
name, alias or version is reported as such, and a cache entry is never stale after the alias moves.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = ["ModelFiles", "fetched_model", "resolve_model_uri"]

_REGISTERED = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))$")


@dataclass(frozen=True)
class ModelFiles:
    """Local paths of a logged text model's artifacts."""

    checkpoint: Path
    tokenizer: Path | None


def resolve_model_uri(uri: str, tracking_uri: str | None = None) -> str:
    """``models:/NAME@ALIAS`` -> ``models:/NAME/VERSION``, checked against the registry; other URIs unchanged.

    Raises:
        LookupError: no such registered model, alias or version (the message names the store).
        flm.errors.UsageError: no such sqlite store (reading never creates one).
        flm.errors.UnreachableError: the tracking server does not answer (found in seconds).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from flm.tracking import check_store

    match = _REGISTERED.match(uri)
    store = tracking_uri or mlflow.get_tracking_uri()
    if uri.startswith(("models:/", "runs:/")):
        check_store(store)
    if match is None:
        return uri
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name, alias = match["name"], match["alias"]
    try:
        if alias is not None:
            version = client.get_model_version_by_alias(name, alias).version
        else:
            version = client.get_model_version(name, match["version"]).version
    except MlflowException as err:
        raise LookupError(f"{uri}: not found in the MLflow registry at {store} ({err.message})") from None
    return f"models:/{name}/{version}"


def _download(uri: str, dest: Path, tracking_uri: str | None) -> None:
    """Download the model at ``uri`` so that its ``MLmodel`` lands directly in ``dest``."""
    import shutil

    import mlflow
    from mlflow.exceptions import MlflowException

    match = _REGISTERED.match(uri)
    staging = dest / ".download"
    staging.mkdir(parents=True)
    try:
        if match is not None and match["version"] is not None:  # the version's own artifact location:
            # download_artifacts resolves ``models:/`` through MLflow's *global* registry URI otherwise
            client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            uri = client.get_model_version_download_uri(match["name"], match["version"])
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(staging),
                                                         tracking_uri=tracking_uri))
    except MlflowException as err:
        raise LookupError(f"{uri}: cannot download the model ({err.message})") from None
    for item in list(local.iterdir()):  # a directory URI lands in staging/<its name>
        item.rename(dest / item.name)
    shutil.rmtree(staging)


def _model_files(model_dir: Path, uri: str) -> ModelFiles:
    """Read ``MLmodel`` (YAML) for the ``checkpoint`` and ``tokenizer`` artifacts of a pyfunc directory."""
    spec = model_dir / "MLmodel"
    if not spec.is_file():
        raise ValueError(f"{uri}: not an MLflow model (no MLmodel file)")
    artifacts = yaml.safe_load(spec.read_text(encoding="utf-8")).get("flavors", {}).get(
        "python_function", {}).get("artifacts", {})
    if "checkpoint" not in artifacts:
        raise ValueError(f"{uri}: not an flm text model (no 'checkpoint' artifact in MLmodel)")
    tokenizer = artifacts.get("tokenizer")
    return ModelFiles(model_dir / artifacts["checkpoint"]["path"],
                      model_dir / tokenizer["path"] if tokenizer is not None else None)


@contextmanager
def fetched_model(
    uri: str, tracking_uri: str | None = None, cache_dir: str | Path | None = None
) -> Iterator[ModelFiles]:
    """The files of the model at ``uri``, local for the duration of the block.

    Args:
        uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/model``, ...
        tracking_uri: the MLflow tracking and registry store (default: MLflow's default).
        cache_dir: if given, the model is kept in ``cache_dir/<resolved uri hash>`` and reused;
            otherwise it lives in a temporary directory removed after the block.
    """
    resolved = resolve_model_uri(uri, tracking_uri)
    if cache_dir is None:
        with tempfile.TemporaryDirectory(prefix="flm-fetch-") as tmp:
            _download(resolved, Path(tmp), tracking_uri)
            yield _model_files(Path(tmp), uri)
        return
    from flm.data.atomic import atomic_dir

    key = hashlib.sha256(f"{tracking_uri}\n{resolved}".encode()).hexdigest()[:16]
    entry = Path(cache_dir) / f"{re.sub(r'[^A-Za-z0-9]+', '-', resolved).strip('-')}-{key}"
    if not (entry / "MLmodel").is_file():
        with atomic_dir(entry, "MLmodel") as tmp:
            _download(resolved, tmp, tracking_uri)
    yield _model_files(entry, uri)
