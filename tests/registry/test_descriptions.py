"""Registered versions' descriptions: where a version comes from, then its evaluation (one paragraph, replaced)."""

from __future__ import annotations

import json
from pathlib import Path

from flm.registry.publish import EVALUATION, registration_description, with_evaluation, with_section


def test_the_registration_names_stage_profile_step_data_and_run(tmp_path: Path) -> None:
    info = {"stage": "distill_fmlm", "step": 300, "params": {"profile": "laptop"}, "run_key": "f00"}
    (tmp_path / "checkpoint.json").write_text(json.dumps(info))
    tags = {"git.commit": "0123456789abcdef", "dvc.data/tokens": "aaaabbbbccccdddd.dir", "dvc.models/flm": "ffff.dir",
            "dvc.flm/train": "code.dir", "stage": "distill_fmlm"}
    text = registration_description(tmp_path, "r1", tags)
    assert text == ("Trained by stage `distill_fmlm`, profile `laptop`, step 300 in MLflow run `r1` at commit "
                    "`0123456789`.\n\nData (DVC md5): `data/tokens` aaaabbbbcccc; `models/flm` ffff.dir.")
    (tmp_path / "checkpoint.json").write_text("{}")
    assert registration_description(tmp_path, "r2", {"git.commit": "unknown"}) == "Logged in MLflow run `r2`."


def test_an_evaluation_replaces_the_earlier_one(tmp_path: Path) -> None:
    base = "Trained by stage `train_flm` in MLflow run `r1`."
    first = with_evaluation(base, "Gen PPL 40.00 at NFE 8.")
    assert first == f"{base}\n\n{EVALUATION} Gen PPL 40.00 at NFE 8."
    assert with_evaluation(first, "Gen PPL 30.00 at NFE 8.") == f"{base}\n\n{EVALUATION} Gen PPL 30.00 at NFE 8."
    assert with_evaluation(None, "x") == f"{EVALUATION} x"
    promoted = with_section(first, "**Promotion:**", "promoted @champion.")
    assert with_evaluation(promoted, "y") == f"{base}\n\n**Promotion:** promoted @champion.\n\n{EVALUATION} y"
