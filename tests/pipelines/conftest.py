"""The pipeline tests reuse the training tests' fixtures (offline env, tiny packed data, one thread)."""

from __future__ import annotations

from tests.train.conftest import _offline_env, _one_thread, mlflow_state, tiny_data

__all__ = ["_offline_env", "_one_thread", "mlflow_state", "tiny_data"]
