"""A flow run's parameters start from params.yaml: a partial tree or dotted overrides change only what they name."""

from __future__ import annotations

from pathlib import Path

import pytest

from flm.config import ConfigError, load_params
from pipelines.overrides import dvc_set_args, matches_params_file, resolve

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def changed(a: dict, b: dict, prefix: str = "") -> set[str]:
    """The dotted keys whose values differ between two trees of the same shape."""
    out: set[str] = set()
    for key in a:
        if isinstance(a[key], dict):
            out |= changed(a[key], b[key], f"{prefix}{key}.")
        elif a[key] != b[key]:
            out.add(f"{prefix}{key}")
    return out


def test_a_partial_tree_and_overrides_change_only_what_they_name() -> None:
    base = load_params(PARAMS)
    partial = resolve({"train": {"steps": 700}}, PARAMS)
    assert changed(base.model_dump(mode="json"), partial.model_dump(mode="json")) == {"train.steps"}
    dotted = resolve(None, PARAMS, overrides={"train.steps": "700", "distill.sample_steps": "[2, 3]"})
    assert changed(base.model_dump(mode="json"), dotted.model_dump(mode="json")) == {"train.steps",
                                                                                      "distill.sample_steps"}
    assert dotted.train.steps == 700 and dotted.distill.sample_steps == (2, 3)
    smoke = resolve(None, PARAMS, profile="smoke", overrides={"train.lr": 0.01})
    assert changed(load_params(PARAMS, "smoke").model_dump(mode="json"), smoke.model_dump(mode="json")) == {"train.lr"}
    assert matches_params_file(resolve(base.model_dump(mode="json"), PARAMS), PARAMS)   # the form's default tree
    assert not matches_params_file(partial, PARAMS)


def test_unknown_keys_and_a_tree_of_another_profile_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown parameter 'train\.stepz'"):
        resolve(None, PARAMS, overrides={"train.stepz": 1})
    with pytest.raises(ConfigError, match=r"unknown parameter 'trian\.steps'"):
        resolve(None, PARAMS, overrides={"trian.steps": 1})
    with pytest.raises(ConfigError, match=r"train\.steps"):
        resolve(None, PARAMS, overrides={"train.steps": "many"})
    with pytest.raises(ConfigError, match="profile='smoke'"):
        resolve(load_params(PARAMS).model_dump(mode="json"), PARAMS, profile="smoke")


def test_the_flows_keep_a_partial_tree_partial() -> None:
    """Prefect's parameter validation must not fill a partial ``params`` with the classes' defaults."""
    from pipelines.flows import FLOWS

    for name in ("train_flm", "distill_fmlm", "train_ar", "train_mdlm", "evaluate"):
        validated = FLOWS[name].validate_parameters({"params": {"train": {"steps": 700}}})
        assert validated["params"] == {"train": {"steps": 700}}, name


def test_overrides_become_dvc_set_options() -> None:
    assert dvc_set_args({"train.steps": 100, "train.sample_steps": [1, 2], "train.lr": 0.5, "profile": "smoke",
                         "train.compile": True}) == [
        "-S", "train.steps=100", "-S", "train.sample_steps=[1, 2]", "-S", "train.lr=0.5", "-S", "profile=smoke",
        "-S", "train.compile=true"]
    assert dvc_set_args({"train.steps": 5, "train.beta1": 0.8}, {"train": {"steps": 1}}) == [
        "-S", "train.steps=5", "-S", "+train.beta1=0.8"]   # a key params.yaml leaves out is added
