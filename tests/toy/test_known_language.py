"""A language whose exact denoiser we know (issue: core, MATH.md §5): learned FLM and FMLM.

Trains FLM for a fixed number of steps, distills FMLM from its EMA, and checks the samples'
true NLL per token and their histogram entropy against the source. Fixed step counts, not
wall-clock, so a loaded machine cannot change the outcome. Takes ~7 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from flm.toy.demo import DemoSettings, format_table, run_demo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def result() -> dict:
    out = run_demo(DemoSettings(), progress=False)
    report = Path(os.environ.get("FLM_TEST_REPORTS", ".state/test-reports")) / "known_language.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(out, indent=2))
    print("\n" + format_table(out))
    return out


def _row(result: dict, model: str, nfe: int) -> dict:
    return next(r for r in result["rows"] if r["model"] == model and r["nfe"] == nfe)


def test_exact_denoiser_rows(result: dict) -> None:
    ref = result["entropy_per_token"]
    assert _row(result, "exact", 128)["nll"] < 1.03 * ref
    assert _row(result, "exact", 16)["nll"] < 1.08 * ref
    assert abs(result["bayes_floor"] - 0.80) < 0.05


def test_flm_heldout_loss_near_the_bayes_floor(result: dict) -> None:
    assert result["flm_heldout_loss"] < 1.20 * result["bayes_floor"]
    assert result["flm_heldout_loss"] > result["bayes_floor"] - 3 * result["bayes_floor_se"]


def test_flm_128_steps_near_the_source(result: dict) -> None:
    assert _row(result, "FLM", 128)["nll"] < 1.75 * result["entropy_per_token"]


def test_fmlm_one_step(result: dict) -> None:
    one, data = _row(result, "FMLM", 1), _row(result, "data", 0)
    assert abs(one["entropy"] - data["entropy"]) < 0.15 * data["entropy"]
    assert one["nll"] < 1.75 * _row(result, "FLM", 128)["nll"]


def test_fmlm_beats_flm_at_equal_few_steps(result: dict) -> None:
    for nfe in (2, 4):
        assert _row(result, "FMLM", nfe)["nll"] < _row(result, "FLM", nfe)["nll"], nfe


def test_fmlm_four_steps_near_flm_128(result: dict) -> None:
    assert _row(result, "FMLM", 4)["nll"] < 1.15 * _row(result, "FLM", 128)["nll"]
