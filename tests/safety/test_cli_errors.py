"""Bad invocations of the command lines fail in the first second: exit 2, one line on stderr naming the option
or path, before any tool state, server or run exists; earlier outputs stay byte-identical; an unreachable MLflow
server is said to be one in seconds; Ray's lock files stay under the project's ``.state``."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml

from flm import cli as flm_cli
from pipelines import run as run_cli
from tests.registry.helpers import tiny_checkpoint

from .conftest import snapshot

# Rows: (id, argv after the flow, params.yaml changes, a substring of the one-line error).
RUN_CASES = [
    ("workers-negative", ["train_flm", "--workers", "-1"], {}, "argument --workers: must be an integer >= 0, got -1"),
    ("workers-not-a-number", ["train_flm", "--workers", "two"], {}, "argument --workers: must be an integer >= 0"),
    ("max-failures-negative", ["train_flm", "--max-failures", "-2"], {}, "argument --max-failures: must be an integer"),
    ("workers-beyond-the-cores", ["train_flm", "--workers", "32"], {},
     "--workers 32 x cluster.cpus_per_worker 2 = 64 CPUs, but this machine has"),
    ("cpus-beyond-the-cores", ["distill_fmlm"], {"cluster": {"workers": 1, "cpus_per_worker": 4096}},
     "--workers 1 x cluster.cpus_per_worker 4096 = 4096 CPUs, but this machine has"),
    ("gpus-beyond-the-machine", ["train_ar"], {"cluster": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 64}},
     "--workers 1 x cluster.gpus_per_worker 64 = 64 GPUs, but this machine has"),
    ("device-tpu", ["evaluate", "--device", "tpu"], {}, "--device tpu: unknown device; expected cpu, cuda or cuda:N"),
    ("device-cpu-index", ["evaluate", "--device", "cpu:1"], {}, "--device cpu:1: unknown device"),
    ("device-cuda-index", ["evaluate", "--device", "cuda:64"], {}, "--device cuda:64: "),
    ("version-0", ["promote", "--version", "0"], {}, "argument --version: must be an integer >= 1, got 0"),
    ("unknown-flow", ["train_gpt"], {}, "argument flow: invalid choice: 'train_gpt'"),
    ("promote-without-store", ["promote", "--model", "fmlm"], {}, "no MLflow store at "),
]
if not torch.cuda.is_available():
    RUN_CASES.append(("device-cuda-without-gpu", ["evaluate", "--device", "cuda"], {},
                      "--device cuda: no CUDA device is available on this machine"))


def status_of(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """``main(argv)``'s exit status, argparse's ``SystemExit`` included."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


def the_line(err: str) -> str:
    """The one non-empty line of ``err`` (fails on none or several)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    return lines[0]


def closed_port() -> int:
    """A loopback TCP port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project that already has outputs (``models/``, ``metrics/``, ``data/``) but no ``.state`` yet."""
    root = tmp_path / "project"
    for name, text in {"models/flm/checkpoint.json": '{"step": 7}\n', "metrics/flm.json": '{"flm": {"step": 7}}\n',
                       "data/tokens/meta.json": '{"format": "flm.tokens/1"}\n'}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    (root / "params.yaml").write_text("train: {steps: 2}\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny FMLM checkpoint trained (recorded) at ``L = 16``."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "fmlm", 64, n_times=2, seed=3, seq_len=16)


@pytest.mark.parametrize(("argv", "changes", "message"), [row[1:] for row in RUN_CASES],
                         ids=[row[0] for row in RUN_CASES])
def test_pipelines_run_refuses_before_anything_starts(
    project: Path, argv: list[str], changes: dict, message: str, capsys: pytest.CaptureFixture,
    restored_environ: None,
) -> None:
    params = {"train": {"steps": 2}}
    for section, values in changes.items():
        params[section] = params.get(section, {}) | values
    (project / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    before = snapshot(project)
    assert status_of(run_cli.main, [*argv, "--root", str(project)]) == 2
    assert message in the_line(capsys.readouterr().err)
    assert snapshot(project) == before                             # no .state, no mlflow.db, outputs untouched


def test_pipelines_run_root_must_exist(tmp_path: Path, capsys: pytest.CaptureFixture, restored_environ: None) -> None:
    missing = tmp_path / "no-project"
    assert run_cli.main(["promote", "--root", str(missing)]) == 2
    assert the_line(capsys.readouterr().err) == f"error: --root {missing}: no such project directory"
    assert not missing.exists()


GENERATE_CASES = [
    ("length-beyond-L", ["--length", "100000"], "--length 100000: beyond the model's trained length 16"),
    ("length-L-plus-1", ["--length", "17"], "--length 17: beyond the model's trained length 16"),
    ("length-0", ["--length", "0"], "argument --length: must be a positive integer, got 0"),
    ("count-0", ["-n", "0"], "argument -n/--count: must be a positive integer, got 0"),
    ("steps-negative", ["--steps", "-3"], "argument --steps/-k: must be a positive integer, got -3"),
    ("steps-not-a-number", ["--steps", "many"], "argument --steps/-k: must be a positive integer, got many"),
    ("device-tpu", ["--device", "tpu"], "--device tpu: unknown device; expected cpu, cuda or cuda:N"),
    ("device-cuda-index", ["--device", "cuda:64"], "--device cuda:64: "),
    ("root-missing", ["--root", "no-such-project"], "--root no-such-project: no such directory"),
]


@pytest.mark.parametrize(("argv", "message"), [row[1:] for row in GENERATE_CASES],
                         ids=[row[0] for row in GENERATE_CASES])
def test_flm_generate_refuses_with_one_line(
    checkpoint: Path, tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch, restored_environ: None,
) -> None:
    monkeypatch.chdir(tmp_path)                                  # not a project: nothing may appear here
    before = snapshot(checkpoint)
    assert status_of(flm_cli.main, ["generate", str(checkpoint), *argv]) == 2
    assert message in the_line(capsys.readouterr().err)
    assert snapshot(checkpoint) == before and sorted(tmp_path.iterdir()) == []


def test_flm_generate_at_the_trained_length_still_works(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
    restored_environ: None,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert flm_cli.main(["generate", str(checkpoint), "--length", "16", "--steps", "1", "--device", "cpu"]) == 0
    assert len(capsys.readouterr().out.split()) == 16 and sorted(tmp_path.iterdir()) == []


def test_flm_generate_from_a_registry_outside_the_project_creates_no_store(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, restored_environ: None,
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert flm_cli.main(["generate", "models:/fmlm@champion", "--device", "cpu"]) == 2
    line = the_line(capsys.readouterr().err)
    assert f"no MLflow store at {elsewhere / '.state' / 'mlflow' / 'mlflow.db'}" in line and "--root" in line
    assert sorted(elsewhere.iterdir()) == []                     # no ./.state/mlflow/mlflow.db, no ./mlruns


@pytest.fixture
def hanging_server() -> Iterator[str]:
    """A loopback port that accepts connections and never answers (a stuck server)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


@pytest.mark.parametrize("kind", ["closed-port", "hanging-server"])
def test_an_unreachable_mlflow_server_is_said_in_seconds(
    project: Path, kind: str, hanging_server: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
    restored_environ: None,
) -> None:
    uri = f"http://127.0.0.1:{closed_port()}" if kind == "closed-port" else hanging_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    before = snapshot(project)
    for argv in (["train_flm", "--workers", "0"], ["promote", "--model", "fmlm"]):
        start = time.monotonic()
        assert run_cli.main([*argv, "--root", str(project)]) == 2
        assert time.monotonic() - start < 10
        assert f"MLflow tracking server {uri} is unreachable" in the_line(capsys.readouterr().err)
    start = time.monotonic()
    assert flm_cli.main(["generate", "models:/fmlm@champion", "--root", str(project), "--device", "cpu"]) == 2
    assert time.monotonic() - start < 10
    assert f"MLflow tracking server {uri} is unreachable" in the_line(capsys.readouterr().err)
    assert snapshot(project) == before


def test_make_tracker_names_an_unreachable_server(tmp_path: Path) -> None:
    from flm.errors import UnreachableError
    from flm.tracking import make_tracker

    uri = f"http://127.0.0.1:{closed_port()}"
    start = time.monotonic()
    with pytest.raises(UnreachableError, match=f"MLflow tracking server {uri} is unreachable"):
        make_tracker("flm", state_dir=tmp_path / ".state", tracking_uri=uri)
    assert time.monotonic() - start < 10 and not (tmp_path / ".state").exists()


@pytest.fixture
def registry(project: Path, restored_environ: None) -> dict:
    """The project's own sqlite store with model ``fmlm`` version 1 (@champion; its run logged ``val_loss``)."""
    from flm.environment import hermetic
    from flm.tracking import default_tracking_uri, make_tracker

    state = hermetic(project / ".state")
    uri = default_tracking_uri(state)
    run = make_tracker("flm", run_name="distill_fmlm", state_dir=state, tracking_uri=uri)
    run.log_metrics({"val_loss": 1.5, "step": 7}, step=7)
    run.close()
    client = run.client
    client.create_registered_model("fmlm")
    version = client.create_model_version("fmlm", str(project / "models" / "flm"), run_id=run.run_id).version
    client.set_registered_model_alias("fmlm", "champion", version)
    client.set_model_version_tag("fmlm", version, "promotion", "promoted")
    client.update_model_version("fmlm", version, description="Promoted to @champion: first")
    return {"client": client, "version": str(version), "db": Path(uri.removeprefix("sqlite:///"))}


def version_state(client: object, version: str) -> tuple:
    found = client.get_model_version("fmlm", version)  # type: ignore[attr-defined]
    return dict(found.tags), found.description, dict(client.get_registered_model("fmlm").aliases)  # type: ignore


PROMOTE_CASES = [
    ("metric-typo", ["--model", "fmlm", "--metric", "val_los"],
     "--metric val_los: unknown metric for version 1 of 'fmlm'; known: gen_ppl, step, val_loss"),
    ("model-unknown", ["--model", "nope"], "--model nope: no such registered model; known: fmlm"),
    ("version-unknown", ["--model", "fmlm", "--version", "99"], "--version 99: model 'fmlm' has no such version"),
]


@pytest.mark.parametrize(("argv", "message"), [row[1:] for row in PROMOTE_CASES], ids=[row[0] for row in PROMOTE_CASES])
def test_promote_refuses_unknown_names_without_touching_the_registry(
    project: Path, registry: dict, argv: list[str], message: str, capsys: pytest.CaptureFixture,
) -> None:
    client, version = registry["client"], registry["version"]
    before, db = version_state(client, version), snapshot(registry["db"].parent)
    start = time.monotonic()
    assert run_cli.main(["promote", "--root", str(project), *argv]) == 2
    assert time.monotonic() - start < 10                          # refused before Prefect's server starts
    assert message in the_line(capsys.readouterr().err)
    assert version_state(client, version) == before and snapshot(registry["db"].parent) == db
    assert not (project / ".state" / "prefect").exists()


def test_ray_lock_files_stay_under_the_projects_state(tmp_path: Path, restored_environ: None) -> None:
    """Ray Train's ``TempFileLock`` (checkpoint and storage locks) follows ``RAY_TMPDIR``, set by ``hermetic``."""
    from flm.environment import hermetic

    os.environ.pop("RAY_TMPDIR", None)
    state = hermetic(tmp_path / ".state")
    import ray._common.utils
    from ray.air._internal.filelock import TempFileLock

    lock = TempFileLock(str(tmp_path / "checkpoint"))
    with lock:
        pass
    assert Path(lock._lock_dir) == state / "ray" / "_ray_lockfiles" and any(Path(lock._lock_dir).iterdir())
    assert Path(ray._common.utils.get_default_ray_temp_dir()).is_relative_to(state)
