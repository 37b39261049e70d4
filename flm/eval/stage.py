"""The evaluate stage's library body: saved models -> entries -> rows -> report (MATH.md §4).

:func:`evaluate_models` loads each model of ``eval.models`` from its checkpoint directory
(:class:`flm.registry.generator.TextGenerator`; the directory's ``model_kind`` must match the name),
builds its :class:`~flm.eval.evaluate.Entry` list (:func:`model_entries`):

* ``flm``: the Euler sampler at NFE ``1, 2, 4, ..., max_nfe`` (variant ``euler``);
* ``fmlm``: the flow map at each of ``fmlm_nfe``, deterministic (``flow_map``) and re-noised
  (``flow_map renoise=g``);
* ``mdlm``: the ancestral sampler at NFE ``1, 2, 4, ..., max_nfe`` (``ancestral``);
* ``ar``: one row, NFE ``L`` (one cached network call per position; ``autoregressive``);

samples ``L`` tokens per sequence (``L`` of ``data/tokens``), judges them, adds the reference row
of ``n_samples`` held-out validation blocks, flags the rows below ``entropy_floor`` × the reference
entropy (:func:`flm.eval.headline.mark_degenerate`) and writes the report
(:func:`flm.eval.report.write_report`, headed by :func:`flm.eval.headline.headline`).

**Decoding** (``eval.protocol``, MATH.md §4). Samples and held-out blocks are packed streams: a
document separator (the data tokenizer's EOS, and its BOS when distinct) may appear anywhere.

* ``document``: :func:`separator_decoder` decodes the ids *before the first separator* and the
  judge appends its own EOS (every non-EOS token plus the first EOS), so a data separator is
  exactly the judge's end-of-text boundary; the text after it is not scored, and the report shows
  exactly the scored texts.
* ``reference``: :func:`whole_decoder` decodes every id, special tokens kept as their strings
  (``[CLS]``/``[SEP]`` on LM1B, ``<|endoftext|>`` on OWT), as the reference's ``batch_decode``; the
  judge reads the first ``L`` of its tokens (``L`` of ``data/tokens``) with no BOS.

Samples and the reference are decoded and scored alike.

:func:`version_tags` turns one model's row at ``promote_nfe`` (:func:`promote_row`; and the reference
row) into the model-version tags that :func:`flm.registry.promote.promote` reads; :func:`summary_metrics`
and :func:`rows_table` are what the evaluate stage logs to MLflow (a few metrics, one table).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flm.config import EvalParams
from flm.data.blocks import TokenBlocks
from flm.eval.evaluate import Entry, EvalSettings, evaluate, reference_row
from flm.eval.floor import is_degenerate
from flm.eval.headline import mark_degenerate
from flm.eval.judge import Judge
from flm.eval.report import write_report
from flm.registry import promote as tags

__all__ = [
    "DEGENERATE", "TABLE_COLUMNS", "EvalResult", "evaluate_models", "evaluation_text", "model_entries", "promote_row",
    "rows_table", "separator_decoder", "summary_metrics", "version_tags", "whole_decoder",
]

DEGENERATE = "eval.degenerate"
"""Version tag: ``true`` when the version's samples at ``promote_nfe`` are below the entropy floor."""

Row = Mapping[str, Any]


@dataclass(frozen=True)
class EvalResult:
    """The rows (one per model, NFE and variant), the held-out reference row and the report files."""

    rows: list[dict[str, Any]]
    reference: dict[str, Any]
    files: dict[str, Path]


def separator_decoder(tokenizer_dir: str | Path) -> Callable[[list[int]], str]:
    """``decode(ids)``: the text of ``ids`` up to (not including) the first document separator."""
    from flm.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    separators = {tokenizer.info.eos_id} | ({tokenizer.info.bos_id} - {None})

    def decode(ids: list[int]) -> str:
        cut = next((i for i, token in enumerate(ids) if token in separators), len(ids))
        return tokenizer.decode(ids[:cut])

    return decode


def whole_decoder(tokenizer_dir: str | Path) -> Callable[[list[int]], str]:
    """``decode(ids)``: the text of all of ``ids``, special tokens kept as their strings (not skipped)."""
    from flm.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir).tokenizer

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=False)

    return decode


def model_entries(name: str, generator: Any, params: EvalParams, length: int) -> list[Entry]:
    """The entries of model ``name`` sampled by ``generator`` (``sample_ids(n, steps, length, seed, renoise)``)."""

    def sampler(renoise: float = 0.0) -> Callable[[int, int, int], list[list[int]]]:
        def sample(n: int, steps: int, seed: int) -> list[list[int]]:
            return generator.sample_ids(n, steps, length, seed, renoise=renoise).tolist()

        return sample

    if name == "flm":
        return [Entry(name, "euler", nfe, sampler()) for nfe in params.nfe_grid]
    if name == "mdlm":
        return [Entry(name, "ancestral", nfe, sampler()) for nfe in params.nfe_grid]
    if name == "ar":
        return [Entry(name, "autoregressive", length, sampler())]
    if name == "fmlm":
        g = params.fmlm_renoise
        return [entry for nfe in params.fmlm_nfe for entry in (
            Entry(name, "flow_map", nfe, sampler()),
            Entry(name, "flow_map", nfe, sampler(g), {"renoise": g}),
        )]
    raise ValueError(f"unknown model {name!r}; known: flm, fmlm, mdlm, ar")


def evaluate_models(
    params: EvalParams, model_dirs: Mapping[str, str | Path], tokens_dir: str | Path, tokenizer_dir: str | Path,
    out_dir: str | Path, judge: Judge, device: str = "cpu", progress: bool = False,
) -> EvalResult:
    """Evaluate every model of ``params.models`` (read from ``model_dirs[name]``) and write the report.

    Raises:
        FileNotFoundError: a model directory is missing (the message names it).
        ValueError: a directory holds another kind of model, or its vocabulary is not the tokenizer's.
    """
    from flm.registry.generator import TextGenerator

    blocks = TokenBlocks(tokens_dir, "val")
    reference_protocol = params.protocol == "reference"
    decode = (whole_decoder if reference_protocol else separator_decoder)(tokenizer_dir)
    settings = EvalSettings(params.n_samples, params.seed, params.batch_size, params.n_boot, n_show=params.n_show,
                            progress=progress, protocol=params.protocol,
                            max_length=blocks.seq_len if reference_protocol else None)
    entries: list[Entry] = []
    for name in params.models:
        folder = Path(model_dirs[name])
        generator = TextGenerator(folder, device=device)
        if generator.kind != name:
            raise ValueError(f"{folder}: holds a {generator.kind!r} model, expected {name!r}")
        if generator.vocab_size != blocks.vocab_size:
            raise ValueError(f"{folder}: the model has V = {generator.vocab_size}, {tokens_dir} has "
                             f"V = {blocks.vocab_size}")
        entries += model_entries(name, generator, params, blocks.seq_len)
    reference = reference_row(blocks, decode, judge, settings)
    rows = mark_degenerate(evaluate(entries, decode, judge, settings), reference, params.entropy_floor)
    title = (f"Evaluation (judge {judge.name}, protocol {params.protocol}, {params.n_samples} samples, "
             f"seed {params.seed})")
    files = write_report(rows, out_dir, reference, title=title, judge=judge.name, entropy_floor=params.entropy_floor,
                         protocol=params.protocol)
    return EvalResult(rows, reference, files)


def promote_row(name: str, rows: Sequence[Row], params: EvalParams) -> Row:
    """``name``'s row that stands for the model: its default variant at ``promote_nfe`` (AR: its one row).

    Raises:
        ValueError: ``rows`` hold no such row (the message names ``promote_nfe``).
    """
    own = [r for r in rows if r["model"] == name and not r["options"]]
    row = own[0] if name == "ar" and own else next((r for r in own if r["nfe"] == params.promote_nfe), None)
    if row is None:
        raise ValueError(f"no {name} row at promote_nfe={params.promote_nfe}")
    return row


def summary_metrics(rows: Sequence[Row], reference: Row, params: EvalParams) -> dict[str, float]:
    """The evaluation's few MLflow metrics: ``gen_ppl/<model>`` and ``entropy/<model>`` of each model's
    :func:`promote_row`, and the held-out text's ``gen_ppl/data`` and ``entropy/data``.

    ``eval.models`` names each of the four models at most once, so this is at most 10 metrics; every row is
    in the evaluation's table artifact instead.
    """
    out: dict[str, float] = {}
    for name in params.models:
        row = promote_row(name, rows, params)
        out |= {f"gen_ppl/{name}": float(row["gen_ppl"]), f"entropy/{name}": float(row["entropy"])}
    return out | {"gen_ppl/data": float(reference["gen_ppl"]), "entropy/data": float(reference["entropy"])}


TABLE_COLUMNS = ("model", "variant", "nfe", "nll_per_byte", "nll_per_byte_low", "nll_per_byte_high", "gen_ppl",
                 "ci_low", "ci_high", "entropy", "degenerate", "seconds_per_sequence", "n_samples")
"""Columns of :func:`rows_table` (then ``sample``: each row's first sample text)."""


def rows_table(rows: Sequence[Row], reference: Row) -> dict[str, list[Any]]:
    """The reference row (model ``data``) and every row as columns (:data:`TABLE_COLUMNS` and ``sample``), for
    ``MlflowClient.log_table``; a missing value (the reference's time per sequence) is ``None``."""
    ordered = [{**reference, "degenerate": False}, *rows]
    table = {key: [row.get(key) for row in ordered] for key in TABLE_COLUMNS}
    table["degenerate"] = [bool(flag) for flag in table["degenerate"]]
    table["sample"] = [str(row["samples"][0]) if row.get("samples") else "" for row in ordered]
    return table


def version_tags(name: str, rows: Sequence[Row], reference: Row, params: EvalParams, judge: str) -> dict[str, str]:
    """Model-version tags of ``name``'s evaluation: its default variant at ``promote_nfe`` (AR: its one row).

    Keys are those :func:`flm.registry.promote.promote` reads (``eval.gen_ppl``, ``eval.entropy``,
    ``eval.reference_entropy``, ``eval.protocol``, ...), and :data:`DEGENERATE` (``true`` / ``false``:
    :func:`flm.eval.floor.is_degenerate` at ``eval.entropy_floor``, also a tag).
    """
    row = promote_row(name, rows, params)
    values = {
        tags.GEN_PPL: row["gen_ppl"], tags.ENTROPY: row["entropy"], tags.REFERENCE_ENTROPY: reference["entropy"],
        "eval.ci_low": row["ci_low"], "eval.ci_high": row["ci_high"], "eval.reference_gen_ppl": reference["gen_ppl"],
        "eval.nfe": row["nfe"], "eval.n_samples": row["n_samples"], "eval.seed": params.seed,
    }
    protocol = {tags.JUDGE: judge, tags.PROMOTE_NFE: str(params.promote_nfe), tags.VARIANT: row["variant"],
                tags.GEN_PPL_PROTOCOL: params.protocol}
    degenerate = is_degenerate(row["entropy"], reference["entropy"], params.entropy_floor)
    flags = {DEGENERATE: str(degenerate).lower(), "eval.entropy_floor": repr(float(params.entropy_floor))}
    return {key: repr(float(v)) if isinstance(v, float) else str(v) for key, v in values.items()} | protocol | flags


def evaluation_text(values: Mapping[str, str]) -> str:
    """One Markdown sentence from :func:`flm.eval.stage.version_tags` ``values``: Gen PPL at the promotion NFE,
    entropy against the held-out text, ``degenerate`` when below ``eval.entropy_floor`` x that, and the run
    (``eval.run_id``, which the evaluate stage adds, when present)."""
    text = (f"Gen PPL {float(values['eval.gen_ppl']):.2f} at NFE {values['eval.nfe']} "
            f"(`{values['eval.variant']}`, judge {values['eval.judge']}, protocol `{values['eval.protocol']}`; "
            f"held-out text {float(values['eval.reference_gen_ppl']):.2f}); entropy "
            f"{float(values['eval.entropy']):.2f} nats (held-out {float(values['eval.reference_entropy']):.2f})")
    if values["eval.degenerate"] == "true":
        text += f", **degenerate** (below {float(values['eval.entropy_floor']):g} x held-out)"
    return text + (f"; run `{values['eval.run_id']}`." if values.get("eval.run_id") else ".")
