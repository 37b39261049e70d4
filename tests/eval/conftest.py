"""One SmolLM2 judge per test session, converted cold from the packaged GGUF into a temporary state dir."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from flm.eval.judge import Judge, smollm2_judge


@dataclass
class LoadedJudge:
    judge: Judge
    state_dir: Path
    seconds: float


@pytest.fixture(scope="session")
def offline_hub() -> Iterator[None]:
    """``HF_HUB_OFFLINE`` for the whole session (huggingface_hub reads its constant at call time)."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread: 4x faster than two on a busy 2-core machine (measured), no slower when idle."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory, offline_hub: None) -> Iterator[LoadedJudge]:
    """The judge, loaded cold (GGUF -> dequantized safetensors cache -> model); the cache is removed after."""
    state = tmp_path_factory.mktemp("judge-state")
    with one_thread():
        start = time.perf_counter()
        judge = smollm2_judge(state)
        seconds = time.perf_counter() - start
    yield LoadedJudge(judge, state, seconds)
    shutil.rmtree(state, ignore_errors=True)
