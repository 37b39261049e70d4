"""The evaluate stage end to end on tiny random checkpoints of all four kinds and the SmolLM2 judge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flm.config import EvalParams
from flm.eval import stage
from flm.eval.stage import DEGENERATE, TABLE_COLUMNS, evaluate_models, separator_decoder, version_tags, whole_decoder
from flm.registry import promote as tags

from .conftest import LoadedJudge, one_thread
from .helpers import tiny_data, tiny_model

PARAMS = EvalParams(n_samples=3, batch_size=3, n_boot=50, max_nfe=4, fmlm_nfe=(1, 2), promote_nfe=2, n_show=2)
TIMING = ("seconds_per_sequence", "tokens_per_second")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval-project")
    data = tiny_data(root)
    vocab = json.loads((data / "tokens" / "meta.json").read_text())["V"]
    for seed, kind in enumerate(("flm", "fmlm", "mdlm", "ar")):
        tiny_model(root / "models" / kind, kind, vocab, seed=seed)
    return root


def run(project: Path, judge: LoadedJudge, out: str, params: EvalParams = PARAMS):
    dirs = {name: project / "models" / name for name in params.models}
    data = project / "data"
    return evaluate_models(params, dirs, data / "tokens", data / "tokenizer", project / out, judge.judge)


@pytest.fixture(scope="module")
def first(project: Path, smollm2: LoadedJudge):
    with one_thread():  # set up before the per-test thread fixture; float sums depend on the thread count
        return run(project, smollm2, "first")


def strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def test_every_model_nfe_and_variant_has_a_row_and_the_files(first) -> None:
    got = [(r["model"], r["nfe"], r["variant"]) for r in first.rows]
    assert got == [
        ("flm", 1, "euler"), ("flm", 2, "euler"), ("flm", 4, "euler"),
        ("fmlm", 1, "flow_map"), ("fmlm", 1, "flow_map renoise=0.8"),
        ("fmlm", 2, "flow_map"), ("fmlm", 2, "flow_map renoise=0.8"),
        ("mdlm", 1, "ancestral"), ("mdlm", 2, "ancestral"), ("mdlm", 4, "ancestral"),
        ("ar", 16, "autoregressive"),
    ]
    for row in first.rows:
        assert row["n_samples"] == 3 and row["n_tokens"] >= 3 and len(row["samples"]) == 2
        assert row["gen_ppl"] > 1 and row["ci_low"] <= row["gen_ppl"] <= row["ci_high"] and row["entropy"] > 0
        assert row["nll_per_byte_low"] <= row["nll_per_byte"] <= row["nll_per_byte_high"] and row["n_bytes"] > 0
        assert row["degenerate"] == (row["entropy"] < PARAMS.entropy_floor * first.reference["entropy"])
        assert row["seconds_per_sequence"] > 0
    assert (first.reference["model"], first.reference["n_samples"]) == ("data", 3)
    assert first.reference["seconds_per_sequence"] is None
    assert sorted(path.name for path in first.files.values()) == sorted(
        ["metrics.json", "rows.json", "gen_ppl_vs_nfe.csv", "gen_ppl_vs_entropy.csv", "report.md",
         "nll_per_byte_vs_nfe.png", "gen_ppl_vs_nfe.png", "gen_ppl_vs_entropy.png"])
    metrics = json.loads(first.files["metrics.json"].read_text())
    assert set(metrics) == {"protocol", "reference", "flm", "fmlm", "mdlm", "ar"} and metrics["protocol"] == "document"
    assert set(metrics["fmlm"]) == {"flow_map", "flow_map renoise=0.8"} and set(metrics["flm"]["euler"]) == {
        "nfe=1", "nfe=2", "nfe=4"}
    assert len(first.files["gen_ppl_vs_nfe.csv"].read_text().splitlines()) == 1 + 11
    assert "### ar · autoregressive · NFE 16" in first.files["report.md"].read_text()


def test_evaluation_is_deterministic_for_a_seed(project: Path, smollm2: LoadedJudge, first) -> None:
    again = run(project, smollm2, "again")
    assert strip(again.rows) == strip(first.rows) and again.reference == first.reference
    csv = "gen_ppl_vs_entropy.csv"
    assert (project / "again" / csv).read_bytes() == first.files[csv].read_bytes()
    other = run(project, smollm2, "other", PARAMS.model_copy(update={"seed": 1, "models": ("flm", "ar")}))
    assert other.rows[0]["samples"] != first.rows[0]["samples"]
    assert other.rows[-1]["samples"] != first.rows[-1]["samples"]
    assert other.reference["samples"] != first.reference["samples"]


def test_separators_end_the_scored_text(project: Path) -> None:
    from flm.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(project / "data" / "tokenizer")
    decode = separator_decoder(project / "data" / "tokenizer")
    first, second = tokenizer.encode_batch(["The first story.", "Another one."])
    eos = tokenizer.info.eos_id
    assert decode([*first, eos, *second]) == decode(first) == tokenizer.decode(first)
    assert decode([eos, *first]) == "" and decode(second) == tokenizer.decode(second)


def test_a_missing_or_mismatched_model_is_an_error(project: Path, smollm2: LoadedJudge, tmp_path: Path) -> None:
    data = project / "data"
    missing = tmp_path / "models" / "flm"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        evaluate_models(PARAMS, {"flm": missing}, data / "tokens", data / "tokenizer", tmp_path / "out", smollm2.judge)
    swapped = {name: project / "models" / name for name in PARAMS.models} | {"flm": project / "models" / "mdlm"}
    with pytest.raises(ValueError, match="holds a 'mdlm' model, expected 'flm'"):
        evaluate_models(PARAMS, swapped, data / "tokens", data / "tokenizer", tmp_path / "out", smollm2.judge)


def test_version_tags_summary_metrics_and_table(first) -> None:
    fmlm = version_tags("fmlm", first.rows, first.reference, PARAMS, "smollm2")
    row = next(r for r in first.rows if r["model"] == "fmlm" and r["nfe"] == 2 and not r["options"])
    assert float(fmlm[tags.GEN_PPL]) == row["gen_ppl"] and float(fmlm[tags.ENTROPY]) == row["entropy"]
    assert float(fmlm[tags.REFERENCE_ENTROPY]) == first.reference["entropy"]
    assert (fmlm[tags.JUDGE], fmlm[tags.PROMOTE_NFE], fmlm[tags.VARIANT]) == ("smollm2", "2", "flow_map")
    assert fmlm[tags.GEN_PPL_PROTOCOL] == "document"
    assert fmlm[DEGENERATE] == str(row["degenerate"]).lower() and fmlm["eval.entropy_floor"] == "0.8"
    ar = version_tags("ar", first.rows, first.reference, PARAMS, "smollm2")
    assert ar["eval.nfe"] == "16" and ar[tags.PROMOTE_NFE] == "2"

    metrics = stage.summary_metrics(first.rows, first.reference, PARAMS)
    assert len(metrics) == 10 and (metrics["gen_ppl/fmlm"], metrics["entropy/fmlm"]) == (row["gen_ppl"], row["entropy"])
    assert metrics["gen_ppl/ar"] == first.rows[-1]["gen_ppl"] and metrics["entropy/data"] == first.reference["entropy"]
    assert metrics["gen_ppl/flm"] == first.rows[1]["gen_ppl"]  # flm euler at NFE 2

    table = stage.rows_table(first.rows, first.reference)
    assert list(table) == [*TABLE_COLUMNS, "sample"] and all(len(c) == 1 + len(first.rows) for c in table.values())
    assert table["model"][0] == "data" and table["degenerate"][0] is False and table["nfe"][1:] == [
        r["nfe"] for r in first.rows]
    assert table["gen_ppl"] == [first.reference["gen_ppl"], *(r["gen_ppl"] for r in first.rows)]
    assert table["degenerate"][1:] == [r["degenerate"] for r in first.rows]
    assert table["sample"][1] == first.rows[0]["samples"][0]


def test_a_version_below_the_floor_is_tagged_and_described_degenerate(first) -> None:
    """The rule is :func:`flm.eval.floor.is_degenerate` on the row at promote_nfe: entropy < floor x held-out."""
    reference = first.reference["entropy"]
    rows = [{**r, "entropy": 0.5 * reference} if r["model"] == "fmlm" else r for r in first.rows]
    below = version_tags("fmlm", rows, first.reference, PARAMS, "smollm2") | {"eval.run_id": "abc"}
    above = version_tags("fmlm", rows, first.reference, PARAMS.model_copy(update={"entropy_floor": 0.4}), "smollm2")
    assert (below[DEGENERATE], above[DEGENERATE]) == ("true", "false")
    text = stage.evaluation_text(below)
    assert text.startswith(f"Gen PPL {float(below[tags.GEN_PPL]):.2f} at NFE 2 (`flow_map`, judge smollm2")
    flag = "**degenerate** (below 0.8 x held-out)"
    assert f"entropy {0.5 * reference:.2f} nats (held-out {reference:.2f}), {flag}" in text
    assert text.endswith("; run `abc`.") and "degenerate" not in stage.evaluation_text(above)


def test_the_reference_protocol_scores_whole_blocks_and_names_itself(project: Path) -> None:
    """``eval.protocol: reference`` with the AR judge (the data tokenizer: 16 tokens per block): blocks decoded
    whole (separators as text), their first L = 16 tokens scored with no BOS (15 per block); the report,
    metrics.json and the version tags name the protocol."""
    from flm.data.blocks import TokenBlocks
    from flm.eval.judge import load_judge

    params = EvalParams(models=("flm",), protocol="reference", n_samples=3, batch_size=3, n_boot=10, max_nfe=1,
                        fmlm_nfe=(1,), promote_nfe=1, n_show=3, seed=19)  # seed 19 picks a block with a separator
    tokenizer = project / "data" / "tokenizer"
    judge = load_judge(f"ar:{project / 'models' / 'ar'}", tokenizer_dir=tokenizer)
    data = project / "data"
    result = evaluate_models(params, {"flm": project / "models" / "flm"}, data / "tokens", tokenizer,
                             project / "reference-protocol", judge)
    blocks = TokenBlocks(project / "data" / "tokens", "val")
    picks = np.sort(np.random.default_rng(params.seed).choice(len(blocks), size=3, replace=False))
    texts = [whole_decoder(tokenizer)([int(t) for t in blocks[int(i)]]) for i in picks]
    assert result.reference["samples"] == texts
    assert sum("<|endoftext|>" in text for text in texts) == 1  # the separator stays in the text, and is scored
    nll, count, n_bytes = judge.score(texts, "reference", max_length=16)
    assert count.tolist() == [15, 15, 15] and result.rows[0]["n_tokens"] == 3 * 15
    assert (result.reference["n_tokens"], result.reference["n_bytes"]) == (count.sum(), n_bytes.sum())
    assert result.reference["gen_ppl"] == pytest.approx(np.exp(nll.sum() / count.sum()), rel=1e-12)
    assert json.loads(result.files["metrics.json"].read_text())["protocol"] == "reference"
    assert "protocol reference" in result.files["report.md"].read_text().splitlines()[0]
    assert version_tags("flm", result.rows, result.reference, params, "smollm2")[tags.GEN_PPL_PROTOCOL] == "reference"
