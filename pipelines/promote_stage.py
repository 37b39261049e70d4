"""The promote stage's body, the pipeline's last step (the ``promote`` flow with ``all_models`` calls it).

For every model in ``eval.models`` it takes the registered version holding the weights the evaluate
stage just judged (the newest version whose ``ema_sha256`` tag matches ``models/<name>``;
:func:`flm.registry.publish.versions_with_weights`) and asks :func:`flm.registry.promote.promote` with
the Gen PPL rule: Gen PPL at ``eval.promote_nfe``, refused below ``eval.entropy_floor`` x the held-out
entropy, promoted when there is no comparable ``@champion`` or it beats the holder. So after
``dvc repro`` on a fresh project, ``models:/<name>@champion`` resolves for every model that passes the
floor, and a model that fails it is refused with its reason.

Outputs:

* ``metrics/promote.json`` (a DVC metric): per model ``promoted`` (this run moved the alias),
  ``candidate`` (the version judged), ``champion`` (the version holding ``@champion`` afterwards, or
  ``null``) and ``reason``;
* an MLflow run ``promote`` (lineage tags, the rule as params, ``promoted/<name>`` as 0/1 metrics, the
  JSON as an artifact); each candidate version also carries the tags ``promotion`` and
  ``promotion_reason`` and the decision in its description (written by the rule);
* a summary, one line per model, logged last, so it ends the output of ``dvc repro`` / ``make run``.

A refusal is a decision, not an error: the stage exits 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flm.config import Params

__all__ = ["run_promote", "summary_lines"]


def summary_lines(decisions: dict[str, dict[str, Any]]) -> list[str]:
    """One line per model: ``fmlm: @champion v3 (promoted: no @champion yet; gen_ppl = 39.5)``."""
    lines = []
    for name, found in decisions.items():
        holder = f"@champion v{found['champion']}" if found["champion"] is not None else "no @champion"
        verdict = "promoted" if found["promoted"] else "refused"
        lines.append(f"{name}: {holder} ({verdict} v{found['candidate']}: {found['reason']})"
                     if found["candidate"] is not None else f"{name}: {holder} ({found['reason']})")
    return lines


def run_promote(params: Params, root: str | Path = ".", log: Any = print) -> dict[str, Any]:
    """Promote every evaluated model in project ``root`` (module docstring).

    Returns:
        ``run_id`` (the MLflow run ``promote``) and ``decisions`` (``metrics/promote.json``'s content,
        ``{name: {"promoted", "candidate", "champion", "reason"}}``).
    """
    from mlflow import MlflowClient

    from flm.data.atomic import write_json_atomic
    from flm.environment import hermetic
    from flm.registry.promote import promote
    from flm.registry.publish import versions_with_weights
    from flm.tracking import check_store, default_tracking_uri, make_tracker
    from pipelines.lineage import lineage_tags

    root = Path(root).resolve()
    state = hermetic(root / ".state")
    uri = default_tracking_uri(state)
    check_store(uri)
    spec = params.eval
    client = MlflowClient(uri)
    tags = lineage_tags(root, "promote") | {"stage": "promote", "profile": params.profile}
    run = make_tracker("flm", run_name="promote", state_dir=state, tracking_uri=uri, tags=tags)
    decisions: dict[str, dict[str, Any]] = {}
    try:
        run.log_params({"eval": {"promote_nfe": spec.promote_nfe, "entropy_floor": spec.entropy_floor,
                                 "models": list(spec.models)}})
        for name in spec.models:
            versions = versions_with_weights(client, name, root / "models" / name)
            if not versions:
                decisions[name] = {"promoted": False, "candidate": None, "champion": _holder(client, name),
                                   "reason": f"no registered version of {name!r} holds models/{name}'s weights"}
                continue
            candidate = max(versions, key=int)
            decision = promote(client, name, candidate, "gen_ppl", nfe=spec.promote_nfe,
                               entropy_floor=spec.entropy_floor)
            decisions[name] = {"promoted": decision.promoted, "candidate": int(decision.candidate),
                               "champion": _holder(client, name), "reason": decision.reason}
        metrics_file = root / "metrics" / "promote.json"
        write_json_atomic(metrics_file, {"promote": decisions})
        run.log_metrics({f"promoted/{name}": float(found["promoted"]) for name, found in decisions.items()}, step=0)
        run.log_artifact(metrics_file)
    except BaseException:
        run.close("FAILED")
        raise
    run.close("FINISHED")
    log("promote:\n  " + "\n  ".join(summary_lines(decisions)))
    return {"run_id": run.run_id, "decisions": decisions}


def _holder(client: Any, name: str) -> int | None:
    from flm.registry.promote import champion

    found = champion(client, name)
    return int(found) if found is not None else None
