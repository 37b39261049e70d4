"""The report's first lines: the paper's claim, checked on this run's rows (MATH.md §4).

The claim is that FMLM writes text in **one** forward pass about as well as a discrete-diffusion
model (MDLM) does in several, and close to its own teacher (FLM) at many steps. :func:`headline`
picks those rows from the evaluation (FMLM at 1 and 4 steps, MDLM at 1, 2, 4, 8, FLM at 8 and at
its largest NFE, AR, the held-out text), lays them side by side (NLL per byte and Gen PPL with their
95 % intervals, entropy, one sample each) and states each comparison the numbers support.

Rows are the plain dicts of :mod:`flm.eval.evaluate`. :func:`mark_degenerate` adds the flag
``degenerate``: mean sample entropy below ``floor × the held-out text's entropy``
(:func:`flm.eval.floor.is_degenerate`). Such rows (e.g. ``the the the ...``) can score a low NLL and
Gen PPL and are never called the better model; :func:`degenerate_note` names them in one line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flm.eval.floor import is_degenerate
from flm.eval.judge import PROTOCOLS

__all__ = ["HEADLINE", "compare", "degenerate_note", "headline", "headline_rows", "mark_degenerate"]

Row = Mapping[str, Any]

HEADLINE: tuple[tuple[str, str, int | None], ...] = (
    ("fmlm", "flow_map", 1),
    ("fmlm", "flow_map", 4),
    ("mdlm", "ancestral", 1),
    ("mdlm", "ancestral", 2),
    ("mdlm", "ancestral", 4),
    ("mdlm", "ancestral", 8),
    ("flm", "euler", 8),
    ("flm", "euler", None),
    ("ar", "autoregressive", None),
)
"""``(model, variant, NFE)`` of the headline rows, in order; NFE ``None``: the model's largest."""


def mark_degenerate(rows: Sequence[Row], reference: Row, floor: float) -> list[dict[str, Any]]:
    """Copies of ``rows`` with ``degenerate = entropy < floor · reference["entropy"]`` (``floor`` in (0, 1])."""
    return [{**row, "degenerate": is_degenerate(row["entropy"], reference["entropy"], floor)} for row in rows]


def degenerate_note(rows: Sequence[Row]) -> str:
    """One line naming the models with rows flagged ``degenerate`` (and at which NFEs), or saying there are none."""
    found: dict[str, list[str]] = {}
    for row in rows:
        if row.get("degenerate"):
            found.setdefault(row["model"], []).append(f"{row['variant']} NFE {row['nfe']}")
    if not found:
        return "Degenerate rows (entropy below the floor): none."
    named = "; ".join(f"{model} ({', '.join(where)})" for model, where in found.items())
    return f"Degenerate rows (entropy below the floor): {named}."


def headline_rows(rows: Sequence[Row]) -> list[Row]:
    """The rows of :data:`HEADLINE` that exist in ``rows``, in that order (each at most once)."""
    picked: list[Row] = []
    for model, variant, nfe in HEADLINE:
        candidates = [r for r in rows if r["model"] == model and r["variant"] == variant]
        if nfe is None and candidates:
            candidates = [max(candidates, key=lambda r: r["nfe"])]
        elif nfe is not None:
            candidates = [r for r in candidates if r["nfe"] == nfe]
        picked += [r for r in candidates[:1] if all(r is not p for p in picked)]
    return picked


def _label(row: Row) -> str:
    if row["model"] == "data":
        return "held-out text"
    if row["model"] == "ar":
        return f"AR ({row['nfe']} cached calls)"
    return f"{row['model'].upper()} · {row['nfe']} step" + ("s" if row["nfe"] != 1 else "")


def _sample(row: Row, width: int = 110) -> str:
    text = " ".join(str(row["samples"][0]).split()) if row.get("samples") else ""
    text = text if len(text) <= width else text[: width - 1] + "…"
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`" if text else "—"


def compare(a: Row, b: Row) -> str:
    """How row ``a`` compares with row ``b`` in NLL per byte (lower is better), as a short phrase.

    ``better`` / ``worse`` by the point estimates, ``intervals separate`` when the two 95 % bootstrap
    intervals do not overlap; a degenerate row (below the entropy floor) is never the better one.
    """
    if a.get("degenerate") or b.get("degenerate"):
        who = " and ".join(_label(r) for r in (a, b) if r.get("degenerate"))
        return f"not compared: {who} below the entropy floor (degenerate)"
    separate = a["nll_per_byte_high"] < b["nll_per_byte_low"] or b["nll_per_byte_high"] < a["nll_per_byte_low"]
    verdict = "better" if a["nll_per_byte"] < b["nll_per_byte"] else "worse"
    return f"{verdict} ({'intervals separate' if separate else 'intervals overlap'})"


def _claims(picked: Sequence[Row]) -> list[str]:
    def find(model: str, nfe: int | None = None) -> Row | None:
        own = [r for r in picked if r["model"] == model and (nfe is None or r["nfe"] == nfe)]
        return own[-1] if nfe is None and own else (own[0] if own else None)

    fmlm1, fmlm4, flm8, flm_max = find("fmlm", 1), find("fmlm", 4), find("flm", 8), find("flm")
    lines = []
    if fmlm1 is not None:
        for mdlm in (r for r in picked if r["model"] == "mdlm"):
            lines.append(f"- FMLM · 1 step vs {_label(mdlm)}: {compare(fmlm1, mdlm)}")
    if fmlm4 is not None and flm_max is not None:
        gap = fmlm4["nll_per_byte"] / flm_max["nll_per_byte"] - 1
        lines.append(f"- FMLM · 4 steps vs {_label(flm_max)} (its teacher): {gap:+.1%} NLL per byte")
    if flm8 is not None and flm_max is not None and flm_max is not flm8:
        lines.append(f"- {_label(flm_max)} vs FLM · 8 steps: {compare(flm_max, flm8)}")
    return lines


def headline(rows: Sequence[Row], reference: Row, judge: str, protocol: str | None = None) -> str:
    """The report's first section (Markdown): the claim's rows side by side, each comparison and which models have
    degenerate rows (:func:`degenerate_note`); ``protocol`` (``document`` or ``reference``,
    :data:`flm.eval.judge.PROTOCOLS`) is named when given."""
    picked = headline_rows(rows)
    named = f"protocol `{protocol}` ({PROTOCOLS[protocol]}); " if protocol is not None else ""
    lines = [
        "## One forward pass vs several",
        "",
        f"Judge {judge}; {named}{reference['n_samples']} samples per row; NLL per byte (nats per UTF-8 byte of "
        "decoded text, lower is better) is the tokenization-independent score, Gen PPL the per-judge-token one; "
        "95 % bootstrap intervals. ⚠ marks a row below the entropy floor (degenerate text).",
        "",
        "| model | NLL / byte | Gen PPL | entropy | a sample |",
        "| --- | --- | --- | ---: | --- |",
    ]
    for row in [*picked, reference]:
        flag = " ⚠" if row.get("degenerate") else ""
        lines.append(
            f"| {_label(row)}{flag} | {row['nll_per_byte']:.3f} [{row['nll_per_byte_low']:.3f}, "
            f"{row['nll_per_byte_high']:.3f}] | {row['gen_ppl']:.1f} [{row['ci_low']:.1f}, {row['ci_high']:.1f}] | "
            f"{row['entropy']:.3f} | {_sample(row)} |"
        )
    claims = _claims(picked)
    return "\n".join(lines + (["", *claims] if claims else []) + ["", degenerate_note(rows)])
