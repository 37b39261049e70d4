"""`ray job submit` to a Ray head on loopback runs a tiny pretraining flow to completion.

The head (:func:`tests.distributed.ray_head.ray_head`) is started here and stopped by killing its process group.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from flm.train.checkpoint import read_meta

from .conftest import TINY_LOOP, TINY_MODEL
from .ray_head import BIN, ray_head


def test_ray_job_submit_to_a_loopback_head(tiny_data: dict) -> None:
    root = Path(tempfile.mkdtemp(prefix="flmj-", dir="/tmp"))          # short: Ray's socket paths
    try:
        shutil.copytree(tiny_data["tokens"], root / "data" / "tokens")
        shutil.copytree(tiny_data["tokenizer"], root / "data" / "tokenizer")
        params = {"model": TINY_MODEL, "train": TINY_LOOP | {"steps": 4, "ckpt_every": 0, "sample_n": 0},
                  "cluster": {"workers": 1, "cpus_per_worker": 1}}
        (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
        with ray_head(root) as (address, env):
            entrypoint = f"cd {root} && {sys.executable} -m pipelines.run train_flm --root {root} --no-register"
            submit = subprocess.run(
                [str(BIN / "ray"), "job", "submit", "--address", address, "--", "bash", "-c", entrypoint],
                env=env, capture_output=True, text=True, timeout=400)
            assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
            assert "succeeded" in submit.stdout + submit.stderr
            assert read_meta(root / "models" / "flm")["step"] == 4
            assert json.loads((root / "metrics" / "flm.json").read_text())["flm"]["step"] == 4
    finally:
        shutil.rmtree(root, ignore_errors=True)
