"""dvc.yaml's training and evaluate stages (each runs its Prefect flow): exact params lists, and a changed distill
param reruns only distillation."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.train.conftest import OFFLINE_ENV

from .helpers import LEARNS, MARGIN, TINY_EVAL

REPO = Path(__file__).resolve().parents[2]
TRACKED = ["flm", "pipelines", "dvc.yaml", "params.yaml", ".dvc/config", ".dvcignore"]


def stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_each_training_stage_lists_exactly_its_params_sections() -> None:
    all_stages = stages()
    assert all_stages["train_flm"]["params"] == [
        "profile", "model", "train",
        "profiles.lm1b.model", "profiles.lm1b.train", "profiles.owt.model", "profiles.owt.train",
        "profiles.smoke.train",
    ]
    assert all_stages["distill_fmlm"]["params"] == [
        "profile", "distill", "profiles.lm1b.distill", "profiles.owt.distill", "profiles.smoke.distill",
    ]
    assert not [name for name, stage in all_stages.items() for p in stage.get("params", []) if "cluster" in p]
    assert "models/flm" in all_stages["distill_fmlm"]["deps"] and "data/tokens" in all_stages["train_flm"]["deps"]
    assert all_stages["train_flm"]["outs"] == ["models/flm"] and all_stages["distill_fmlm"]["outs"] == ["models/fmlm"]
    assert all_stages["train_flm"]["metrics"] == ["metrics/flm.json"]
    assert all_stages["distill_fmlm"]["metrics"] == ["metrics/fmlm.json"]
    for name in ("ar", "mdlm"):  # the baselines: the shared model shape and their own loop section
        stage = all_stages[f"train_{name}"]
        assert stage["params"] == ["profile", "model", name, "profiles.lm1b.model", f"profiles.lm1b.{name}",
                                   "profiles.owt.model", f"profiles.owt.{name}", f"profiles.smoke.{name}"]
        assert stage["outs"] == [f"models/{name}"] and stage["metrics"] == [f"metrics/{name}.json"]
        assert stage["cmd"] == all_stages["train_flm"]["cmd"].replace("train_flm", f"train_{name}")
        assert "data/tokens" in stage["deps"] and not [d for d in stage["deps"] if d.startswith("models/")]
    evaluate = all_stages["evaluate"]
    assert evaluate["cmd"] == all_stages["train_flm"]["cmd"].replace("train_flm", "evaluate")
    assert evaluate["params"] == ["profile", "eval", "profiles.lm1b.eval", "profiles.owt.eval", "profiles.smoke.eval"]
    assert {f"models/{name}" for name in ("flm", "fmlm", "ar", "mdlm")} | {"data/tokens", "data/tokenizer"} <= set(
        evaluate["deps"])
    assert evaluate["outs"] == ["reports/eval"] and evaluate["metrics"] == ["metrics/eval.json"]
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    assert [(name, spec["x"], spec["y"]) for plot in plots for name, spec in plot.items()] == [
        ("reports/eval/gen_ppl_vs_nfe.csv", "nfe", "gen_ppl"),
        ("reports/eval/gen_ppl_vs_entropy.csv", "entropy", "gen_ppl"),
    ]
    for stage in ("train_flm", "distill_fmlm", "train_ar", "train_mdlm", "evaluate"):
        for dep in all_stages[stage]["deps"]:
            assert dep.startswith(("data/", "models/")) or (REPO / dep).exists(), dep


def run(repo: Path, *args: str, env: dict[str, str]) -> str:
    # generous: `dvc repro` trains five tiny stages in one call (160 s idle; over 300 s under strace)
    done = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def ran(output: str) -> set[str]:
    names = ("corpus", "tokenizer", "pack", "train_flm", "distill_fmlm", "train_ar", "train_mdlm", "evaluate")
    return {name for name in names if f"Running stage '{name}'" in output}


def check_lineage(repo: Path, tracking_uri: str, started_ms: int) -> None:
    """Each stage's parent MLflow run names the clone's HEAD commit (clean tree) and, for every dependency that is
    another stage's output, the hash ``dvc.lock`` records for that output (read here from the lock itself)."""
    from mlflow import MlflowClient

    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    produced = {out["path"]: out["md5"] for entry in lock.values() for out in entry.get("outs", [])}
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("flm")
    parents = [r for r in client.search_runs([experiment.experiment_id], f"attributes.start_time >= {started_ms}")
               if "mlflow.parentRunId" not in r.data.tags]
    by_stage = {r.data.tags["stage"]: r.data.tags for r in parents}
    assert sorted(by_stage) == sorted(["train_flm", "distill_fmlm", "train_ar", "train_mdlm", "evaluate"])
    assert len(parents) == len(by_stage)
    for stage, tags in by_stage.items():
        assert (tags["git.commit"], tags["git.dirty"]) == (head, "false"), stage
        expected = {f"dvc.{dep}": produced[dep] for dep in stages()[stage]["deps"] if dep in produced}
        assert {key: value for key, value in tags.items() if key.startswith("dvc.")} == expected, stage
    assert by_stage["distill_fmlm"]["dvc.models/flm"] == produced["models/flm"]
    assert {f"dvc.models/{name}" for name in ("flm", "fmlm", "ar", "mdlm")} <= set(by_stage["evaluate"])


@pytest.mark.slow
def test_a_changed_distill_param_reruns_only_distillation(tiny_data: dict, mlflow_state: Path, tmp_path: Path) -> None:
    repo = tmp_path / "clone"
    for name in TRACKED:
        source, target = REPO / name, repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in LEARNS.items():
        params[section] |= values
    for section in ("train", "distill", "ar", "mdlm"):
        params[section]["sample_n"] = 0
    params["eval"] |= TINY_EVAL
    params["cluster"]["workers"] = 0  # the flows run the stage in their own process (no Ray cluster)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_state / 'mlflow' / 'mlflow.db'}"}
    git = ("git", "-c", "user.name=t", "-c", "user.email=t@t")
    run(repo, "git", "init", "-q", env=env)
    run(repo, "git", "add", ".", env=env)
    run(repo, *git, "commit", "-q", "-m", "clone", env=env)
    for name in ("corpus", "tokenizer", "tokens"):  # the tiny data stands in for the data stages' outputs
        shutil.copytree(tiny_data[name], repo / "data" / name)
    (repo / "data" / "metrics").mkdir()
    for name in ("corpus", "tokens"):
        (repo / "data" / "metrics" / f"{name}.json").write_text("{}")
    dvc = (sys.executable, "-m", "dvc")
    run(repo, *dvc, "commit", "-f", "corpus", "tokenizer", "pack", env=env)

    started_ms = int(time.time() * 1000)
    assert ran(run(repo, *dvc, "repro", env=env)) == {"train_flm", "distill_fmlm", "train_ar", "train_mdlm", "evaluate"}
    assert (repo / "models" / "fmlm" / "checkpoint.json").is_file()
    check_lineage(repo, env["MLFLOW_TRACKING_URI"], started_ms)
    ln_v = math.log(json.loads((repo / "data" / "tokens" / "meta.json").read_text())["V"])
    for name in ("flm", "fmlm", "ar", "mdlm"):  # every stage learned (an untrained head scores ln V)
        metrics = json.loads((repo / "metrics" / f"{name}.json").read_text())[name]
        assert metrics["val_loss"] < ln_v - MARGIN, (name, metrics, ln_v)
    assert "up to date" in run(repo, *dvc, "status", env=env)

    params["cluster"]["workers"] = 4  # resources are no stage's parameter
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(run(repo, *dvc, "repro", "--dry", env=env)) == set()

    params["distill"]["lr"] = 1e-3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(repo, *dvc, "status", env=env)
    assert status.splitlines()[0] == "distill_fmlm:" and "train_flm:" not in status
    assert [line.split() for line in status.splitlines() if "modified:" in line] == [["modified:", "distill"]]
    assert ran(run(repo, *dvc, "repro", "--dry", env=env)) == {"distill_fmlm"}  # (evaluate follows once it has)
    metrics = run(repo, *dvc, "metrics", "show", env=env)
    assert "flm.val_nll" in metrics and "fmlm.val_loss" in metrics
    assert "ar.val_nll" in metrics and "mdlm.val_masked_ce" in metrics
    assert "eval.reference.gen_ppl" in metrics and (repo / "reports" / "eval" / "report.md").is_file()
