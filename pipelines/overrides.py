"""Parameters of a flow run started from the Prefect UI or API: ``params.yaml`` + profile + what the user set.

A run resolves its parameters in one way, whatever started it (:func:`resolve`):

1. ``params.yaml`` with the chosen profile (``profile``; default: the file's own ``profile`` key);
2. the ``params`` field: a *complete* tree (as :meth:`flm.config.Params.model_dump` writes it; the served
   deployments show the current ``params.yaml`` tree there, so a user edits a field in place) is taken as it
   is; a *partial* tree (``{"train": {"steps": 100}}``) is merged onto step 1 like a profile overlay, never
   onto the parameter classes' defaults;
3. ``overrides``: dotted keys in the spirit of ``dvc exp run -S key=value``
   (``{"train.steps": 100, "train.schedule": "constant"}``); a string value is read as YAML (``"100"`` is
   the integer 100, ``"[1, 2]"`` a list), as ``-S`` does. A key that names no parameter is an error that
   names it.

The result is validated once (:class:`flm.config.Params`). :func:`matches_params_file` tells whether a run's
tree is exactly what ``params.yaml`` says for its profile: only such a run writes the workspace's DVC outputs
(``models/<name>``, ``metrics/<name>.json``); a run with other values writes them under
``.state/experiments/<flow-run name>/`` (:func:`pipelines.flows.run_training`), so a UI run never silently
replaces what ``dvc repro`` made. Parameter changes meant for the pipeline go through the ``pipeline`` flow
(``dvc exp run -S ...``, :func:`pipelines.flows.pipeline`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from flm.config import ConfigError, Params, load_params, merge_overlay

__all__ = ["apply_overrides", "dvc_set_args", "matches_params_file", "resolve"]


def _value(value: Any) -> Any:
    """A string is read as YAML (``"100"`` -> 100), as ``dvc exp run -S`` reads it; anything else as it is."""
    if isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


def apply_overrides(tree: dict[str, Any], overrides: Mapping[str, Any], create: bool = False) -> dict[str, Any]:
    """``tree`` (a complete parameter tree) with each dotted key of ``overrides`` set; a copy.

    ``create=True`` adds keys ``tree`` lacks (a raw ``params.yaml`` leaves defaults out; as ``dvc exp run -S``
    does); validating the result then names a key that is no parameter.

    Raises:
        ConfigError: a key that names no parameter of ``tree`` (the message names the key and the nearest level).
    """
    out = yaml.safe_load(yaml.safe_dump(tree))  # a deep copy of plain data
    for key, value in overrides.items():
        parts = str(key).split(".")
        node = out
        for depth, part in enumerate(parts):
            if create and isinstance(node, dict) and part not in node:
                node[part] = {}
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[:depth]) or "the top level"
                known = ", ".join(sorted(node)) if isinstance(node, dict) else "none (not a mapping)"
                raise ConfigError(f"overrides: unknown parameter {key!r} (no {part!r} in {where}; known: {known})")
            if depth == len(parts) - 1:
                node[part] = _value(value)
            else:
                node = node[part]
    return out


def _validate(tree: dict[str, Any], origin: str) -> Params:
    try:
        return Params.model_validate(tree)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{origin}: {problems}") from None


def _is_complete(tree: Mapping[str, Any]) -> bool:
    """Whether ``tree`` sets every parameter (validating it fills in no class default)."""
    try:
        return Params.model_validate(tree).model_dump(mode="json") == dict(tree)
    except ValidationError:
        return False


def resolve(
    params: Params | Mapping[str, Any] | None, params_file: str | Path, profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Params:
    """The run's parameters: ``params_file`` + ``profile``, then ``params``, then ``overrides`` (module docstring).

    A :class:`Params` object is taken as it is (``profile`` and ``params_file`` unused), then ``overrides``.

    Raises:
        ConfigError: an unreadable or invalid file, a partial ``params`` without a file to merge onto, a
            ``params`` tree of another profile than ``profile``, an unknown override key, an invalid result.
    """
    overrides = dict(overrides or {})
    if isinstance(params, Params):
        tree = params.model_dump(mode="json")
    elif params is not None and _is_complete(params):
        tree = dict(params)
        if profile is not None and tree.get("profile") != profile:
            raise ConfigError(f"params: a tree of profile {tree.get('profile')!r} but profile={profile!r} was asked; "
                              "leave params empty ({}) to take params.yaml's values for that profile")
    else:
        if params is not None and not isinstance(params, Mapping):
            raise ConfigError(f"params: expected a mapping, got {type(params).__name__}")
        base = load_params(params_file, profile=profile).model_dump(mode="json")
        if params and "profile" in params and params["profile"] != base["profile"]:
            raise ConfigError(f"params: profile {params['profile']!r} differs from the resolved profile "
                              f"{base['profile']!r}; choose it with the profile argument")
        tree = merge_overlay(base, dict(params or {}))
    if not overrides:
        return params if isinstance(params, Params) else _validate(tree, "params")
    return _validate(apply_overrides(tree, overrides), "params with overrides")


def matches_params_file(params: Params, params_file: str | Path) -> bool:
    """Whether ``params`` is exactly ``params_file``'s tree for ``params.profile``.

    Without the file (a project that is no DVC pipeline, a test's directory) nothing can differ: ``True``.
    """
    if not Path(params_file).is_file():
        return True
    return load_params(params_file, profile=params.profile) == params


def _has(tree: Any, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def dvc_set_args(overrides: Mapping[str, Any], raw: Mapping[str, Any] | None = None) -> list[str]:
    """``["-S", "key=value", ...]`` for ``dvc exp run``; a value is written as one-line YAML (``[1, 2]``, ``0.5``).

    A key the raw ``params.yaml`` tree ``raw`` lacks (a parameter left at its default) is written
    ``+key=value``, DVC's (Hydra's) way to add a key.
    """
    args: list[str] = []
    for key, value in overrides.items():
        if isinstance(value, str):
            text = value
        else:
            text = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip().removesuffix("...").strip()
        add = "+" if raw is not None and not _has(raw, key) else ""
        args += ["-S", f"{add}{key}={text}"]
    return args
