"""The driver dies mid-stage: ``ray job submit`` of ``pipelines.run train_flm`` to a loopback head, storage on the
loopback S3 server; the job is stopped after a periodic checkpoint reached the bucket, then submitted again. The
second submission finds the same Ray run (its name is fixed by the stage, its parameters and inputs) and resumes
from the newest checkpoint in storage, not step 0, and ends with the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from tests.cluster.conftest import S3Server
from tests.distributed.conftest import TINY_LOOP, TINY_MODEL, tiny_data
from tests.distributed.ray_head import BIN, ray_head

__all__ = ["tiny_data"]

STEPS, CKPT_EVERY = 300, 20


def job(address: str, env: dict[str, str], *args: str, timeout: float = 400) -> str:
    done = subprocess.run([str(BIN / "ray"), "job", *args, "--address", address], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def test_a_resubmitted_job_resumes_from_storage(tiny_data: dict, s3_server: S3Server, s3_bucket: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="flmr-", dir="/tmp"))          # short: Ray's socket paths
    try:
        shutil.copytree(tiny_data["tokens"], root / "data" / "tokens")
        shutil.copytree(tiny_data["tokenizer"], root / "data" / "tokenizer")
        train = TINY_LOOP | {"steps": STEPS, "ckpt_every": CKPT_EVERY, "log_every": CKPT_EVERY, "sample_n": 0}
        params = {"model": TINY_MODEL, "train": train,
                  "cluster": {"workers": 1, "cpus_per_worker": 1, "storage_path": f"s3://{s3_bucket}/runs",
                              "storage_endpoint": s3_server.endpoint}}
        (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
        entrypoint = ["bash", "-c", f"cd {root} && {sys.executable} -m pipelines.run train_flm --root {root} "
                                    "--no-register"]
        with ray_head(root) as (address, env):
            first = job(address, env, "submit", "--no-wait", "--submission-id", "first", "--", *entrypoint)
            assert "first" in first
            client, deadline = s3_server.client(), time.monotonic() + 300

            def stored() -> list[str]:
                listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="runs/").get("Contents", [])
                return [obj["Key"] for obj in listed if "/ckpt-" in obj["Key"]]

            while not stored():  # the first periodic checkpoint reached the storage
                assert time.monotonic() < deadline, job(address, env, "logs", "first")
                time.sleep(0.2)
            job(address, env, "stop", "first")
            while not any(end in (status := job(address, env, "status", "first").lower()) for end in ("stopped",
                                                                                                    "failed")):
                assert "succeeded" not in status, "the job ended before it was stopped: raise STEPS"
                assert time.monotonic() < deadline, status
                time.sleep(0.5)
            assert "succeeded" not in status, status
            assert not (root / "models" / "flm").exists()
            stopped_at = max(int(key.split("/ckpt-")[1][:8]) for key in stored())

            second = job(address, env, "submit", "--submission-id", "second", "--", *entrypoint, timeout=600)
            assert "succeeded" in second
        metrics = json.loads((root / "metrics" / "flm.json").read_text())["flm"]
        assert metrics["step"] == STEPS and CKPT_EVERY <= metrics["resumed_from"] < STEPS, metrics
        print(f"stopped with checkpoints up to step {stopped_at} in storage; resumed from {metrics['resumed_from']}")

        whole = root / "whole"                                         # uninterrupted, in one process, no Ray
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.train_stages", "train_flm", "--params", str(root / "params.yaml"),
             "--tokens", str(root / "data" / "tokens"), "--tokenizer", str(root / "data" / "tokenizer"),
             "--models", str(whole / "models"), "--metrics", str(whole / "metrics"), "--state", str(whole / ".state"),
             "--no-tracking", "--quiet", "--device", "cpu", "--threads", "1"],
            env=os.environ | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        resumed, uninterrupted = (load_file(str(folder / "flm" / "ema.safetensors"))
                                  for folder in (root / "models", whole / "models"))
        assert resumed.keys() == uninterrupted.keys()
        for key, value in resumed.items():
            torch.testing.assert_close(value, uninterrupted[key], rtol=0, atol=1e-6, msg=key)
    finally:
        shutil.rmtree(root, ignore_errors=True)
