"""The evaluate stage's body (the Prefect flow ``evaluate`` calls :func:`run_evaluate`).

Reads ``models/<name>`` for each of ``eval.models``, ``data/tokens`` (the held-out ``val`` split)
and ``data/tokenizer``; writes the DVC outputs ``reports/eval/`` (``report.md``, the PNG plots, the
CSVs of the DVC plots, ``rows.json``, ``metrics.json``) and ``metrics/eval.json`` (DVC metrics). The
work itself is :func:`flm.eval.stage.evaluate_models`; this module only wires MLflow around it:

* an MLflow run ``evaluate`` tagged with the lineage (git commit, DVC hashes of the inputs, the
  Prefect flow-run id), the judge and the Gen PPL ``protocol``, the ``eval`` params, a metric per
  row (``gen_ppl/flm/nfe_8``, ``nll_per_byte/...``, ``entropy/...``, ``ci_low/...``, ``ci_high/...``,
  ``sec_per_seq/...``; the reference row as ``nll_per_byte/data``, ``gen_ppl/data``, ``entropy/data``)
  and the report directory as artifacts (``eval/``); the report's headline is printed (logged) at the end;
* on every registered version of ``<name>`` whose ``ema_sha256`` tag matches
  ``models/<name>/ema.safetensors`` (:func:`flm.registry.publish.versions_with_weights`), the tags
  of :func:`flm.eval.stage.version_tags` (Gen PPL and entropy at ``promote_nfe``, the reference
  entropy, the judge, the protocol) plus ``eval.run_id``: what the promote flow decides on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flm.config import Params

__all__ = ["run_evaluate"]

ROW_METRICS = {"nll_per_byte": "nll_per_byte", "gen_ppl": "gen_ppl", "ci_low": "ci_low", "ci_high": "ci_high",
               "entropy": "entropy", "sec_per_seq": "seconds_per_sequence"}
"""MLflow metric prefix -> row field."""


def _row_metrics(rows: list[dict[str, Any]], reference: dict[str, Any]) -> dict[str, float]:
    from flm.eval.stage import metric_key

    out = {metric_key(prefix, row): float(row[field]) for row in rows for prefix, field in ROW_METRICS.items()}
    out |= {metric_key(key, reference): float(reference[key]) for key in ("nll_per_byte", "gen_ppl", "entropy")}
    return out


def run_evaluate(params: Params, root: str | Path = ".", device: str | None = None,
                 log: Any = print) -> dict[str, Any]:
    """Run the evaluate stage in project ``root`` (module docstring); ``device`` default: CUDA if available.

    Returns:
        ``run_id``, ``metrics`` (``metrics/eval.json``'s content), ``report`` (the directory),
        ``versions`` (``{model: [tagged versions]}``).
    """
    from mlflow import MlflowClient

    from flm.data.atomic import write_json_atomic
    from flm.device import resolve_device
    from flm.environment import hermetic
    from flm.eval.headline import headline
    from flm.eval.judge import load_judge
    from flm.eval.stage import evaluate_models, version_tags
    from flm.registry.publish import versions_with_weights
    from flm.tracking import default_tracking_uri, make_tracker
    from pipelines.lineage import lineage_tags

    root = Path(root).resolve()
    state = hermetic(root / ".state")
    device = resolve_device(device)  # before MLflow: a device this machine lacks is one line
    spec = params.eval
    uri = default_tracking_uri(state)
    tags = lineage_tags(root, "evaluate") | {"stage": "evaluate", "profile": params.profile, "judge": spec.judge,
                                             "protocol": spec.protocol}
    run = make_tracker("flm", run_name="evaluate", state_dir=state, tracking_uri=uri, tags=tags)
    try:
        run.log_params({"eval": spec.model_dump(mode="json")})
        log(f"evaluate: judge {spec.judge} ({spec.protocol} protocol) on {device}, models {', '.join(spec.models)}, "
            f"MLflow run {run.run_id}")
        judge_spec = f"ar:{root / spec.judge[3:]}" if spec.judge.startswith("ar:") else spec.judge
        judge = load_judge(judge_spec, state, device, tokenizer_dir=root / "data" / "tokenizer",
                           revision=spec.judge_revision)
        model_dirs = {name: root / "models" / name for name in spec.models}
        result = evaluate_models(spec, model_dirs, root / "data" / "tokens", root / "data" / "tokenizer",
                                 root / "reports" / "eval", judge, device, progress=True)
        metrics_file = root / "metrics" / "eval.json"
        metrics = {"eval": json.loads(result.files["metrics.json"].read_text(encoding="utf-8"))}
        write_json_atomic(metrics_file, metrics)
        run.log_metrics(_row_metrics(result.rows, result.reference), step=0)
        summary = headline(result.rows, result.reference, judge.name, spec.protocol)
        log(summary + f"\n(full report: {result.files['report.md']})")
        run.log_artifacts(root / "reports" / "eval", "eval")
        run.log_artifact(metrics_file)
        client = MlflowClient(uri)
        tagged: dict[str, list[str]] = {}
        for name in spec.models:
            values = version_tags(name, result.rows, result.reference, spec, judge.name) | {"eval.run_id": run.run_id}
            tagged[name] = versions_with_weights(client, name, model_dirs[name])
            for version in tagged[name]:
                for key, value in values.items():
                    client.set_model_version_tag(name, version, key, value)
            found = ", ".join(f"v{v}" for v in tagged[name]) or "none (not registered with these weights)"
            log(f"evaluate: {name} Gen PPL {float(values['eval.gen_ppl']):.2f} at NFE {spec.promote_nfe}; "
                f"tagged versions: {found}")
    except BaseException:
        run.close("FAILED")
        raise
    run.close("FINISHED")
    return {"run_id": run.run_id, "metrics": metrics, "report": str(root / "reports" / "eval"), "versions": tagged}

