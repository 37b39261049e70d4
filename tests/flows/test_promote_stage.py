"""The promote stage (``promote --all``, the pipeline's last step) on a fresh real MLflow store: a model that
passes the entropy floor gets ``@champion``, one below it is refused with the reason, and the decisions land in
``metrics/promote.json``, in an MLflow run and at the end of the output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flm.registry import promote as tags
from flm.registry.publish import WEIGHTS_TAG, weights_sha256

from .conftest import tiny_params

FLOOR, REFERENCE = 0.8, 4.0
PARAMS = tiny_params(eval={"models": ["flm", "fmlm", "ar"], "promote_nfe": 8, "entropy_floor": FLOOR,
                           "fmlm_nfe": [1, 8]})


def register(client: Any, root: Path, name: str, entropy: float, gen_ppl: float) -> str:
    """``models/<name>`` (weights bytes of its own) and a version of ``name`` holding them, evaluated as given."""
    folder = root / "models" / name
    folder.mkdir(parents=True)
    (folder / "ema.safetensors").write_bytes(name.encode() * 64)
    experiment = client.get_experiment_by_name("flm")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("flm")
    run = client.create_run(experiment_id, run_name=f"train_{name}")
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    version = str(client.create_model_version(name, str(folder), run_id=run.info.run_id).version)
    values = {WEIGHTS_TAG: weights_sha256(folder), tags.GEN_PPL: gen_ppl, tags.ENTROPY: entropy,
              tags.REFERENCE_ENTROPY: REFERENCE, tags.JUDGE: "ar", tags.PROMOTE_NFE: 8, tags.VARIANT: "euler",
              tags.GEN_PPL_PROTOCOL: "reference"}
    for key, value in values.items():
        client.set_model_version_tag(name, version, key, str(value))
    client.update_model_version(name, version, description=f"Trained by stage `train_{name}`.\n\n**Evaluation:** ok.")
    return version


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Path]:
    """A fresh sqlite store (``MLFLOW_TRACKING_URI``) and an empty project root."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    client.create_experiment("flm", artifact_location=str(tmp_path / "artifacts"))
    root = tmp_path / "project"
    root.mkdir()
    return client, root


def test_passing_model_becomes_champion_failing_one_is_refused(store: tuple, prefect_harness: None) -> None:
    from mlflow.exceptions import MlflowException

    from pipelines.flows import promote
    from pipelines.promote_stage import run_promote, summary_lines

    client, root = store
    good = register(client, root, "fmlm", entropy=3.5, gen_ppl=40.0)          # 3.5 >= 0.8 x 4.0
    bad = register(client, root, "flm", entropy=1.0, gen_ppl=12.0)             # lower Gen PPL, but degenerate
    (root / "models" / "ar").mkdir(parents=True)                               # weights no version holds
    (root / "models" / "ar" / "ema.safetensors").write_bytes(b"ar")

    out = promote(root=str(root), params=PARAMS, all_models=True)

    assert str(client.get_model_version_by_alias("fmlm", "champion").version) == good
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("flm", "champion")
    written = json.loads((root / "metrics" / "promote.json").read_text())["promote"]
    assert written == out["decisions"]
    assert written["fmlm"] | {"reason": ""} == {"promoted": True, "candidate": int(good), "champion": int(good),
                                                "reason": ""}
    assert (written["flm"]["promoted"], written["flm"]["candidate"], written["flm"]["champion"]) == (False, int(bad),
                                                                                                    None)
    assert "below the floor 3.200" in written["flm"]["reason"]
    assert written["ar"]["candidate"] is None and "holds models/ar" in written["ar"]["reason"]
    assert client.get_model_version("flm", bad).tags["promotion"] == "refused"
    assert client.get_model_version("fmlm", good).description == (  # the decision joins, nothing is lost
        f"Trained by stage `train_fmlm`.\n\n**Evaluation:** ok.\n\n**Promotion:** Promoted to @champion: "
        f"{written['fmlm']['reason']}")

    run = client.get_run(out["run_id"])
    assert run.data.tags["stage"] == "promote" and run.info.status == "FINISHED"
    assert run.data.metrics == {"promoted/fmlm": 1.0, "promoted/flm": 0.0, "promoted/ar": 0.0}
    assert [a.path for a in client.list_artifacts(out["run_id"])] == ["promote.json"]
    summary = {line.split(":")[0]: line for line in summary_lines(written)}
    assert summary["fmlm"].startswith(f"fmlm: @champion v{good} (promoted v{good}: no @champion yet; gen_ppl = 40")
    assert summary["flm"].startswith(f"flm: no @champion (refused v{bad}: version {bad}: entropy 1.000 nats is below "
                                     "the floor")
    assert summary["ar"] == "ar: no @champion (no registered version of 'ar' holds models/ar's weights)"

    logged: list[str] = []                                                      # rerun: nothing moves
    again = run_promote(PARAMS, root, log=logged.append)
    assert again["decisions"]["fmlm"]["promoted"] is False and "already holds" in again["decisions"]["fmlm"]["reason"]
    assert again["decisions"]["fmlm"]["champion"] == int(good)
    assert logged == ["promote:\n  " + "\n  ".join(summary_lines(again["decisions"]))]  # the stage's last words


def test_cli_promote_all_exits_zero_and_prints_the_refusal(store: tuple, prefect_harness: None,
                                                           capsys: pytest.CaptureFixture) -> None:
    """``python -m pipelines.run promote --all`` (the DVC stage's command): a refusal is a decision, exit 0. (That
    its summary ends ``dvc repro``'s output is checked by tests/pipelines/test_dvc_stages.py.)"""
    import yaml

    from pipelines.run import main

    client, root = store
    register(client, root, "flm", entropy=1.0, gen_ppl=12.0)
    tree = PARAMS.model_dump(mode="json") | {"eval": PARAMS.eval.model_dump(mode="json") | {"models": ["flm"]}}
    (root / "params.yaml").write_text(yaml.safe_dump(tree))
    assert main(["promote", "--all", "--root", str(root)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # the command's result line
    assert result["decisions"]["flm"]["promoted"] is False and "below the floor" in result["decisions"]["flm"]["reason"]
    assert json.loads((root / "metrics" / "promote.json").read_text())["promote"] == result["decisions"]
