"""The evaluate stage's outputs, from the rows of :mod:`flm.eval.evaluate`.

:func:`write_report` writes into ``out_dir``:

* ``metrics.json`` (DVC metrics): ``{"protocol": P, "reference": {...}, MODEL: {VARIANT: {"nfe=N": {...}}}}``
  with ``nll_per_byte`` (and its interval), ``gen_ppl``, ``ci_low``, ``ci_high``, ``entropy``,
  ``degenerate``, ``seconds_per_sequence`` per entry; ``protocol`` (the Gen PPL protocol,
  ``document`` or ``reference``) only when given;
* ``rows.json``: every row as given, sample texts and sampler options included (and the protocol);
* ``gen_ppl_vs_nfe.csv`` (DVC plots): ``model, variant, nfe, nll_per_byte, nll_per_byte_low,
  nll_per_byte_high, gen_ppl, ci_low, ci_high, entropy, degenerate, seconds_per_sequence``, one line
  per entry;
* ``gen_ppl_vs_entropy.csv`` (DVC plots): ``model, variant, nfe, entropy, gen_ppl, nll_per_byte,
  degenerate``, the reference included as model ``data``;
* ``report.md``: the headline (:func:`flm.eval.headline.headline`: the protocol, the claim's rows side by side),
  then the full table (NLL per byte and Gen PPL ± interval, entropy, time per sequence; rows by
  model, variant and NFE; ⚠ on rows below the entropy floor), the held-out reference line, and
  the sample texts per model and NFE;
* ``nll_per_byte_vs_nfe.png`` and ``gen_ppl_vs_nfe.png`` (log2 NFE axis, one curve per model and
  variant with its interval band, the reference as a dashed line) and ``gen_ppl_vs_entropy.png``
  (the entropy floor shaded); rows below the floor are drawn as red crosses in every plot
  (matplotlib, Agg canvas, no pyplot).

A row's ``degenerate`` flag comes from :func:`flm.eval.headline.mark_degenerate` (absent: not flagged).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flm.data.atomic import write_json_atomic
from flm.eval.headline import headline
from flm.eval.judge import PROTOCOLS

__all__ = ["write_report"]

Row = Mapping[str, Any]
BYTE_SCORES = ["nll_per_byte", "nll_per_byte_low", "nll_per_byte_high"]
SCORES = [*BYTE_SCORES, "gen_ppl", "ci_low", "ci_high", "entropy"]
NFE_COLUMNS = ["model", "variant", "nfe", *SCORES, "degenerate", "seconds_per_sequence"]
ENTROPY_COLUMNS = ["model", "variant", "nfe", "entropy", "gen_ppl", "nll_per_byte", "degenerate"]
DEGENERATE = "below the entropy floor (degenerate)"


def _curves(rows: Sequence[Row]) -> list[tuple[str, list[Row]]]:
    """Rows grouped by ``model variant`` (first-seen order), each curve sorted by NFE."""
    order: dict[str, list[Row]] = {}
    for row in rows:
        order.setdefault(f"{row['model']} {row['variant']}", []).append(row)
    return [(label, sorted(curve, key=lambda r: r["nfe"])) for label, curve in order.items()]


def _metrics(rows: Sequence[Row], reference: Row | None, protocol: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"protocol": protocol} if protocol is not None else {}
    if reference is not None:
        out["reference"] = {key: reference[key] for key in SCORES}
    for row in rows:
        scores = {key: row[key] for key in [*SCORES, "seconds_per_sequence"]} | {"degenerate": _degenerate(row)}
        out.setdefault(row["model"], {}).setdefault(row["variant"], {})[f"nfe={row['nfe']}"] = scores
    return out


def _degenerate(row: Row) -> bool:
    return bool(row.get("degenerate", False))


def _write_csv(path: Path, rows: Sequence[Row], columns: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({**row, "degenerate": _degenerate(row)} for row in rows)


def _cell(value: Any, fmt: str = "{:.2f}") -> str:
    return "—" if value is None else fmt.format(value)


def _table_line(row: Row) -> str:
    cells = [
        row["model"] + (" ⚠" if _degenerate(row) else ""),
        row["variant"].replace("|", "\\|"),
        str(row["nfe"]) if row["nfe"] else "—",
        f"{row['nll_per_byte']:.3f}",
        f"[{row['nll_per_byte_low']:.3f}, {row['nll_per_byte_high']:.3f}]",
        f"{row['gen_ppl']:.2f}",
        f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}]",
        f"{row['entropy']:.3f}",
        _cell(row.get("seconds_per_sequence"), "{:.4f}"),
        _cell(row.get("tokens_per_second"), "{:.0f}"),
        str(row["n_samples"]),
    ]
    return "| " + " | ".join(cells) + " |"


def _markdown(rows: Sequence[Row], reference: Row | None, title: str, judge: str, protocol: str | None) -> str:
    lines = [f"# {title}", ""]
    if reference is not None:
        lines += [headline(rows, reference, judge, protocol), "", "## Every row", ""]
        lines += [
            f"Held-out text (the reference line): NLL per byte {reference['nll_per_byte']:.3f} "
            f"[{reference['nll_per_byte_low']:.3f}, {reference['nll_per_byte_high']:.3f}], Gen PPL "
            f"{reference['gen_ppl']:.2f} [{reference['ci_low']:.2f}, {reference['ci_high']:.2f}], entropy "
            f"{reference['entropy']:.3f} nats, {reference['n_samples']} blocks.",
            "",
        ]
    elif protocol is not None:
        lines += [f"Gen PPL protocol: `{protocol}` ({PROTOCOLS[protocol]}).", ""]
    if any(_degenerate(r) for r in rows):
        lines += [f"⚠: {DEGENERATE}.", ""]
    lines += [
        "| model | variant | NFE | NLL / byte | bootstrap CI | Gen PPL | bootstrap CI | entropy (nats) | s / sequence "
        "| tokens / s | samples |",
        "| --- | --- | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |",
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


def _save(fig, ax, path: Path, xlabel: str, ylabel: str = "Gen PPL (judge)", log: bool = True) -> Any:
    """Log (Gen PPL) or linear (NLL per byte) y axis with plain numbers, labels, grid, legend; write the PNG."""
    from matplotlib.ticker import FuncFormatter

    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "25" else ""))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return fig


def _mark_degenerate(ax, rows: Sequence[Row], x: str, y: str) -> None:
    """Red crosses over the rows below the entropy floor (one legend entry)."""
    bad = [r for r in rows if _degenerate(r)]
    if bad:
        ax.plot([r[x] for r in bad], [r[y] for r in bad], marker="x", markersize=11, markeredgewidth=2,
                color="red", linestyle="", label=DEGENERATE, zorder=5)


def _plot_nfe(path: Path, rows: Sequence[Row], reference: Row | None, score: str = "gen_ppl") -> Any:
    """``score`` (``gen_ppl`` or ``nll_per_byte``) against NFE, one curve per model and variant; the figure."""
    low_key, high_key = ("ci_low", "ci_high") if score == "gen_ppl" else (f"{score}_low", f"{score}_high")
    fig, ax = _axes()
    for label, curve in _curves(rows):
        nfe = [r["nfe"] for r in curve]
        (line,) = ax.plot(nfe, [r[score] for r in curve], marker="o", label=label)
        low, high = [r[low_key] for r in curve], [r[high_key] for r in curve]
        ax.fill_between(nfe, low, high, color=line.get_color(), alpha=0.2)
    _mark_degenerate(ax, rows, "nfe", score)
    if reference is not None:
        label = f"held-out text ({reference[score]:.{1 if score == 'gen_ppl' else 3}f})"
        ax.axhline(reference[score], color="black", linestyle="--", label=label)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter("{x:g}")
    if score == "gen_ppl":
        return _save(fig, ax, path, "NFE (sampling steps)")
    return _save(fig, ax, path, "NFE (sampling steps)", "judge NLL per byte (nats)", log=False)


def _plot_entropy(path: Path, rows: Sequence[Row], reference: Row | None, floor: float | None) -> Any:
    """Gen PPL against mean sample entropy, NFEs annotated, the entropy floor shaded; the figure."""
    fig, ax = _axes()
    for label, curve in _curves(rows):
        ax.plot([r["entropy"] for r in curve], [r["gen_ppl"] for r in curve], marker="o", label=label)
        for r in curve:
            xy = (r["entropy"], r["gen_ppl"])
            ax.annotate(str(r["nfe"]), xy, fontsize="x-small", xytext=(3, 3), textcoords="offset points")
    _mark_degenerate(ax, rows, "entropy", "gen_ppl")
    if reference is not None:
        xy = ([reference["entropy"]], [reference["gen_ppl"]])
        ax.plot(*xy, marker="*", markersize=14, color="black", linestyle="", label="held-out text")
        if floor is not None:
            ax.axvspan(min(0.0, *(r["entropy"] for r in rows)), floor * reference["entropy"], color="red",
                       alpha=0.08, label=f"entropy < {floor:g} × held-out (degenerate)")
    return _save(fig, ax, path, "mean sample entropy (nats)")


def write_report(
    rows: Sequence[Row],
    out_dir: str | Path,
    reference: Row | None = None,
    title: str = "Generative perplexity",
    judge: str = "the judge",
    entropy_floor: float | None = None,
    protocol: str | None = None,
) -> dict[str, Path]:
    """Write the files listed in the module docstring into ``out_dir`` (created); return them by name.

    ``protocol``: the Gen PPL protocol the rows were scored under (``document`` or ``reference``),
    named in ``metrics.json``, ``rows.json`` and ``report.md``.
    """
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
            "nll_per_byte_vs_nfe.png",
            "gen_ppl_vs_nfe.png",
            "gen_ppl_vs_entropy.png",
        )
    }
    named = {"protocol": protocol} if protocol is not None else {}
    write_json_atomic(paths["metrics.json"], _metrics(rows, reference, protocol))
    write_json_atomic(paths["rows.json"], {**named, "reference": reference, "rows": list(rows)})
    _write_csv(paths["gen_ppl_vs_nfe.csv"], [r for _, curve in _curves(rows) for r in curve], NFE_COLUMNS)
    _write_csv(paths["gen_ppl_vs_entropy.csv"], ([reference] if reference else []) + list(rows), ENTROPY_COLUMNS)
    paths["report.md"].write_text(_markdown(rows, reference, title, judge, protocol) + "\n", encoding="utf-8")
    _plot_nfe(paths["nll_per_byte_vs_nfe.png"], rows, reference, "nll_per_byte")
    _plot_nfe(paths["gen_ppl_vs_nfe.png"], rows, reference)
    _plot_entropy(paths["gen_ppl_vs_entropy.png"], rows, reference, entropy_floor)
    return paths
