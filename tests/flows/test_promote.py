"""The promote flow: @champion moves to a better model and stays put for a worse one, with reasons."""

from __future__ import annotations

from typing import Any


def version_with(client: Any, val_loss: float, source: str) -> str:
    """A new version of ``flm`` (same weights) logged by a run whose ``val_loss`` is given."""
    experiment = client.get_experiment_by_name("flm").experiment_id
    run = client.create_run(experiment, run_name="candidate")
    client.log_metric(run.info.run_id, "val_loss", val_loss)
    client.set_terminated(run.info.run_id)
    return str(client.create_model_version("flm", source, run_id=run.info.run_id).version)


def test_promote_better_refuse_worse(trained: dict, mlflow_client: Any) -> None:
    from pipelines.flows import promote  # imported after the session went hermetic (Prefect reads its home)

    first = mlflow_client.get_model_version("flm", trained["flm"]["model_version"])
    first_version = str(first.version)
    loss = trained["flm"]["metrics"]["val_loss"]

    out = promote(model="flm", version=int(first_version), root=trained["root"])
    assert out["promoted"] and out["champion_before"] is None and "no @champion" in out["reason"]
    assert str(mlflow_client.get_model_version_by_alias("flm", "champion").version) == first_version

    better = version_with(mlflow_client, loss - 0.5, first.source)
    out = promote(model="flm", root=trained["root"])                       # default: the newest version
    assert out["promoted"] and out["version"] == better and out["champion_before"] == first_version
    assert str(mlflow_client.get_model_version_by_alias("flm", "champion").version) == better

    worse = version_with(mlflow_client, loss + 1.0, first.source)
    out = promote(model="flm", version=int(worse), root=trained["root"])
    assert not out["promoted"] and "does not beat" in out["reason"]
    assert str(mlflow_client.get_model_version_by_alias("flm", "champion").version) == better   # unchanged
    refused = mlflow_client.get_model_version("flm", worse)
    assert refused.tags["promotion"] == "refused" and refused.tags["promotion_reason"] == out["reason"]
    assert refused.description.startswith("Refused @champion")
    assert mlflow_client.get_model_version("flm", better).tags["promotion"] == "promoted"

    again = promote(model="flm", version=int(better), root=trained["root"])
    assert not again["promoted"] and "already holds" in again["reason"]
