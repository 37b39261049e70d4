"""The evaluate flow under Prefect's test harness: DVC outputs, the MLflow run, tags on the evaluated versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flm.eval.judge import SMOLLM2_CACHE
from flm.eval.stage import DEGENERATE
from flm.registry import promote as tags
from flm.registry.publish import EVALUATION, WEIGHTS_TAG, weights_sha256
from tests.conftest import LoadedJudge, one_thread

from .conftest import TOKENS_MD5, tiny_params

EVAL = {"models": ["flm", "fmlm"], "n_samples": 2, "batch_size": 2, "n_boot": 20, "max_nfe": 2, "fmlm_nfe": [1, 2],
        "promote_nfe": 2, "n_show": 1}


@pytest.fixture(scope="module")
def evaluated(trained: dict, project: Path, smollm2: LoadedJudge) -> dict[str, Any]:
    """The flow on the trained flm/fmlm, its judge read from the session's converted SmolLM2 (no second conversion)."""
    from pipelines.flows import evaluate

    cache = project / ".state" / "cache" / "judges" / SMOLLM2_CACHE
    cache.parent.mkdir(parents=True, exist_ok=True)
    if not cache.exists():
        cache.symlink_to(smollm2.state_dir / "cache" / "judges" / SMOLLM2_CACHE, target_is_directory=True)
    with one_thread():
        return evaluate(params=tiny_params(eval=EVAL), root=str(project), device="cpu")


def test_evaluate_flow_writes_outputs_run_and_version_tags(evaluated: dict, trained: dict, project: Path,
                                                           mlflow_client: Any) -> None:
    report = project / "reports" / "eval"
    for name in ("report.md", "rows.json", "metrics.json", "gen_ppl_vs_nfe.csv", "gen_ppl_vs_entropy.csv",
                 "gen_ppl_vs_nfe.png", "gen_ppl_vs_entropy.png"):
        assert (report / name).is_file(), name
    metrics = json.loads((project / "metrics" / "eval.json").read_text())["eval"]
    flagged = sorted({m for m, by_variant in metrics.items() if m in ("flm", "fmlm") for by_nfe in by_variant.values()
                      for row in by_nfe.values() if row["degenerate"]})
    note = (report / "report.md").read_text().split("## Every row")[0]
    assert ("Degenerate rows (entropy below the floor): none." in note) == (not flagged)
    assert all(f" {model} (" in note or f": {model} (" in note for model in flagged)
    assert metrics == evaluated["metrics"]["eval"] and set(metrics) == {"protocol", "reference", "flm", "fmlm"}
    assert metrics["protocol"] == "document"
    assert set(metrics["fmlm"]) == {"flow_map", "flow_map renoise=0.8"}

    run = mlflow_client.get_run(evaluated["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "evaluate"
    assert run.data.tags["stage"] == "evaluate" and run.data.tags["dvc.data/tokens"] == TOKENS_MD5
    assert run.data.tags["prefect.flow_run_id"] and run.data.tags["git.commit"]
    assert run.data.params["eval.n_samples"] == "2" and run.data.params["eval.judge"] == "smollm2"
    assert run.data.params["eval.protocol"] == run.data.tags["protocol"] == "document"
    assert mlflow_client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == \
        "custom_model_development"
    logged = run.data.metrics  # a few summary metrics, at promote_nfe; every row is in the table
    assert set(logged) == {"gen_ppl/flm", "entropy/flm", "gen_ppl/fmlm", "entropy/fmlm", "gen_ppl/data",
                           "entropy/data"}
    assert logged["gen_ppl/flm"] == pytest.approx(metrics["flm"]["euler"]["nfe=2"]["gen_ppl"])
    assert logged["entropy/fmlm"] == pytest.approx(metrics["fmlm"]["flow_map"]["nfe=2"]["entropy"])
    assert logged["gen_ppl/data"] == pytest.approx(metrics["reference"]["gen_ppl"])
    table = _table(mlflow_client, run.info.run_id)
    assert len(table) == 1 + sum(len(by_nfe) for model in ("flm", "fmlm") for by_nfe in metrics[model].values())
    assert (table[0]["model"], table[0]["degenerate"]) == ("data", False)
    for key in ("gen_ppl", "entropy", "nll_per_byte", "ci_low", "ci_high"):
        assert table[0][key] == pytest.approx(metrics["reference"][key])
    for row in table[1:]:
        want = metrics[row["model"]][row["variant"]][f"nfe={row['nfe']}"]
        for key in ("gen_ppl", "entropy", "nll_per_byte", "nll_per_byte_low", "ci_high", "degenerate"):
            assert row[key] == pytest.approx(want[key]), (row["model"], row["variant"], row["nfe"], key)
    artifacts = {item.path for item in mlflow_client.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/report.md", "eval/gen_ppl_vs_nfe.png", "eval/gen_ppl_vs_entropy.csv"} <= artifacts

    for name, variant in (("flm", "euler"), ("fmlm", "flow_map")):
        version = trained[name]["model_version"]
        assert version in evaluated["versions"][name]
        found = mlflow_client.get_model_version(name, version).tags
        assert found[WEIGHTS_TAG] == weights_sha256(project / "models" / name)
        assert float(found[tags.GEN_PPL]) == pytest.approx(metrics[name][variant]["nfe=2"]["gen_ppl"])
        assert float(found[tags.REFERENCE_ENTROPY]) == pytest.approx(metrics["reference"]["entropy"])
        assert (found[tags.PROMOTE_NFE], found[tags.VARIANT], found["eval.run_id"]) == ("2", variant, run.info.run_id)
        degenerate = metrics[name][variant]["nfe=2"]["degenerate"]
        assert found[DEGENERATE] == str(degenerate).lower()
        described = mlflow_client.get_model_version(name, version).description
        stage = "train_flm" if name == "flm" else "distill_fmlm"
        assert described.startswith(f"Trained by stage `{stage}`, profile `laptop`, step 8 in MLflow run "), described
        assert f"Data (DVC md5): `data/tokens` {TOKENS_MD5[:12]}" in described
        assert described.count(EVALUATION) == 1 and described.endswith(f"; run `{run.info.run_id}`.")
        gen_ppl = f"Gen PPL {metrics[name][variant]['nfe=2']['gen_ppl']:.2f} at NFE 2"
        assert gen_ppl in described and ("**degenerate**" in described) == degenerate


def _table(client: Any, run_id: str) -> list[dict[str, Any]]:
    """The evaluation's table artifact, read back as rows."""
    import tempfile

    from pipelines.evaluate_stage import TABLE

    with tempfile.TemporaryDirectory() as tmp:
        data = json.loads(Path(client.download_artifacts(run_id, TABLE, tmp)).read_text())
    return [dict(zip(data["columns"], values, strict=True)) for values in data["data"]]


def test_the_renoised_variant_samples_differently_from_the_same_noise(evaluated: dict, project: Path) -> None:
    """``flow_map renoise=0.8`` is a sampler of its own: at NFE 1 there is nothing to re-noise, so its row equals
    the deterministic one (same seed, same ``z_0``); at NFE 2 the re-noising draws change the samples."""
    fmlm = evaluated["metrics"]["eval"]["fmlm"]
    det, renoised = fmlm["flow_map"], fmlm["flow_map renoise=0.8"]
    scores = ("gen_ppl", "nll_per_byte", "entropy")
    assert [renoised["nfe=1"][key] for key in scores] == [det["nfe=1"][key] for key in scores]
    assert [renoised["nfe=2"][key] for key in scores] != [det["nfe=2"][key] for key in scores]
    rows = json.loads((project / "reports" / "eval" / "rows.json").read_text())["rows"]
    texts = {(r["variant"], r["nfe"]): r["samples"] for r in rows if r["model"] == "fmlm"}
    assert texts[("flow_map renoise=0.8", 1)] == texts[("flow_map", 1)]
    assert texts[("flow_map renoise=0.8", 2)] != texts[("flow_map", 2)]


def test_promotion_reads_the_evaluation(evaluated: dict, trained: dict, mlflow_client: Any) -> None:
    """The decision follows the evaluation's tags, both ways, and only a promotion moves ``@champion``.

    Refused first (the version was evaluated at NFE 2, the rule asks for 1: no alias), then promoted under a
    floor the measured entropy passes (no champion yet: the alias now points at it), then refused as the holder.
    """
    from mlflow.exceptions import MlflowException

    from pipelines.flows import promote

    version = trained["fmlm"]["model_version"]
    found = mlflow_client.get_model_version("fmlm", version).tags
    entropy, reference = float(found[tags.ENTROPY]), float(found[tags.REFERENCE_ENTROPY])
    assert found[tags.PROMOTE_NFE] == "2" and entropy > 0 and reference > 0

    def attempt(**rule: Any) -> dict[str, Any]:
        return promote(model="fmlm", version=int(version), root=trained["root"], params=tiny_params(eval=EVAL | rule))

    def champion() -> str | None:
        try:
            return str(mlflow_client.get_model_version_by_alias("fmlm", tags.ALIAS).version)
        except MlflowException:
            return None

    assert champion() is None
    out = attempt(promote_nfe=1)
    assert not out["promoted"] and out["reason"] == f"version {version} was evaluated at NFE 2, not 1"
    assert champion() is None
    assert mlflow_client.get_model_version("fmlm", version).tags["promotion"] == "refused"

    out = attempt(entropy_floor=min(1.0, 0.5 * entropy / reference))
    assert out["promoted"] and out["champion_before"] is None, out
    assert out["reason"] == f"no @champion yet; gen_ppl = {float(found[tags.GEN_PPL]):.6g}"
    assert champion() == version
    assert mlflow_client.get_model_version("fmlm", version).tags["promotion"] == "promoted"

    out = attempt(entropy_floor=min(1.0, 0.5 * entropy / reference))
    assert not out["promoted"] and out["champion_before"] == version and "already holds @champion" in out["reason"]
    assert champion() == version


def test_the_report_is_the_flow_runs_markdown_artifact(evaluated: dict, project: Path) -> None:
    """The flow run that evaluated shows ``reports/eval/report.md`` in the Prefect UI (artifact ``evaluation``)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from flm.tracking import default_tracking_uri

    async def artifacts() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["evaluation"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run])), sort=ArtifactSort.CREATED_DESC)

    from mlflow import MlflowClient

    flow_run = MlflowClient(default_tracking_uri(project / ".state")).get_run(
        evaluated["run_id"]).data.tags["prefect.flow_run_id"]
    found = asyncio.run(artifacts())
    assert [a.type for a in found] == ["markdown"]
    assert found[0].data == (project / "reports" / "eval" / "report.md").read_text(encoding="utf-8")
