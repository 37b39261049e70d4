"""Ray Train's checkpoints on the loopback S3 server: a resubmitted run and a lost node resume from the storage.

Here, beside the other Ray tests, because every Ray in one process must share its authentication token (Ray
caches the first one it reads): these share the session's ``state_root`` and so its token.

Both compare with one uninterrupted two-worker run (an embedded Ray, local storage): the final EMA weights
must be equal bit for bit, as in the local resume test. Two gloo workers everywhere; 12 steps, a checkpoint
every 4.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import cloudpickle
import pytest
import torch
from safetensors.torch import load_file

from flm.distributed import RayJobSpec, run_stage
from pipelines.train_stages import StagePaths, train_flm
from tests.cluster.conftest import S3Server, s3_bucket, s3_server  # noqa: F401  (fixtures)
from tests.distributed import helpers
from tests.distributed.conftest import tiny_params

cloudpickle.register_pickle_by_value(helpers)

PARAMS = {"train": {"steps": 12, "ckpt_every": 4, "keep_last": 1, "log_every": 2, "sample_n": 0, "lr": 1e-2}}


def stage_for(tiny_data: dict, out: Path) -> functools.partial:
    """``train_flm`` with absolute paths, as the flows build it."""
    paths = StagePaths(tokens=tiny_data["tokens"], tokenizer=tiny_data["tokenizer"], models=out / "models",
                       metrics=out / "metrics", state=out / "state")
    return functools.partial(train_flm, paths=paths, progress=False)


def ema(outcome: object, dest: Path) -> dict[str, torch.Tensor]:
    """The EMA weights of a run's final checkpoint, downloaded from its storage."""
    outcome.checkpoint.to_directory(str(dest))
    return load_file(dest / "ema.safetensors")


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(state_root: Path, tiny_data: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One uninterrupted two-worker run: its final EMA weights."""
    out = tmp_path_factory.mktemp("reference")
    spec = RayJobSpec(name="reference", storage_path=str(out / "ray"), workers=2, cpus_per_worker=1)
    outcome = run_stage(stage_for(tiny_data, out), tiny_params(**PARAMS), spec, state_dir=state_root / "state")
    assert "resumed_from" not in outcome.metrics and outcome.metrics["step"] == 12   # None is not reported
    return ema(outcome, out / "final")


def keys(s3: S3Server, bucket: str) -> list[str]:
    return [obj["Key"] for obj in s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_a_resubmitted_run_resumes_from_s3_without_its_local_cache(
    reference: dict, s3_server: S3Server, s3_bucket: str, state_root: Path, tiny_data: dict,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The first submission dies at step 6 (no retries); the step-4 checkpoint is in the bucket. The local run
    directory is deleted; the same run name submitted again resumes from the bucket at step 4."""
    from ray.train import TrainingFailedError

    params = tiny_params(**PARAMS)
    spec = RayJobSpec(name="resubmit", storage_path=f"s3://{s3_bucket}/runs", storage_endpoint=s3_server.endpoint,
                      workers=2, cpus_per_worker=1, max_failures=0)
    with pytest.raises(TrainingFailedError, match="injected failure at step 6"):
        run_stage(stage_for(tiny_data, tmp_path), params, spec, state_dir=state_root / "state",
                  tracker_factory=helpers.FailEveryAttempt(str(tmp_path / "attempts"), fail_at=6, limit=1))
    stored = keys(s3_server, s3_bucket)
    assert any(k.startswith("runs/resubmit/ckpt-00000004-") and k.endswith("/ema.safetensors") for k in stored)
    assert not any("ckpt-00000008" in k for k in stored)
    shutil.rmtree(tmp_path / "state" / "runs")                                 # the local cache is gone

    outcome = run_stage(stage_for(tiny_data, tmp_path), params, spec, state_dir=state_root / "state")
    assert outcome.metrics["resumed_from"] == 4 and outcome.metrics["step"] == 12
    assert outcome.path.startswith(f"{s3_bucket}/runs/resubmit")
    assert any(k.startswith("runs/resubmit/ckpt-00000008-") for k in keys(s3_server, s3_bucket))
    assert_same(ema(outcome, tmp_path / "final"), reference)


def test_a_node_dies_and_the_group_resumes_on_other_nodes(
    reference: dict, s3_server: S3Server, s3_bucket: str, state_root: Path, tiny_data: dict,  # noqa: F811
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ray cluster of a head (no CPUs: it runs the driver and Ray Train's controller) and 1-CPU nodes, so
    the two workers sit one per node. Each node has its own temporary directory and its own local run cache
    (``FLM_RUN_CACHE``, set in the environment each node's raylet, hence its workers, start with). A third
    1-CPU node is the spare. Once rank 0 is past the step-4 checkpoint its node is removed; Ray restarts the
    group on the two others, and the new rank 0 resumes from the checkpoint in the bucket."""
    import ray
    from ray.cluster_utils import Cluster

    from flm.environment import tool_home

    root = Path(tempfile.mkdtemp(prefix="flmc-", dir="/tmp"))              # short: unix socket paths
    monkeypatch.setenv("HOME", str(tool_home(state_root / "state")))       # Ray's token and bootstrap file
    (Path(os.environ["RAY_TMPDIR"]) / "ray").mkdir(parents=True, exist_ok=True)  # ray_current_cluster goes there
    caches: dict[str, Path] = {}

    def add_node(cluster: Cluster, name: str, **args: object) -> object:
        caches[name] = root / name / "runs"
        saved = os.environ.get("FLM_RUN_CACHE")
        os.environ["FLM_RUN_CACHE"] = str(caches[name])
        try:
            return cluster.add_node(temp_dir=str(root / name / "tmp"), object_store_memory=80 * 1024**2,
                                    node_ip_address="127.0.0.1", include_dashboard=False, **args)
        finally:
            os.environ.pop("FLM_RUN_CACHE") if saved is None else os.environ.update(FLM_RUN_CACHE=saved)

    cluster = Cluster()
    try:
        add_node(cluster, "head", num_cpus=0)
        nodes = {name: add_node(cluster, name, num_cpus=1) for name in ("a", "b", "c")}  # a spare for the restart
        marker = tmp_path / "rank0-node"
        killed: dict[str, object] = {}

        def kill_rank0_node() -> None:
            deadline = time.monotonic() + 240
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            if not marker.exists():
                return
            node_id, step = marker.read_text().split()
            name = next((n for n, node in nodes.items() if node.node_id == node_id), None)
            killed.update(name=name, step=int(step), node_id=node_id)
            if name is None:
                return
            cluster.remove_node(nodes[name], allow_graceful=False)     # (adding a node from this thread hangs)

        started = time.monotonic()
        watcher = threading.Thread(target=kill_rank0_node, daemon=True)
        watcher.start()
        spec = RayJobSpec(name="node-dies", storage_path=f"s3://{s3_bucket}/runs",
                          storage_endpoint=s3_server.endpoint, workers=2, cpus_per_worker=1, max_failures=2,
                          address=cluster.address)
        outcome = run_stage(stage_for(tiny_data, tmp_path), tiny_params(**PARAMS), spec, state_dir=root / "state",
                            tracker_factory=helpers.MarkNode(str(marker), after=4))
        watcher.join(timeout=5)
        print(f"node {killed['name']} (rank 0) killed after step {killed['step']}, resumed from "
              f"{outcome.metrics['resumed_from']}; run {time.monotonic() - started:.0f} s")
        assert killed["name"] is not None and killed["step"] > 4              # killed past the step-4 checkpoint
        assert outcome.metrics["resumed_from"] == 4 and outcome.metrics["step"] == 12
        cached = {name: sorted(p.name for p in caches[name].glob("flm/*/ckpt-*")) for name in nodes}
        assert cached[killed["name"]] == ["ckpt-00000004"]                   # the lost node's copy, never read again
        survivors = sorted(cached[name] for name in nodes if name != killed["name"])
        assert survivors == [["ckpt-00000004"], ["ckpt-00000012"]]           # rank 1 fetched 4; rank 0 went on to 12
        assert_same(ema(outcome, tmp_path / "final"), reference)
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)
