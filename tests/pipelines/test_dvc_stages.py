"""dvc.yaml's training and evaluate stages (each runs its Prefect flow): exact params lists, and a changed distill
param reruns only distillation."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .helpers import MARGIN, TINY_EVAL, dvc_clone, run

REPO = Path(__file__).resolve().parents[2]


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
    promote = all_stages["promote"]  # the last step: after evaluate, on the evaluated weights
    assert promote["cmd"] == all_stages["train_flm"]["cmd"].replace("train_flm", "promote --all")
    assert promote["params"] == evaluate["params"] and promote["metrics"] == ["metrics/promote.json"]
    assert {"metrics/eval.json"} | {f"models/{name}" for name in ("flm", "fmlm", "ar", "mdlm")} <= set(promote["deps"])
    assert "outs" not in promote and list(all_stages)[-1] == "promote"
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    assert [(name, spec["x"], spec["y"]) for plot in plots for name, spec in plot.items()] == [
        ("reports/eval/gen_ppl_vs_nfe.csv", "nfe", "gen_ppl"),
        ("reports/eval/gen_ppl_vs_entropy.csv", "entropy", "gen_ppl"),
    ]
    for stage in ("train_flm", "distill_fmlm", "train_ar", "train_mdlm", "evaluate", "promote"):
        for dep in all_stages[stage]["deps"]:
            assert dep.startswith(("data/", "models/", "metrics/")) or (REPO / dep).exists(), dep


def ran(output: str) -> set[str]:
    names = ("corpus", "tokenizer", "pack", "train_flm", "distill_fmlm", "train_ar", "train_mdlm", "evaluate",
             "promote")
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
    assert sorted(by_stage) == sorted(["train_flm", "distill_fmlm", "train_ar", "train_mdlm", "evaluate", "promote"])
    assert len(parents) == len(by_stage)
    for stage, tags in by_stage.items():
        assert (tags["git.commit"], tags["git.dirty"]) == (head, "false"), stage
        expected = {f"dvc.{dep}": produced[dep] for dep in stages()[stage]["deps"] if dep in produced}
        assert {key: value for key, value in tags.items() if key.startswith("dvc.")} == expected, stage
    assert by_stage["distill_fmlm"]["dvc.models/flm"] == produced["models/flm"]
    assert {f"dvc.models/{name}" for name in ("flm", "fmlm", "ar", "mdlm")} <= set(by_stage["evaluate"])


def check_champions(repo: Path, tracking_uri: str, output: str, floor: float) -> None:
    """After ``dvc repro`` on a fresh store: ``models:/<name>@champion`` resolves exactly for the models whose
    evaluated entropy (the version's tags) passes the floor, and every refusal's reason ends the output."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    decisions = json.loads((repo / "metrics" / "promote.json").read_text())["promote"]
    summary = output[output.rindex("promote:"):]
    assert sorted(decisions) == sorted(TINY_EVAL["models"])
    for name, decision in decisions.items():
        version = client.get_model_version(name, str(decision["candidate"]))
        entropy, reference = (float(version.tags[key]) for key in ("eval.entropy", "eval.reference_entropy"))
        try:
            champion = int(client.get_model_version_by_alias(name, "champion").version)
        except MlflowException:
            champion = None
        if entropy >= floor * reference:
            assert decision["promoted"] and champion == decision["candidate"], (name, decision)
        else:
            assert champion is None and not decision["promoted"] and "below the floor" in decision["reason"], name
            assert f"{name}: no @champion (refused v{decision['candidate']}: " in summary, summary


@pytest.mark.slow
def test_a_changed_distill_param_reruns_only_distillation(tiny_data: dict, tmp_path: Path) -> None:
    repo = tmp_path / "clone"
    params, env = dvc_clone(repo, tiny_data, tmp_path / "mlflow.db")  # a fresh store: no champion from other tests
    dvc = (sys.executable, "-m", "dvc")

    started_ms = int(time.time() * 1000)
    output = run(repo, *dvc, "repro", env=env)
    assert ran(output) == {"train_flm", "distill_fmlm", "train_ar", "train_mdlm", "evaluate", "promote"}
    assert (repo / "models" / "fmlm" / "checkpoint.json").is_file()
    check_lineage(repo, env["MLFLOW_TRACKING_URI"], started_ms)
    check_champions(repo, env["MLFLOW_TRACKING_URI"], output, params["eval"]["entropy_floor"])
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
    assert ran(run(repo, *dvc, "repro", "--dry", env=env)) == {"distill_fmlm"}  # (evaluate, promote follow)
    metrics = run(repo, *dvc, "metrics", "show", env=env)
    assert "flm.val_nll" in metrics and "fmlm.val_loss" in metrics
    assert "ar.val_nll" in metrics and "mdlm.val_masked_ce" in metrics
    assert "eval.reference.gen_ppl" in metrics and (repo / "reports" / "eval" / "report.md").is_file()
