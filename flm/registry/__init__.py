"""The MLflow model registry: text-generating models from checkpoints, and champion promotion.

Submodules are imported explicitly (they import MLflow): ``generator`` (checkpoint -> text, no
MLflow), ``pyfunc`` (the MLflow model), ``publish`` (log + register), ``promote`` (the alias).
"""
