"""The report files from synthetic rows: JSON, CSV columns, the Markdown table, valid PNGs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from flm.eval.report import ENTROPY_COLUMNS, NFE_COLUMNS, write_report


def _row(model: str, variant: str, nfe: int, ppl: float, entropy: float) -> dict:
    return {
        "model": model,
        "kind": variant.split()[0],
        "nfe": nfe,
        "variant": variant,
        "options": {},
        "gen_ppl": ppl,
        "ci_low": ppl * 0.9,
        "ci_high": ppl * 1.1,
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
    table = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(table) == len(rows) + 1
    for row in [reference, *rows]:
        assert any(
            f"| {row['model']} | {row['variant']} |" in line and f"{row['gen_ppl']:.2f}" in line for line in table
        )
        assert f"### {row['model']} · {row['variant']}" + (f" · NFE {row['nfe']}" if row["nfe"] else "") in markdown
    assert table[0].startswith("| data |") and table[5].startswith("| fmlm | flow_map | 1 |")
    assert (
        "sample at 64 steps | with a pipe" in markdown
        and "Held-out text (the reference line): Gen PPL 35.00" in markdown
    )

    from PIL import Image

    for name in ("gen_ppl_vs_nfe.png", "gen_ppl_vs_entropy.png"):
        with Image.open(paths[name]) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200


def test_report_without_reference(tmp_path: Path, rows: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    paths = write_report(rows[:1], tmp_path)
    assert "reference" not in json.loads(paths["metrics.json"].read_text())
    assert "Held-out" not in paths["report.md"].read_text()
