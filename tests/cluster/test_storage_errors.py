"""A storage that cannot work is one line naming ``cluster.storage_path``, in seconds, before Ray or training start."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flm.config import Params
from flm.distributed import RayJobSpec, check_storage, run_stage, stable_run_name
from flm.errors import UnreachableError, UsageError
from tests.cluster.conftest import S3Server, free_port


def never_called(*args: object, **kwargs: object) -> None:
    raise AssertionError("training started")


def refused(spec: RayJobSpec, error: type[Exception], match: str) -> str:
    """``run_stage`` raises ``error`` within seconds, without starting Ray; returns the message."""
    import ray

    start = time.monotonic()
    with pytest.raises(error, match=match) as info:
        run_stage(never_called, Params(), spec, state_dir="/nonexistent-state")
    assert time.monotonic() - start < 10 and not ray.is_initialized()
    message = str(info.value)
    assert "\n" not in message and "cluster.storage_path" in message
    return message


def test_a_bucket_that_does_not_exist(s3_server: S3Server) -> None:
    spec = RayJobSpec(name="x", storage_path="s3://no-such-bucket/flm", storage_endpoint=s3_server.endpoint)
    assert "bucket 'no-such-bucket' does not exist" in refused(spec, UsageError, "no-such-bucket")


def test_an_endpoint_nothing_listens_on(s3_server: S3Server, s3_bucket: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    spec = RayJobSpec(name="x", storage_path=f"s3://{s3_bucket}/flm", storage_endpoint=dead)
    message = refused(spec, UnreachableError, "does not answer")
    assert f"cluster.storage_endpoint {dead}" in message


@pytest.mark.parametrize("where", ["file", "proc"])
def test_a_path_that_cannot_be_written(where: str, tmp_path: Path) -> None:
    """Two paths root cannot write either (permission bits would not stop root): below a file, and in /proc."""
    (tmp_path / "a-file").write_text("not a directory")
    path = str(tmp_path / "a-file" / "ray") if where == "file" else "/proc/flm-storage"
    message = refused(RayJobSpec(name="x", storage_path=path), UsageError, "not a writable directory")
    assert path in message


def test_a_working_storage_keeps_no_probe(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    check_storage(f"s3://{s3_bucket}/flm", s3_server.endpoint)
    listing = s3_server.client().list_objects_v2(Bucket=s3_bucket).get("Contents", [])
    assert [obj["Key"] for obj in listing] in ([], ["flm/"])          # pyarrow may leave the prefix's marker
    check_storage(str(tmp_path / "new" / "storage"))
    assert list((tmp_path / "new" / "storage").iterdir()) == []


@pytest.mark.parametrize(("cluster", "names"), [
    ({"storage_path": "ftp://host/flm"}, "unknown scheme 'ftp'"),
    ({"storage_path": "s3:///flm"}, "no bucket"),
    ({"storage_path": "s3://b/flm", "storage_endpoint": "127.0.0.1:9000"}, "cluster.storage_endpoint"),
    ({"storage_path": "/shared/flm", "storage_endpoint": "http://127.0.0.1:9000"}, "not an s3:// URI"),
])
def test_settings_are_checked_when_loaded(cluster: dict, names: str) -> None:
    with pytest.raises(ValueError, match=names):
        Params.model_validate({"cluster": cluster})


def test_the_cluster_section_sets_the_storage() -> None:
    cluster = Params.model_validate({"cluster": {"storage_path": "s3://b/flm",
                                                 "storage_endpoint": "http://127.0.0.1:9000"}}).cluster
    spec = RayJobSpec.from_cluster(cluster, "run", "/local/default")
    assert (spec.storage_path, spec.storage_endpoint) == ("s3://b/flm", "http://127.0.0.1:9000")
    assert RayJobSpec.from_cluster(Params().cluster, "run", "/local/default").storage_path == "/local/default"


def test_stable_run_names() -> None:
    a = stable_run_name("train_flm", {"train": {"steps": 10}, "deps": {"data/tokens": "abc"}})
    assert a == stable_run_name("train_flm", {"deps": {"data/tokens": "abc"}, "train": {"steps": 10}})
    assert a.startswith("train_flm-") and len(a) == len("train_flm-") + 16
    assert a != stable_run_name("train_flm", {"train": {"steps": 11}, "deps": {"data/tokens": "abc"}})
    assert a != stable_run_name("train_ar", {"train": {"steps": 10}, "deps": {"data/tokens": "abc"}})


def test_the_stage_command_refuses_before_anything_starts(s3_server: S3Server, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    """``python -m pipelines.run train_flm`` with a bucket that does not exist: exit 2, one line naming the setting,
    and no tool state (no ``.state``, no Prefect or MLflow store) in the project."""
    import yaml

    from pipelines.run import main

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"cluster": {
        "workers": 1, "cpus_per_worker": 1, "storage_path": "s3://no-such-bucket/flm",
        "storage_endpoint": s3_server.endpoint}}))
    assert main(["train_flm", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cluster.storage_path s3://no-such-bucket/flm" in err, err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]
