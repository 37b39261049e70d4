"""TextGenerator.load and ``flm generate`` from a checkpoint directory and from a real MLflow registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flm.registry.generator import TextGenerator

REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, checkpoints: dict, tokenizer_dir: Path) -> dict:
    """A sqlite store with ``tiny-fmlm`` version 1 (@champion) logged by ``log_text_model`` (~10 s)."""
    import mlflow

    from flm.registry.publish import log_text_model

    root = tmp_path_factory.mktemp("project")
    (root / "state" / "mlflow").mkdir(parents=True)
    uri = f"sqlite:///{root / 'state' / 'mlflow' / 'mlflow.db'}"  # the project layout (default store)
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("generate", artifact_location=str(root / "artifacts"))
    run = client.create_run(experiment)
    model = log_text_model(run.info.run_id, checkpoints["fmlm"], tokenizer_dir, "tiny-fmlm", uri)
    client.set_terminated(run.info.run_id)
    client.set_registered_model_alias("tiny-fmlm", "champion", model.version)
    return {"uri": uri, "root": root, "version": model.version}


def test_registered_model_generates_what_its_checkpoint_does(registry: dict, checkpoints: dict,
                                                             tokenizer_dir: Path, tmp_path: Path) -> None:
    local = TextGenerator.load(checkpoints["fmlm"], tokenizer_dir)
    expected = local.generate(3, 2, 16, seed=4, prefix="The government")
    for source, cache in (("models:/tiny-fmlm@champion", None), ("models:/tiny-fmlm/1", tmp_path / "cache")):
        remote = TextGenerator.load(source, tracking_uri=registry["uri"], cache_dir=cache)
        assert remote.kind == "fmlm"
        assert remote.generate(3, 2, 16, seed=4, prefix="The government") == expected
    assert len(list((tmp_path / "cache").iterdir())) == 1       # one cached model, reused by a second load
    again = TextGenerator.load("models:/tiny-fmlm@champion", tracking_uri=registry["uri"], cache_dir=tmp_path / "cache")
    assert again.generate(3, 2, 16, seed=4, prefix="The government") == expected
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_unknown_model_or_alias_is_named(registry: dict) -> None:
    for uri in ("models:/tiny-fmlm@nobody", "models:/no-such-model@champion", "models:/tiny-fmlm/9"):
        with pytest.raises(LookupError, match=uri):
            TextGenerator.load(uri, tracking_uri=registry["uri"])


def test_pyfunc_passes_prefix_and_renoise(registry: dict, checkpoints: dict, tokenizer_dir: Path) -> None:
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(registry["uri"])
    model = mlflow.pyfunc.load_model("models:/tiny-fmlm@champion")
    out = model.predict(pd.DataFrame({"seed": [0, 1]}), params={"steps": 4, "length": 16, "prefix": "The",
                                                                "renoise": 0.8})
    local = TextGenerator(checkpoints["fmlm"], tokenizer_dir)
    assert list(out["text"]) == [local.generate(1, 4, 16, seed, "The", 0.8)[0] for seed in (0, 1)]


def _flm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "flm.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_cli_prints_count_texts_from_a_registered_model(registry: dict, checkpoints: dict, tokenizer_dir: Path,
                                                        tmp_path: Path) -> None:
    """The real process: hermetic before MLflow is imported, nothing written to ``./mlruns``."""
    out = _flm("generate", "models:/tiny-fmlm@champion", "--tracking-uri", registry["uri"], "-n", "3",
               "--steps", "2", "--length", "16", "--seed", "4", "--prefix", "The government", "--json",
               "--state", str(tmp_path / "state"), "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    expected = TextGenerator(checkpoints["fmlm"], tokenizer_dir).generate(3, 2, 16, 4, "The government")
    assert [r["text"] for r in records] == expected
    assert not (tmp_path / "mlruns").exists() and (tmp_path / "state" / "model-cache").is_dir()


def test_cli_default_store_is_the_projects(registry: dict, checkpoints: dict, tokenizer_dir: Path,
                                           tmp_path: Path) -> None:
    """No ``--tracking-uri``: resolve *and download* from ``<state>/mlflow``, write no ``./mlflow.db``."""
    out = _flm("generate", "models:/tiny-fmlm@champion", "-n", "2", "--steps", "1", "--length", "16", "--json",
               "--state", str(registry["root"] / "state"), "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    expected = TextGenerator(checkpoints["fmlm"], tokenizer_dir).generate(2, 1, 16, 0)
    assert [json.loads(line)["text"] for line in out.stdout.splitlines()] == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_missing_path_exits_2_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-checkpoint"
    out = _flm("generate", str(missing), "--state", str(tmp_path / "state"), cwd=tmp_path)
    assert out.returncode == 2 and f"{missing}: no such checkpoint directory" in out.stderr, out.stderr



def test_cli_main_text_blocks_and_errors(registry: dict, checkpoints: dict, tokenizer_dir: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture, restored_environ: None) -> None:
    from flm.cli import main

    state = ["--state", str(tmp_path / "state"), "--device", "cpu"]
    assert main(["generate", str(checkpoints["flm"]), "--tokenizer", str(tokenizer_dir), "-n", "2", "--steps", "4",
                 "--length", "12", *state]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n\n") == 1 and printed.strip()                          # two text blocks
    assert main(["generate", str(tmp_path), *state]) == 2
    assert "not a checkpoint directory" in capsys.readouterr().err
    assert main(["generate", "models:/tiny-fmlm@nobody", "--tracking-uri", registry["uri"], *state]) == 2
    assert "models:/tiny-fmlm@nobody: not found" in capsys.readouterr().err
    assert main(["generate", str(checkpoints["flm"]), "--renoise", *state]) == 2
    assert "renoise applies to FMLM" in capsys.readouterr().err
