"""Where Ray Train persists results and checkpoints: ``cluster.storage_path`` (+ ``cluster.storage_endpoint``).

The storage is a local or NFS directory, or an object-store URI (``s3://bucket/prefix``, ``gs://...``,
any scheme pyarrow's filesystems resolve). On a cluster of several machines it must be shared: Ray
Train uploads every reported checkpoint there, and a worker group restarted on other nodes, or a
resubmitted job, downloads the newest one from there (the nodes' local run directories are caches).

* :func:`check_storage` proves, before any training, that the storage takes a write, a read and a
  delete (a small probe object), failing in seconds with one line naming the setting.
* :func:`storage_filesystem` gives what ``RunConfig(storage_path=, storage_filesystem=)`` takes: an
  S3-compatible store at ``storage_endpoint`` gets a ``pyarrow.fs.S3FileSystem`` with that endpoint,
  and the path then loses its scheme, as Ray requires (``s3://bucket/p`` -> ``bucket/p``).
* :func:`stable_run_name` names a Ray run after what it computes, so resubmitting the same stage
  continues the same run in the storage.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

from flm.errors import UnreachableError, UsageError, one_line

__all__ = ["OBJECT_SCHEMES", "check_storage", "is_uri", "stable_run_name", "storage_filesystem"]

OBJECT_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs")
"""URI schemes accepted for ``cluster.storage_path`` (only ``s3`` is tested; the others are pyarrow's / fsspec's)."""

_TIMEOUT_S = 5.0
"""Connect and request timeout of the S3 client at an endpoint (a dead endpoint fails in seconds)."""


def is_uri(path: str) -> bool:
    """Whether ``path`` is an object-store URI (``scheme://...``) rather than a local or NFS path."""
    return "://" in path


def storage_problem(path: str | None, endpoint: str | None) -> str | None:
    """Why ``(storage_path, storage_endpoint)`` is malformed (unknown scheme, endpoint without S3), else ``None``."""
    if path is not None:
        if not path.strip():
            return "cluster.storage_path is empty; leave it out for the local default"
        if is_uri(path):
            scheme, _, rest = path.partition("://")
            if scheme not in OBJECT_SCHEMES:
                return (f"cluster.storage_path {path!r}: unknown scheme {scheme!r}; use a local path or one of "
                        f"{', '.join(s + '://' for s in OBJECT_SCHEMES)}")
            if not rest.split("/", 1)[0]:
                return f"cluster.storage_path {path!r}: no bucket after {scheme}://"
    if endpoint is not None:
        if not endpoint.startswith(("http://", "https://")):
            return f"cluster.storage_endpoint {endpoint!r}: must be an http:// or https:// URL"
        if path is None or not path.startswith("s3://"):
            return (f"cluster.storage_endpoint {endpoint!r} is set, but cluster.storage_path {path!r} is not an "
                    "s3:// URI (the endpoint is for S3-compatible stores)")
    return None


def storage_filesystem(path: str, endpoint: str | None = None) -> tuple[str, Any]:
    """``(storage_path, storage_filesystem)`` for Ray's ``RunConfig``.

    Without ``endpoint`` the path is given as is (Ray resolves a URI's filesystem itself) and the
    filesystem is ``None``. With one, an ``S3FileSystem`` at that endpoint (short timeouts, a single
    retry; credentials from the usual ``AWS_*`` environment) and the path without ``s3://``.
    """
    if endpoint is None:
        return path, None
    from pyarrow import fs

    scheme = "https" if endpoint.startswith("https://") else "http"
    filesystem = fs.S3FileSystem(
        endpoint_override=endpoint.split("://", 1)[1].rstrip("/"), scheme=scheme, connect_timeout=_TIMEOUT_S,
        request_timeout=_TIMEOUT_S, retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=1),
    )
    return path.split("://", 1)[1].rstrip("/"), filesystem


def _setting(path: str, endpoint: str | None) -> str:
    """The settings to name in an error message."""
    where = f"cluster.storage_path {path}"
    return f"{where} (cluster.storage_endpoint {endpoint})" if endpoint else where


def check_storage(path: str, endpoint: str | None = None) -> None:
    """Write, read back and delete a probe object under ``path``, before any training starts.

    A local path is created if missing. An object store is reached through pyarrow (the client Ray
    Train uses), at ``endpoint`` when given.

    Raises:
        UsageError: a malformed setting, a bucket that does not exist, a path that cannot be written
            (read-only, a file where a directory is expected); the message names ``cluster.storage_path``.
        UnreachableError: nothing answers at the endpoint (or the store's host); it names both settings.
    """
    problem = storage_problem(path, endpoint)
    if problem:
        raise UsageError(problem)
    if not is_uri(path):
        _check_local(Path(path))
        return
    from pyarrow import fs

    root, filesystem = storage_filesystem(path, endpoint)
    try:
        if filesystem is None:
            filesystem, root = fs.FileSystem.from_uri(path)
        probe = f"{root.rstrip('/')}/.flm-probe-{uuid.uuid4().hex[:12]}"
        with filesystem.open_output_stream(probe) as out:
            out.write(b"probe")
        with filesystem.open_input_stream(probe) as src:
            if src.read() != b"probe":
                raise UsageError(f"{_setting(path, endpoint)}: a probe object read back different bytes")
        filesystem.delete_file(probe)
    except UsageError:
        raise
    except OSError as err:
        message = one_line(err)
        lowered = message.lower()
        if any(s in lowered for s in ("connect", "timed out", "timeout", "resolve", "unreachable", "refused")):
            raise UnreachableError(f"{_setting(path, endpoint)}: the storage does not answer ({message})") from None
        if "nosuchbucket" in lowered.replace(" ", "") or "bucket does not exist" in lowered:
            bucket = path.split("://", 1)[1].split("/", 1)[0]
            raise UsageError(f"cluster.storage_path {path}: bucket {bucket!r} does not exist") from None
        raise UsageError(f"{_setting(path, endpoint)}: cannot write, read and delete a probe object "
                         f"({message})") from None


def _check_local(root: Path) -> None:
    """Create ``root`` and write, read and delete a probe file in it (root ignores permission bits, not a
    read-only mount or a file in the way)."""
    probe = root / f".flm-probe-{uuid.uuid4().hex[:12]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"probe")
        if probe.read_bytes() != b"probe":
            raise UsageError(f"cluster.storage_path {root}: a probe file read back different bytes")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"cluster.storage_path {root}: not a writable directory "
                         f"({err.strerror or one_line(err)})") from None


def stable_run_name(stage: str, parts: dict[str, Any]) -> str:
    """``<stage>-<16 hex>``: a Ray run name fixed by the stage and what it computes.

    ``parts`` holds everything the result depends on (the stage's parameters, the DVC hashes of its
    inputs); equal parts give the same name, so a resubmitted stage finds its run (and newest
    checkpoint) in the storage, and any change gives a new run.
    """
    digest = hashlib.sha256(json.dumps([stage, parts], sort_keys=True, default=str).encode()).hexdigest()
    return f"{stage}-{digest[:16]}"
