"""The promote flow on a real MLflow store: Gen PPL at the stated NFE with an entropy floor, or val_loss."""

from __future__ import annotations

from typing import Any

import pytest

from flm.registry import promote as tags

from .conftest import tiny_params

PARAMS = tiny_params(eval={"promote_nfe": 8, "entropy_floor": 0.8})
REFERENCE_ENTROPY = 4.0


def new_version(client: Any, name: str, source: str, val_loss: float = 1.0, **eval_tags: Any) -> str:
    """A version of ``name`` logged by a run with ``val_loss``; ``eval_tags`` as the evaluate flow writes them."""
    experiment = client.get_experiment_by_name("flm").experiment_id
    run = client.create_run(experiment, run_name="candidate")
    client.log_metric(run.info.run_id, "val_loss", val_loss)
    client.set_terminated(run.info.run_id)
    version = str(client.create_model_version(name, source, run_id=run.info.run_id).version)
    for key, value in eval_tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    return version


def evaluated(gen_ppl: float, entropy: float = 3.9, nfe: int = 8, judge: str = "smollm2") -> dict[str, Any]:
    return {tags.GEN_PPL: gen_ppl, tags.ENTROPY: entropy, tags.REFERENCE_ENTROPY: REFERENCE_ENTROPY,
            tags.JUDGE: judge, tags.PROMOTE_NFE: nfe, tags.VARIANT: "euler"}


@pytest.fixture()
def registry(trained: dict, mlflow_client: Any, request: pytest.FixtureRequest) -> tuple[Any, str, str]:
    """A fresh registered model (named after the test) and the source of the trained flm weights."""
    name = f"promote-{request.node.name}"
    mlflow_client.create_registered_model(name)
    source = mlflow_client.get_model_version("flm", trained["flm"]["model_version"]).source
    return mlflow_client, name, source


def champion(client: Any, name: str) -> str:
    return str(client.get_model_version_by_alias(name, "champion").version)


def test_gen_ppl_promotes_better_and_refuses_worse_degenerate_and_unevaluated(registry: tuple, trained: dict) -> None:
    from pipelines.flows import promote  # imported after the session went hermetic (Prefect reads its home)

    client, name, source = registry

    def decide(version: str) -> dict[str, Any]:
        return promote(model=name, version=int(version), root=trained["root"], params=PARAMS)

    unevaluated = new_version(client, name, source, val_loss=0.1)
    out = decide(unevaluated)
    assert not out["promoted"] and "has not been evaluated" in out["reason"]
    assert client.get_model_version(name, unevaluated).tags["promotion"] == "refused"

    first = new_version(client, name, source, **evaluated(100.0))
    out = promote(model=name, root=trained["root"], params=PARAMS)              # default: the newest version
    assert out["promoted"] and out["version"] == first and "no @champion" in out["reason"]

    better = new_version(client, name, source, **evaluated(80.0))
    out = decide(better)
    assert out["promoted"] and out["champion_before"] == first and champion(client, name) == better
    assert "gen_ppl 80 beats @champion version" in out["reason"]

    worse = new_version(client, name, source, **evaluated(90.0))
    out = decide(worse)
    assert not out["promoted"] and "does not beat" in out["reason"] and champion(client, name) == better

    degenerate = new_version(client, name, source, **evaluated(5.0, entropy=2.0))   # far better Gen PPL, repetitive
    out = decide(degenerate)
    assert not out["promoted"] and champion(client, name) == better
    assert "entropy 2.000 nats is below the floor 3.200 (0.8 x held-out 4.000)" in out["reason"]
    refused = client.get_model_version(name, degenerate)
    assert refused.tags["promotion_reason"] == out["reason"]
    assert refused.description == f"**Promotion:** Refused @champion: {out['reason']}"  # its only paragraph

    other_nfe = new_version(client, name, source, **evaluated(50.0, nfe=4))
    out = decide(other_nfe)
    assert not out["promoted"] and "evaluated at NFE 4, not 8" in out["reason"]

    again = decide(better)
    assert not again["promoted"] and "already holds" in again["reason"]


def test_a_champion_judged_differently_cannot_be_compared(registry: tuple, trained: dict) -> None:
    from pipelines.flows import promote

    client, name, source = registry
    old = new_version(client, name, source, **evaluated(10.0, judge="hf:gpt2-large"))
    assert promote(model=name, version=int(old), root=trained["root"], params=PARAMS)["promoted"]
    new = new_version(client, name, source, **evaluated(50.0))
    out = promote(model=name, version=int(new), root=trained["root"], params=PARAMS)
    assert out["promoted"] and "cannot be compared" in out["reason"] and champion(client, name) == new


def test_val_loss_rule_is_kept(registry: tuple, trained: dict) -> None:
    from pipelines.flows import promote

    client, name, source = registry
    first = new_version(client, name, source, val_loss=2.0)
    assert promote(model=name, version=int(first), metric="val_loss", root=trained["root"])["promoted"]
    worse = new_version(client, name, source, val_loss=3.0)
    out = promote(model=name, version=int(worse), metric="val_loss", root=trained["root"])
    assert not out["promoted"] and "val_loss 3 does not beat @champion version" in out["reason"]
    better = new_version(client, name, source, val_loss=1.0)
    assert promote(model=name, version=int(better), metric="val_loss", root=trained["root"])["promoted"]
    assert champion(client, name) == better
