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
  (the entropy floor ``entropy_floor × H(held-out)`` as a labelled vertical line); rows below the floor
  are drawn with hollow markers in every plot, explained in the legend (matplotlib, Agg canvas, no
  pyplot).

A row's ``degenerate`` flag comes from :func:`flm.eval.headline.mark_degenerate` (absent: not flagged).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flm.data.atomic import write_json_atomic
from flm.eval.floor import entropy_limit
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


def _hollow_note(floor: float | None) -> str:
    """The legend entry of the hollow markers."""
    rule = f"{floor:g} × held-out" if floor is not None else "the floor"
    return f"hollow: degenerate (entropy < {rule})"


def _draw_curve(ax, curve: Sequence[Row], x: str, y: str, label: str) -> Any:
    """One curve: its line and filled markers, the degenerate rows' markers hollow (same colour); the line."""
    bad = [i for i, r in enumerate(curve) if _degenerate(r)]
    good = [i for i in range(len(curve)) if i not in bad]
    (line,) = ax.plot([r[x] for r in curve], [r[y] for r in curve], marker="o", markevery=good, label=label)
    if bad:
        ax.plot([curve[i][x] for i in bad], [curve[i][y] for i in bad], marker="o", markersize=9, markeredgewidth=1.8,
                markerfacecolor="none", markeredgecolor=line.get_color(), linestyle="", label="_degenerate", zorder=5)
    return line


def _note_degenerate(ax, rows: Sequence[Row], floor: float | None) -> None:
    """A legend entry explaining the hollow markers, when any row is degenerate."""
    if any(_degenerate(r) for r in rows):
        ax.plot([], [], marker="o", markersize=9, markeredgewidth=1.8, markerfacecolor="none", markeredgecolor="grey",
                linestyle="", label=_hollow_note(floor))


def _plot_nfe(path: Path, rows: Sequence[Row], reference: Row | None, score: str = "gen_ppl",
              floor: float | None = None) -> Any:
    """``score`` (``gen_ppl`` or ``nll_per_byte``) against NFE, one curve per model and variant; the figure.

    Degenerate rows (``floor``: the entropy floor, named in the legend) are hollow markers.
    """
    low_key, high_key = ("ci_low", "ci_high") if score == "gen_ppl" else (f"{score}_low", f"{score}_high")
    fig, ax = _axes()
    for label, curve in _curves(rows):
        line = _draw_curve(ax, curve, "nfe", score, label)
        nfe, low, high = [r["nfe"] for r in curve], [r[low_key] for r in curve], [r[high_key] for r in curve]
        ax.fill_between(nfe, low, high, color=line.get_color(), alpha=0.2)
    _note_degenerate(ax, rows, floor)
    if reference is not None:
        label = f"held-out text ({reference[score]:.{1 if score == 'gen_ppl' else 3}f})"
        ax.axhline(reference[score], color="black", linestyle="--", label=label)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter("{x:g}")
    if score == "gen_ppl":
        return _save(fig, ax, path, "NFE (sampling steps)")
    return _save(fig, ax, path, "NFE (sampling steps)", "judge NLL per byte (nats)", log=False)


def _plot_entropy(path: Path, rows: Sequence[Row], reference: Row | None, floor: float | None) -> Any:
    """Gen PPL against mean sample entropy, NFEs annotated, degenerate rows hollow; the figure.

    With a reference and a ``floor``, the entropy floor ``floor × H(held-out)`` is a labelled vertical line
    (the region below it lightly shaded).
    """
    fig, ax = _axes()
    for label, curve in _curves(rows):
        _draw_curve(ax, curve, "entropy", "gen_ppl", label)
        for r in curve:
            xy = (r["entropy"], r["gen_ppl"])
            ax.annotate(str(r["nfe"]), xy, fontsize="x-small", xytext=(3, 3), textcoords="offset points")
    _note_degenerate(ax, rows, floor)
    if reference is not None:
        xy = ([reference["entropy"]], [reference["gen_ppl"]])
        ax.plot(*xy, marker="*", markersize=14, color="black", linestyle="", label="held-out text")
        if floor is not None:
            limit = entropy_limit(reference["entropy"], floor)
            ax.axvspan(min(0.0, *(r["entropy"] for r in rows)), limit, color="red", alpha=0.06)
            ax.axvline(limit, color="red", linestyle=":", linewidth=1.5,
                       label=f"entropy floor: {floor:g} × held-out = {limit:.2f} nats")
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
    _plot_nfe(paths["nll_per_byte_vs_nfe.png"], rows, reference, "nll_per_byte", entropy_floor)
    _plot_nfe(paths["gen_ppl_vs_nfe.png"], rows, reference, floor=entropy_floor)
    _plot_entropy(paths["gen_ppl_vs_entropy.png"], rows, reference, entropy_floor)
    return paths
