"""The MLflow model of a trained FLM / FMLM: a ``pyfunc`` whose ``predict`` writes text.

Input: a table with one row per text to write and a column ``seed`` (the noise of that row).
Params (per call): ``steps`` (network evaluations: 1 for FMLM's one-step text), ``length`` (tokens;
0 = the training ``L``), ``prefix`` (text every output starts with, clamped during denoising; ``""``:
none), ``renoise`` (FMLM re-noising strength ``g``; 0 = the deterministic flow map). Output: a column
``text`` (the prefix included). For example::

    model = mlflow.pyfunc.load_model("models:/fmlm@champion")
    model.predict(pd.DataFrame({"seed": [0, 1]}), params={"steps": 4, "prefix": "The", "renoise": 0.8})

The model is logged *from code* (:mod:`flm.registry.model_code`): nothing is pickled, and its
artifacts are the safetensors checkpoint and the tokenizer; ``flm`` travels as code. See
:func:`flm.registry.logging.log_text_model`.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc

__all__ = ["DEFAULT_PARAMS", "FLMTextModel", "signature"]

DEFAULT_PARAMS: dict[str, int | float | str] = {"steps": 1, "length": 0, "prefix": "", "renoise": 0.0}
_PARAM_TYPES = {int: "long", float: "double", str: "string"}


def signature() -> Any:
    """``seed`` (int64) -> ``text`` (string), with params ``steps``, ``length``, ``prefix`` and ``renoise``."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    specs = [ParamSpec(name, _PARAM_TYPES[type(value)], value) for name, value in DEFAULT_PARAMS.items()]
    return ModelSignature(
        inputs=Schema([ColSpec("long", "seed")]),
        outputs=Schema([ColSpec("string", "text")]),
        params=ParamSchema(specs),
    )


class FLMTextModel(mlflow.pyfunc.PythonModel):
    """Loads ``artifacts["checkpoint"]`` and ``artifacts["tokenizer"]``; ``predict`` samples text."""

    def load_context(self, context: Any) -> None:
        """Rebuild the generator from the model's artifacts (CUDA when available)."""
        import torch

        from flm.registry.generator import TextGenerator

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.generator = TextGenerator(context.artifacts["checkpoint"], context.artifacts.get("tokenizer"), device)

    def predict(self, context, model_input, params=None):  # untyped: MLflow would derive a schema from hints
        """One text per input row, its noise seeded by the row's ``seed``."""
        import pandas as pd

        settings = DEFAULT_PARAMS | (params or {})
        seeds = [int(s) for s in pd.DataFrame(model_input)["seed"]]
        steps, length = int(settings["steps"]), int(settings["length"]) or None
        prefix, renoise = str(settings["prefix"]) or None, float(settings["renoise"])
        texts = [self.generator.generate(1, steps, length, seed, prefix, renoise)[0] for seed in seeds]
        return pd.DataFrame({"text": texts})
