"""Log a trained checkpoint as an MLflow text-generating model and register it.

The logged model holds a *slim* copy of the checkpoint (``checkpoint.json`` + the EMA weights in
``ema.safetensors``: what sampling needs, no optimizer state), the tokenizer, the ``flm`` package
as code, and :mod:`flm.registry.model_code` as the model: nothing is pickled. Requirements are
given explicitly (MLflow's inference is slow and picks up unrelated packages).

Each registered version is tagged ``ema_sha256`` with the SHA-256 of its ``ema.safetensors``: the
evaluate stage finds the versions that hold the weights of ``models/<name>`` by that digest
(:func:`versions_with_weights`) and records its Gen PPL on them.

Each version carries a short Markdown description: at registration, where it comes from
(:func:`registration_description`: the stage, the profile, the step, the data, the run); after an
evaluation, an ``Evaluation:`` paragraph (:func:`with_evaluation`) that replaces any earlier one
(:func:`with_section`: any other section, e.g. a promotion decision, can be kept the same way).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

__all__ = [
    "EVALUATION", "WEIGHTS_TAG", "RegisteredModel", "log_text_model", "model_requirements", "registration_description",
    "versions_with_weights", "weights_sha256", "with_evaluation", "with_section",
]

WEIGHTS_TAG = "ema_sha256"
"""Model-version tag: the SHA-256 of the version's ``ema.safetensors``."""
EVALUATION = "**Evaluation:**"
"""Opens the evaluation paragraph of a version's description."""
REQUIREMENTS = ("torch", "numpy", "safetensors", "tokenizers", "pydantic", "pyyaml", "pandas", "mlflow")


@dataclass(frozen=True)
class RegisteredModel:
    """A registered model version and where it was logged."""

    name: str
    version: str
    model_uri: str
    run_id: str


def model_requirements() -> list[str]:
    """Pinned ``pip`` requirements of the served model (the versions installed here)."""
    return [f"{name}=={version(name)}" for name in REQUIREMENTS]


def weights_sha256(checkpoint_dir: str | Path) -> str:
    """SHA-256 (hex) of ``checkpoint_dir/ema.safetensors``: what identifies a model's weights."""
    digest = hashlib.sha256()
    with (Path(checkpoint_dir) / "ema.safetensors").open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions_with_weights(client: Any, name: str, checkpoint_dir: str | Path) -> list[str]:
    """Versions of registered model ``name`` whose ``ema_sha256`` tag matches ``checkpoint_dir``'s weights.

    Oldest first; empty when the model is not registered or no version holds these weights.
    """
    digest = weights_sha256(checkpoint_dir)
    versions = client.search_model_versions(f"name = '{name}'")
    return sorted((str(v.version) for v in versions if v.tags.get(WEIGHTS_TAG) == digest), key=int)


def registration_description(checkpoint_dir: str | Path, run_id: str, run_tags: dict[str, str]) -> str:
    """A version's description at registration (Markdown): stage, profile, step, data, run.

    Read from ``checkpoint_dir/checkpoint.json`` (``stage``, ``params.profile``, ``step``) and the run's
    lineage tags (``git.commit``; ``dvc.data/...`` and ``dvc.models/...``: the DVC md5 of each data input,
    e.g. ``data/tokens`` and the teacher ``models/flm``); what is missing is left out.
    """
    info = json.loads((Path(checkpoint_dir) / "checkpoint.json").read_text(encoding="utf-8"))
    profile = info.get("params", {}).get("profile") or run_tags.get("profile")
    stage = info.get("stage") or run_tags.get("stage")
    origin = [f"stage `{stage}`"] if stage else []
    origin += [f"profile `{profile}`"] if profile else []
    origin += [f"step {info['step']}"] if "step" in info else []
    commit = run_tags.get("git.commit", "unknown")
    code = f" at commit `{commit[:10]}`" if commit != "unknown" else ""
    lines = [(f"Trained by {', '.join(origin)} in" if origin else "Logged in") + f" MLflow run `{run_id}`{code}."]
    inputs = [f"`{key.removeprefix('dvc.')}` {value[:12]}" for key, value in sorted(run_tags.items())
              if key.startswith(("dvc.data/", "dvc.models/")) and value]
    return "\n\n".join(lines + ([f"Data (DVC md5): {'; '.join(inputs)}."] if inputs else []))


def with_section(description: str | None, heading: str, text: str) -> str:
    """``description`` without its paragraphs that open with ``heading``, then ``heading text`` as the last one.

    ``text`` is one paragraph (no blank line); the other paragraphs keep their order.
    """
    kept = [part for part in (description or "").split("\n\n") if part.strip() and not part.startswith(heading)]
    return "\n\n".join([*kept, f"{heading} {text}"])


def with_evaluation(description: str | None, evaluation: str) -> str:
    """``description`` with its :data:`EVALUATION` paragraph (if any) replaced by ``evaluation`` (the last one)."""
    return with_section(description, EVALUATION, evaluation)


def _slim_checkpoint(checkpoint_dir: Path, dest: Path) -> Path:
    """``checkpoint.json`` + ``ema.safetensors`` of a checkpoint, copied into ``dest``."""
    dest.mkdir(parents=True)
    for name in ("checkpoint.json", "ema.safetensors"):
        shutil.copy2(checkpoint_dir / name, dest / name)
    return dest


def log_text_model(
    run_id: str, checkpoint_dir: str | Path, tokenizer_dir: str | Path | None, registered_name: str,
    tracking_uri: str, tags: dict[str, str] | None = None,
) -> RegisteredModel:
    """Log ``checkpoint_dir`` into run ``run_id`` as the model ``model`` and register it as ``registered_name``.

    The run is re-entered, not ended: its status is left as it was. The new version is tagged
    :data:`WEIGHTS_TAG` with the digest of its weights and described (:func:`registration_description`).
    """
    import mlflow

    import flm
    from flm.registry import model_code, pyfunc

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    status = run.info.status
    with tempfile.TemporaryDirectory(prefix="flm-model-") as tmp:
        artifacts = {"checkpoint": str(_slim_checkpoint(Path(checkpoint_dir), Path(tmp) / "checkpoint"))}
        if tokenizer_dir is not None:
            artifacts["tokenizer"] = str(tokenizer_dir)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=model_code.__file__,
                artifacts=artifacts,
                code_paths=[str(Path(flm.__file__).parent)],
                pip_requirements=model_requirements(),
                signature=pyfunc.signature(),
                registered_model_name=registered_name,
                tags=tags,
            )
    if status == "RUNNING":
        client.update_run(run_id, status="RUNNING")  # start_run's exit marked it finished; the caller ends it
    registered = str(info.registered_model_version)
    client.set_model_version_tag(registered_name, registered, WEIGHTS_TAG, weights_sha256(checkpoint_dir))
    description = registration_description(checkpoint_dir, run_id, dict(run.data.tags))
    client.update_model_version(registered_name, registered, description=description)
    return RegisteredModel(registered_name, registered, f"models:/{registered_name}/{registered}", run_id)
