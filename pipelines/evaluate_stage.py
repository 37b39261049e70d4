"""The evaluate stage's body (the Prefect flow ``evaluate`` calls :func:`run_evaluate`).

Reads ``models/<name>`` for each of ``eval.models``, ``data/tokens`` (the held-out ``val`` split)
and ``data/tokenizer``; writes the DVC outputs ``reports/eval/`` (``report.md``, the PNG plots, the
CSVs of the DVC plots, ``rows.json``, ``metrics.json``) and ``metrics/eval.json`` (DVC metrics). The
work itself is :func:`flm.eval.stage.evaluate_models`; this module only wires MLflow around it:

* an MLflow run ``evaluate`` (experiment ``flm``, tagged as model training) tagged with the lineage
  (git commit, DVC hashes of the inputs, the Prefect flow-run id), the judge and the Gen PPL
  ``protocol``; the ``eval`` params; every row and the reference row as **one table** artifact
  (:data:`TABLE`, :func:`flm.eval.stage.rows_table`: model, variant, NFE, NLL per byte and Gen PPL
  with their intervals, entropy, ``degenerate``, time per sequence, one sample); a **few metrics**
  (:func:`flm.eval.stage.summary_metrics`: ``gen_ppl/<model>`` and ``entropy/<model>`` at
  ``promote_nfe``, ``gen_ppl/data`` and ``entropy/data``: at most 10 for the four models); the
  report directory as artifacts (``eval/``); the report's headline (which names the degenerate
  models) is printed (logged) at the end;
* on every registered version of ``<name>`` whose ``ema_sha256`` tag matches
  ``models/<name>/ema.safetensors`` (:func:`flm.registry.publish.versions_with_weights`), the tags
  of :func:`flm.eval.stage.version_tags` (Gen PPL and entropy at ``promote_nfe``, the reference
  entropy, ``eval.degenerate``, the judge, the protocol) plus ``eval.run_id``: what the promote flow
  decides on; and the version's description gets its evaluation paragraph
  (:func:`flm.eval.stage.evaluation_text`, :func:`flm.registry.publish.with_evaluation`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flm.config import Params

__all__ = ["TABLE", "run_evaluate"]

TABLE = "eval_table.json"
"""The run's table artifact (``MlflowClient.log_table``; the ``eval/`` folder holds the report's own files)."""


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
    from flm.eval.stage import evaluate_models, evaluation_text, rows_table, summary_metrics, version_tags
    from flm.registry.publish import versions_with_weights, with_evaluation
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
        run.client.log_table(run.run_id, data=rows_table(result.rows, result.reference), artifact_file=TABLE)
        run.log_metrics(summary_metrics(result.rows, result.reference, spec), step=0)
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
                described = client.get_model_version(name, version).description
                text = with_evaluation(described, evaluation_text(values))
                client.update_model_version(name, version, description=text)
            found = ", ".join(f"v{v}" for v in tagged[name]) or "none (not registered with these weights)"
            flag = " (DEGENERATE: entropy below the floor)" if values["eval.degenerate"] == "true" else ""
            log(f"evaluate: {name} Gen PPL {float(values['eval.gen_ppl']):.2f} at NFE {spec.promote_nfe}{flag}; "
                f"tagged versions: {found}")
    except BaseException:
        run.close("FAILED")
        raise
    run.close("FINISHED")
    return {"run_id": run.run_id, "metrics": metrics, "report": str(root / "reports" / "eval"), "versions": tagged}

