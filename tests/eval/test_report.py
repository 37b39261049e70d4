"""The report files from synthetic rows: JSON, CSV columns, the Markdown table, valid PNGs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from flm.eval.headline import headline, mark_degenerate
from flm.eval.judge import PROTOCOLS
from flm.eval.report import DEGENERATE, ENTROPY_COLUMNS, NFE_COLUMNS, _plot_entropy, _plot_nfe, write_report


def _row(model: str, variant: str, nfe: int, ppl: float, entropy: float) -> dict:
    per_byte = math.log(ppl) / 4
    return {
        "model": model,
        "kind": variant.split()[0],
        "nfe": nfe,
        "variant": variant,
        "options": {},
        "gen_ppl": ppl,
        "ci_low": ppl * 0.9,
        "ci_high": ppl * 1.1,
        "nll_per_byte": per_byte,
        "nll_per_byte_low": per_byte - 0.02,
        "nll_per_byte_high": per_byte + 0.02,
        "entropy": entropy,
        "n_samples": 16,
        "n_tokens": 16 * 130,
        "seconds_per_sequence": 0.01 * nfe,
        "tokens_per_second": 12800 / max(nfe, 1),
        "samples": [f"{model} sample at {nfe} steps | with a pipe", "second text"],
    }


@pytest.fixture
def rows() -> list[dict]:
    flm = [_row("flm", "euler", n, 400 / n**0.5, 4.2) for n in (1, 4, 16, 64)]
    fmlm = [_row("fmlm", "flow_map", n, 120 / n**0.3, 4.1) for n in (8, 1, 2, 4)]
    return flm + fmlm


def test_write_report(tmp_path: Path, rows: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    reference = {**_row("data", "held-out", 0, 35.0, 4.3), "seconds_per_sequence": None, "tokens_per_second": None}
    paths = write_report(rows, tmp_path / "out", reference)
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())

    metrics = json.loads(paths["metrics.json"].read_text())
    assert metrics["reference"]["gen_ppl"] == 35.0
    assert metrics["flm"]["euler"]["nfe=16"]["gen_ppl"] == pytest.approx(100.0)
    assert set(metrics["fmlm"]["flow_map"]) == {"nfe=1", "nfe=2", "nfe=4", "nfe=8"}
    assert json.loads(paths["rows.json"].read_text())["rows"][0]["samples"][1] == "second text"

    with paths["gen_ppl_vs_nfe.csv"].open() as handle:
        nfe_rows = list(csv.DictReader(handle))
    assert list(nfe_rows[0]) == NFE_COLUMNS and len(nfe_rows) == len(rows)
    assert [int(r["nfe"]) for r in nfe_rows if r["model"] == "fmlm"] == [1, 2, 4, 8]
    with paths["gen_ppl_vs_entropy.csv"].open() as handle:
        entropy_rows = list(csv.DictReader(handle))
    assert list(entropy_rows[0]) == ENTROPY_COLUMNS and len(entropy_rows) == len(rows) + 1
    assert entropy_rows[0]["model"] == "data"

    markdown = paths["report.md"].read_text()
    assert markdown.index("## One forward pass vs several") < markdown.index("## Every row")
    every = markdown.split("## Every row", 1)[1]
    table = [line for line in every.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(table) == len(rows) + 1
    for row in [reference, *rows]:
        assert any(
            f"| {row['model']} | {row['variant']} |" in line and f"{row['gen_ppl']:.2f}" in line for line in table
        )
        assert f"### {row['model']} · {row['variant']}" + (f" · NFE {row['nfe']}" if row["nfe"] else "") in markdown
    assert table[0].startswith("| data |") and table[5].startswith("| fmlm | flow_map | 1 |")
    assert (
        "sample at 64 steps | with a pipe" in markdown
        and "Held-out text (the reference line): NLL per byte 0.889 [0.869, 0.909], Gen PPL 35.00" in markdown
    )

    from PIL import Image

    for name in ("nll_per_byte_vs_nfe.png", "gen_ppl_vs_nfe.png", "gen_ppl_vs_entropy.png"):
        with Image.open(paths[name]) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200


def test_report_without_reference(tmp_path: Path, rows: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    paths = write_report(rows[:1], tmp_path)
    assert "reference" not in json.loads(paths["metrics.json"].read_text())
    assert "Held-out" not in paths["report.md"].read_text()


def _claim_rows() -> tuple[list[dict], dict]:
    """FMLM at 1 and 4 steps, MDLM at 1..8, FLM at 8 and 128 (degenerate at 128), AR, and the reference."""
    rows = [_row("fmlm", "flow_map", 1, 60.0, 4.1), _row("fmlm", "flow_map", 4, 50.0, 4.2),
            _row("fmlm", "flow_map renoise=0.8", 1, 70.0, 4.2), _row("ar", "autoregressive", 16, 40.0, 4.3)]
    rows += [_row("mdlm", "ancestral", n, ppl, 4.3) for n, ppl in ((1, 400.0), (2, 200.0), (4, 62.0), (8, 20.0))]
    rows += [_row("flm", "euler", n, ppl, h) for n, ppl, h in ((1, 500.0, 4.0), (8, 80.0, 4.0), (128, 9.0, 0.5))]
    reference = {**_row("data", "held-out", 0, 35.0, 4.3), "seconds_per_sequence": None, "tokens_per_second": None}
    return mark_degenerate(rows, reference, 0.8), reference


def test_the_report_leads_with_the_claim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    rows, reference = _claim_rows()
    assert [r["degenerate"] for r in rows if r["model"] == "flm"] == [False, False, True]  # 0.5 < 0.8 x 4.3
    markdown = write_report(rows, tmp_path, reference, judge="smollm2")["report.md"].read_text()
    lead = markdown.split("## Every row")[0]
    table = [line for line in lead.splitlines() if line.startswith("| ") and "---" not in line][1:]
    labels = [line.split(" | ")[0] for line in table]
    assert labels == ["| FMLM · 1 step", "| FMLM · 4 steps", "| MDLM · 1 step", "| MDLM · 2 steps", "| MDLM · 4 steps",
                      "| MDLM · 8 steps", "| FLM · 8 steps", "| FLM · 128 steps ⚠", "| AR (16 cached calls)",
                      "| held-out text"]
    assert "| 1.024 [1.004, 1.044] | 60.0 [54.0, 66.0] | 4.100 | `fmlm sample at 1 steps \\| with a pipe` |" in table[0]
    # NLL per byte = log(ppl) / 4 with +-0.02 intervals: 60 vs 400 and 200 separate, 60 vs 62 overlap, 20 is better
    assert "- FMLM · 1 step vs MDLM · 1 step: better (intervals separate)" in lead
    assert "- FMLM · 1 step vs MDLM · 2 steps: better (intervals separate)" in lead
    assert "- FMLM · 1 step vs MDLM · 4 steps: better (intervals overlap)" in lead
    assert "- FMLM · 1 step vs MDLM · 8 steps: worse (intervals separate)" in lead
    assert f"- FLM · 128 steps vs FLM · 8 steps: not compared: FLM · 128 steps {DEGENERATE}" in lead
    assert f"(its teacher): {math.log(50) / math.log(9) - 1:+.1%} NLL per byte" in lead
    assert f"⚠: {DEGENERATE}." in markdown and "| flm ⚠ | euler | 128 |" in markdown
    assert lead.rstrip().endswith("\n\nDegenerate rows (entropy below the floor): flm (euler NFE 128).")
    assert "Degenerate rows (entropy below the floor): none." in headline(rows[:3], reference, "smollm2")


def test_degenerate_rows_are_flagged_in_files_and_drawn_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    rows, reference = _claim_rows()
    paths = write_report(rows, tmp_path, reference, entropy_floor=0.8)
    metrics = json.loads(paths["metrics.json"].read_text())
    assert metrics["flm"]["euler"]["nfe=128"]["degenerate"] is True
    assert metrics["flm"]["euler"]["nfe=8"]["degenerate"] is False
    with paths["gen_ppl_vs_nfe.csv"].open() as handle:
        flagged = [(r["model"], r["nfe"]) for r in csv.DictReader(handle) if r["degenerate"] == "True"]
    assert flagged == [("flm", "128")]
    with paths["gen_ppl_vs_entropy.csv"].open() as handle:
        flagged = [(r["model"], r["nfe"]) for r in csv.DictReader(handle) if r["degenerate"] == "True"]
    assert flagged == [("flm", "128")]
    bad = rows[-1]
    for figure, (x, y) in (
        (_plot_nfe(tmp_path / "a.png", rows, reference, "nll_per_byte", 0.8), ("nfe", "nll_per_byte")),
        (_plot_nfe(tmp_path / "b.png", rows, reference, floor=0.8), ("nfe", "gen_ppl")),
        (_plot_entropy(tmp_path / "c.png", rows, reference, 0.8), ("entropy", "gen_ppl")),
    ):
        ax = figure.axes[0]
        hollow = [line for line in ax.get_lines() if line.get_markerfacecolor() == "none" and len(line.get_xdata())]
        assert [(list(h.get_xdata()), list(h.get_ydata())) for h in hollow] == [([bad[x]], [bad[y]])]
        flm = next(line for line in ax.get_lines() if line.get_label() == "flm euler")
        assert flm.get_markevery() == [0, 1] and hollow[0].get_markeredgecolor() == flm.get_color()
        filled = [line for line in ax.get_lines() if line.get_marker() == "o" and line.get_markerfacecolor() != "none"]
        assert all(line.get_markevery() is None or len(line.get_markevery()) == len(line.get_xdata())
                   for line in filled if line is not flm)  # every other row is drawn filled
        legend = [text.get_text() for text in ax.get_legend().get_texts()]
        assert "hollow: degenerate (entropy < 0.8 × held-out)" in legend
    floor = [line for line in ax.get_lines() if line.get_label().startswith("entropy floor")]
    assert len(floor) == 1 and list(floor[0].get_xdata()) == pytest.approx([0.8 * 4.3] * 2)
    assert floor[0].get_label() == "entropy floor: 0.8 × held-out = 3.44 nats"
    assert not [line for line in _plot_nfe(tmp_path / "d.png", rows[:3], reference).axes[0].get_lines()
                if line.get_markerfacecolor() == "none"]  # no degenerate row: no hollow marker, no legend note


@pytest.mark.parametrize("protocol", ["reference", "document"])
def test_the_report_names_its_protocol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, protocol: str) -> None:
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    rows, reference = _claim_rows()
    paths = write_report(rows, tmp_path / "with", reference, judge="smollm2", protocol=protocol)
    assert json.loads(paths["metrics.json"].read_text())["protocol"] == protocol
    assert json.loads(paths["rows.json"].read_text())["protocol"] == protocol
    lead = paths["report.md"].read_text().split("## Every row")[0]
    assert f"Judge smollm2; protocol `{protocol}` ({PROTOCOLS[protocol]}); 16 samples per row" in lead
    alone = write_report(rows[:1], tmp_path / "alone", protocol=protocol)["report.md"].read_text()
    assert f"Gen PPL protocol: `{protocol}`" in alone
