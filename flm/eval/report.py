"""The evaluate stage's outputs, from the rows of :mod:`flm.eval.evaluate`.

:func:`write_report` writes into ``out_dir``:

* ``metrics.json`` (DVC metrics): ``{"reference": {...}, MODEL: {VARIANT: {"nfe=N": {...}}}}`` with
  ``gen_ppl``, ``ci_low``, ``ci_high``, ``entropy``, ``seconds_per_sequence`` per entry;
* ``rows.json``: every row as given, sample texts and sampler options included;
* ``gen_ppl_vs_nfe.csv`` (DVC plots): ``model, variant, nfe, gen_ppl, ci_low, ci_high, entropy,
  seconds_per_sequence``, one line per entry;
* ``gen_ppl_vs_entropy.csv`` (DVC plots): ``model, variant, nfe, entropy, gen_ppl``, the reference
  included as model ``data``;
* ``report.md``: the table (Gen PPL ± interval, entropy, time per sequence; rows by model, variant
  and NFE), the held-out reference line, and the sample texts per model and NFE;
* ``gen_ppl_vs_nfe.png`` (log2 NFE axis, one curve per model and variant with its interval band, the
  reference as a dashed line) and ``gen_ppl_vs_entropy.png`` (matplotlib, Agg canvas, no pyplot).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flm.data.atomic import write_json_atomic

__all__ = ["write_report"]

Row = Mapping[str, Any]
NFE_COLUMNS = ["model", "variant", "nfe", "gen_ppl", "ci_low", "ci_high", "entropy", "seconds_per_sequence"]
ENTROPY_COLUMNS = ["model", "variant", "nfe", "entropy", "gen_ppl"]
SCORES = ["gen_ppl", "ci_low", "ci_high", "entropy"]


def _curves(rows: Sequence[Row]) -> list[tuple[str, list[Row]]]:
    """Rows grouped by ``model variant`` (first-seen order), each curve sorted by NFE."""
    order: dict[str, list[Row]] = {}
    for row in rows:
        order.setdefault(f"{row['model']} {row['variant']}", []).append(row)
    return [(label, sorted(curve, key=lambda r: r["nfe"])) for label, curve in order.items()]


def _metrics(rows: Sequence[Row], reference: Row | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if reference is not None:
        out["reference"] = {key: reference[key] for key in SCORES}
    for row in rows:
        scores = {key: row[key] for key in [*SCORES, "seconds_per_sequence"]}
        out.setdefault(row["model"], {}).setdefault(row["variant"], {})[f"nfe={row['nfe']}"] = scores
    return out


def _write_csv(path: Path, rows: Sequence[Row], columns: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _cell(value: Any, fmt: str = "{:.2f}") -> str:
    return "—" if value is None else fmt.format(value)


def _table_line(row: Row) -> str:
    cells = [
        row["model"],
        row["variant"].replace("|", "\\|"),
        str(row["nfe"]) if row["nfe"] else "—",
        f"{row['gen_ppl']:.2f}",
        f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}]",
        f"{row['entropy']:.3f}",
        _cell(row.get("seconds_per_sequence"), "{:.4f}"),
        _cell(row.get("tokens_per_second"), "{:.0f}"),
        str(row["n_samples"]),
    ]
    return "| " + " | ".join(cells) + " |"


def _markdown(rows: Sequence[Row], reference: Row | None, title: str) -> str:
    lines = [f"# {title}", ""]
    if reference is not None:
        lines += [
            f"Held-out text (the reference line): Gen PPL {reference['gen_ppl']:.2f} "
            f"[{reference['ci_low']:.2f}, {reference['ci_high']:.2f}], entropy {reference['entropy']:.3f} nats, "
            f"{reference['n_samples']} blocks.",
            "",
        ]
    lines += [
        "| model | variant | NFE | Gen PPL | bootstrap CI | entropy (nats) | s / sequence | tokens / s | samples |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    ordered = ([reference] if reference is not None else []) + [r for _, curve in _curves(rows) for r in curve]
    lines += [_table_line(row) for row in ordered]
    lines += ["", "## Samples", ""]
    for row in ordered:
        lines += [f"### {row['model']} · {row['variant']}" + (f" · NFE {row['nfe']}" if row["nfe"] else ""), ""]
        for text in row["samples"]:
            lines += ["````text", text, "````", ""]
    return "\n".join(lines)


def _axes():
    """A figure on an Agg canvas (no pyplot, no global backend) and its one axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig, ax, path: Path, xlabel: str) -> None:
    """Log Gen PPL axis with plain numbers, labels, grid, legend; write the PNG."""
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "25" else ""))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Gen PPL (judge)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)


def _plot_nfe(path: Path, rows: Sequence[Row], reference: Row | None) -> None:
    fig, ax = _axes()
    for label, curve in _curves(rows):
        nfe = [r["nfe"] for r in curve]
        (line,) = ax.plot(nfe, [r["gen_ppl"] for r in curve], marker="o", label=label)
        low, high = [r["ci_low"] for r in curve], [r["ci_high"] for r in curve]
        ax.fill_between(nfe, low, high, color=line.get_color(), alpha=0.2)
    if reference is not None:
        label = f"held-out text ({reference['gen_ppl']:.1f})"
        ax.axhline(reference["gen_ppl"], color="black", linestyle="--", label=label)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter("{x:g}")
    _save(fig, ax, path, "NFE (sampling steps)")


def _plot_entropy(path: Path, rows: Sequence[Row], reference: Row | None) -> None:
    fig, ax = _axes()
    for label, curve in _curves(rows):
        ax.plot([r["entropy"] for r in curve], [r["gen_ppl"] for r in curve], marker="o", label=label)
        for r in curve:
            xy = (r["entropy"], r["gen_ppl"])
            ax.annotate(str(r["nfe"]), xy, fontsize="x-small", xytext=(3, 3), textcoords="offset points")
    if reference is not None:
        xy = ([reference["entropy"]], [reference["gen_ppl"]])
        ax.plot(*xy, marker="*", markersize=14, color="black", linestyle="", label="held-out text")
    _save(fig, ax, path, "mean sample entropy (nats)")


def write_report(
    rows: Sequence[Row], out_dir: str | Path, reference: Row | None = None, title: str = "Generative perplexity"
) -> dict[str, Path]:
    """Write the files listed in the module docstring into ``out_dir`` (created); return them by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        name: out / name
        for name in (
            "metrics.json",
            "rows.json",
            "gen_ppl_vs_nfe.csv",
            "gen_ppl_vs_entropy.csv",
            "report.md",
            "gen_ppl_vs_nfe.png",
            "gen_ppl_vs_entropy.png",
        )
    }
    write_json_atomic(paths["metrics.json"], _metrics(rows, reference))
    write_json_atomic(paths["rows.json"], {"reference": reference, "rows": list(rows)})
    _write_csv(paths["gen_ppl_vs_nfe.csv"], [r for _, curve in _curves(rows) for r in curve], NFE_COLUMNS)
    _write_csv(paths["gen_ppl_vs_entropy.csv"], ([reference] if reference else []) + list(rows), ENTROPY_COLUMNS)
    paths["report.md"].write_text(_markdown(rows, reference, title) + "\n", encoding="utf-8")
    _plot_nfe(paths["gen_ppl_vs_nfe.png"], rows, reference)
    _plot_entropy(paths["gen_ppl_vs_entropy.png"], rows, reference)
    return paths
