"""Move a registered model's ``champion`` alias to a candidate only when it is better.

Two rules (``metric``):

* ``gen_ppl`` (default; MATH.md §4): the evaluate stage's Gen PPL at the stated NFE, read from the
  version's tags (``eval.gen_ppl``, ``eval.entropy``, ``eval.reference_entropy``, written by the
  evaluate flow on the versions holding the evaluated weights). Lower is better. A candidate is
  refused when it was never evaluated, when it was evaluated at another NFE than ``nfe``, or when
  its mean sample entropy is below ``entropy_floor`` x the held-out text's entropy (degenerate,
  repetitive text can have a low Gen PPL). A champion evaluated under another protocol (judge, NFE,
  variant, Gen PPL protocol), or not at all, cannot be compared: a candidate that passes the floor
  then replaces it.
* ``val_loss`` (or any other run metric): the metric of the run that logged each version; lower
  (``lower_is_better``) or higher is better; no floor.

The decision and its reason are recorded on the candidate version, either way, as tags
(``promotion``: ``promoted`` | ``refused``; ``promotion_reason``) and in its description.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flm.eval.floor import entropy_limit, is_degenerate
from flm.registry.publish import with_section

__all__ = [
    "ALIAS", "ENTROPY", "GEN_PPL", "GEN_PPL_PROTOCOL", "JUDGE", "PROMOTE_NFE", "REFERENCE_ENTROPY", "VARIANT",
    "Decision", "champion", "check_request", "promote",
]

ALIAS = "champion"
GEN_PPL = "eval.gen_ppl"
"""Version tag: Gen PPL at the promotion NFE."""
ENTROPY = "eval.entropy"
"""Version tag: mean sample entropy (nats) at the promotion NFE."""
REFERENCE_ENTROPY = "eval.reference_entropy"
"""Version tag: mean entropy of held-out text in the same evaluation."""
JUDGE, PROMOTE_NFE, VARIANT = "eval.judge", "eval.promote_nfe", "eval.variant"
"""Version tags that make two evaluations comparable: the judge, the stated NFE, the sampler variant."""
GEN_PPL_PROTOCOL = "eval.protocol"
"""Version tag: how samples became judged text (``eval.protocol``: ``document`` or ``reference``)."""
PROTOCOL = (JUDGE, PROMOTE_NFE, VARIANT, GEN_PPL_PROTOCOL)
PROMOTION = "**Promotion:**"
"""The heading of the version description's paragraph that holds the latest decision."""


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


@dataclass(frozen=True)
class _Score:
    """What one version brings to the comparison: its value, and why it cannot compete (or ``None``)."""

    value: float | None
    problem: str | None
    protocol: tuple[str | None, ...] = ()


def _run_metric(client: Any, name: str, version: str, metric: str) -> _Score:
    run_id = client.get_model_version(name, version).run_id
    value = client.get_run(run_id).data.metrics.get(metric) if run_id else None
    if value is None:
        return _Score(None, f"version {version} has no {metric} metric")
    return _Score(float(value), None)


def _eval_score(client: Any, name: str, version: str, nfe: int | None, entropy_floor: float) -> _Score:
    """Gen PPL from the version's evaluation tags, with the NFE and entropy-floor checks."""
    found = client.get_model_version(name, version).tags
    protocol = tuple(found.get(key) for key in PROTOCOL)
    if GEN_PPL not in found:
        return _Score(None, f"version {version} has not been evaluated (no {GEN_PPL} tag; run the evaluate stage)")
    value, entropy, reference = (float(found[key]) for key in (GEN_PPL, ENTROPY, REFERENCE_ENTROPY))
    if nfe is not None and found.get(PROMOTE_NFE) != str(nfe):
        return _Score(value, f"version {version} was evaluated at NFE {found.get(PROMOTE_NFE)}, not {nfe}", protocol)
    floor = entropy_limit(reference, entropy_floor)
    if is_degenerate(entropy, reference, entropy_floor):
        return _Score(value, f"version {version}: entropy {entropy:.3f} nats is below the floor {floor:.3f} "
                             f"({entropy_floor:g} x held-out {reference:.3f}); degenerate samples", protocol)
    return _Score(value, None, protocol)


def champion(client: Any, name: str, alias: str = ALIAS) -> str | None:
    """The version of ``name`` holding ``alias`` (``None``: no such alias, or no such model)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _candidate(client: Any, name: str, version: str | int | None) -> str:
    """``version`` of registered model ``name`` (default: its newest), checked to exist before anything is written."""
    from mlflow.exceptions import MlflowException

    from flm.errors import UsageError

    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        known = sorted(model.name for model in client.search_registered_models())
        if name in known:
            raise UsageError(f"--model {name}: the registered model has no versions")
        raise UsageError(f"--model {name}: no such registered model; known: {', '.join(known) or 'none'}")
    if version is None:
        return str(max(int(v.version) for v in versions))
    try:
        return str(client.get_model_version(name, str(version)).version)
    except MlflowException:
        numbers = sorted(int(v.version) for v in versions)
        raise UsageError(f"--version {version}: model {name!r} has no such version; it has {numbers}") from None


def check_request(client: Any, name: str, version: str | int | None = None, metric: str = "gen_ppl") -> str:
    """The candidate version (default: the newest) once ``name``, ``version`` and ``metric`` are known to exist.

    :func:`promote` calls it before writing anything; a command line can call it before starting a flow.

    Raises:
        flm.errors.UsageError: an unknown model, version or metric; the message names the option
            and lists what exists.
    """
    candidate = _candidate(client, name, version)
    _check_metric(client, name, candidate, metric)
    return candidate


def _check_metric(client: Any, name: str, candidate: str, metric: str) -> None:
    """Refuse a ``metric`` the candidate's run never logged, before any tag or description is written."""
    from flm.errors import UsageError

    if metric == "gen_ppl":
        return
    run_id = client.get_model_version(name, candidate).run_id
    logged = sorted(client.get_run(run_id).data.metrics) if run_id else []
    if metric not in logged:
        raise UsageError(f"--metric {metric}: unknown metric for version {candidate} of {name!r}; known: "
                         f"{', '.join(['gen_ppl', *logged])}")


def promote(
    client: Any, name: str, version: str | int | None = None, metric: str = "gen_ppl", lower_is_better: bool = True,
    alias: str = ALIAS, nfe: int | None = None, entropy_floor: float = 0.0,
) -> Decision:
    """Give ``alias`` to version ``version`` (default: the newest) of ``name`` if it beats the holder.

    The decision and its reason are recorded on the candidate: tags ``promotion`` and
    ``promotion_reason``, and the :data:`PROMOTION` paragraph of its description (the others kept).

    Args:
        metric: ``gen_ppl`` (the evaluation tags; always lower is better) or a run metric (``val_loss``).
        nfe: ``gen_ppl`` only: the NFE the candidate must have been evaluated at (``None``: any).
        entropy_floor: ``gen_ppl`` only: the fraction of the held-out entropy a candidate must reach.

    With no current champion (or one that cannot be compared) an eligible candidate is promoted;
    otherwise it must be strictly better.

    Raises:
        flm.errors.UsageError: an unknown model, version or metric (nothing is written then).
    """
    candidate = check_request(client, name, version, metric)
    holder = champion(client, name, alias)
    if metric == "gen_ppl":
        lower_is_better = True
        score = _eval_score(client, name, candidate, nfe, entropy_floor)
        best = _eval_score(client, name, holder, None, 0.0) if holder is not None else None
        if best is not None and best.problem is None and best.protocol != score.protocol:
            theirs, ours = (dict(zip(PROTOCOL, s.protocol, strict=True)) for s in (best, score))
            best = _Score(best.value, f"evaluated under {theirs}, the candidate under {ours}")
    else:
        score = _run_metric(client, name, candidate, metric)
        best = _run_metric(client, name, holder, metric) if holder is not None else None
    value = score.value
    direction = "lower" if lower_is_better else "higher"
    if score.problem is not None:
        promoted, reason = False, score.problem
    elif holder == candidate:
        promoted, reason = False, f"version {candidate} already holds @{alias} ({metric} = {value:.6g})"
    elif best is None:
        promoted, reason = True, f"no @{alias} yet; {metric} = {value:.6g}"
    elif best.problem is not None:
        promoted, reason = True, f"@{alias} version {holder} cannot be compared ({best.problem}); " \
                                 f"candidate {metric} = {value:.6g}"
    elif value < best.value if lower_is_better else value > best.value:
        promoted = True
        reason = f"{metric} {value:.6g} beats @{alias} version {holder} ({best.value:.6g}; {direction} is better)"
    else:
        promoted = False
        reason = (f"{metric} {value:.6g} does not beat @{alias} version {holder} ({best.value:.6g}; "
                  f"{direction} is better)")
    if promoted:
        client.set_registered_model_alias(name, alias, candidate)
    client.set_model_version_tag(name, candidate, "promotion", "promoted" if promoted else "refused")
    client.set_model_version_tag(name, candidate, "promotion_reason", reason)
    verdict = "Promoted to" if promoted else "Refused"
    described = client.get_model_version(name, candidate).description  # keep the training and evaluation paragraphs
    client.update_model_version(name, candidate, description=with_section(described, PROMOTION, f"{verdict} @{alias}: "
                                                                                                f"{reason}"))
    return Decision(name, candidate, promoted, reason, holder, value, best.value if best is not None else None)
