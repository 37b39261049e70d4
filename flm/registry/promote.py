"""Move a registered model's ``champion`` alias to a candidate only when it is better.

The primary metric (validation loss for now, lower is better) is read from the run that logged
each version. The decision and its reason are recorded on the candidate version, either way, as
tags (``promotion``: ``promoted`` | ``refused``; ``promotion_reason``) and in its description.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ALIAS", "Decision", "promote"]

ALIAS = "champion"


@dataclass(frozen=True)
class Decision:
    """The outcome of one promotion attempt."""

    name: str
    candidate: str
    promoted: bool
    reason: str
    champion_before: str | None
    candidate_value: float | None
    champion_value: float | None


def _metric(client: Any, name: str, version: str, metric: str) -> float | None:
    run_id = client.get_model_version(name, version).run_id
    value = client.get_run(run_id).data.metrics.get(metric) if run_id else None
    return None if value is None else float(value)


def _champion(client: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def promote(
    client: Any, name: str, version: str | int | None = None, metric: str = "val_loss", lower_is_better: bool = True,
    alias: str = ALIAS,
) -> Decision:
    """Give ``alias`` to version ``version`` (default: the newest) of ``name`` if it beats the holder.

    A candidate without the metric is refused; with no current champion the candidate is promoted;
    otherwise it must be strictly better.
    """
    if version is None:
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise ValueError(f"registered model {name!r} has no versions")
        version = max(int(v.version) for v in versions)
    candidate = str(version)
    holder = _champion(client, name, alias)
    value = _metric(client, name, candidate, metric)
    best = _metric(client, name, holder, metric) if holder is not None else None
    direction = "lower" if lower_is_better else "higher"
    if value is None:
        promoted, reason = False, f"version {candidate} has no {metric} metric"
    elif holder == candidate:
        promoted, reason = False, f"version {candidate} already holds @{alias} ({metric} = {value:.6g})"
    elif holder is None:
        promoted, reason = True, f"no @{alias} yet; {metric} = {value:.6g}"
    elif best is None:
        promoted, reason = True, f"@{alias} version {holder} has no {metric}; candidate {metric} = {value:.6g}"
    elif value < best if lower_is_better else value > best:
        promoted = True
        reason = f"{metric} {value:.6g} beats @{alias} version {holder} ({best:.6g}; {direction} is better)"
    else:
        promoted = False
        reason = f"{metric} {value:.6g} does not beat @{alias} version {holder} ({best:.6g}; {direction} is better)"
    if promoted:
        client.set_registered_model_alias(name, alias, candidate)
    client.set_model_version_tag(name, candidate, "promotion", "promoted" if promoted else "refused")
    client.set_model_version_tag(name, candidate, "promotion_reason", reason)
    verdict = "Promoted to" if promoted else "Refused"
    client.update_model_version(name, candidate, description=f"{verdict} @{alias}: {reason}")
    return Decision(name, candidate, promoted, reason, holder, value, best)
