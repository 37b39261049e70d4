"""Outputs never destroy anything: a wrong ``--out``/``--models`` is refused (exit 2, one line naming the path)
and leaves the folder byte-identical; a previous output of the same kind is replaced."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from flm.data.atomic import atomic_dir, write_json_atomic
from flm.data.errors import OutputError
from pipelines import data_stages, train_stages
from tests.pipelines.helpers import TINY

from .conftest import make_target, snapshot

TARGETS = ("unrelated", "project", "git")
DATA_STAGES = ("corpus", "tokenizer", "pack")
SAME_KIND = {"corpus": "corpus", "tokenizer": "tokenizer", "pack": "tokens"}
"""Data stage -> the ``tiny_data`` output of its kind."""


def data_args(stage: str, out: Path, tiny_data: dict, tmp_path: Path) -> list[str]:
    """``pipelines.data_stages`` arguments that run ``stage`` into ``out`` on small inputs."""
    docs = [json.loads(line)["text"] for line in (tiny_data["root"] / "in" / "docs.jsonl").read_text().splitlines()]
    source = tmp_path / "in" / "docs.jsonl"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in docs[:60]), encoding="utf-8")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {
        "source": {"kind": "files", "paths": [str(source)], "val_fraction": 0.2},
        "tokenizer": {"kind": "bpe", "vocab_size": 300},
        "packing": {"seq_len": 16},
    }}), encoding="utf-8")
    inputs = {"corpus": ["--metrics", str(tmp_path / "metrics" / "corpus.json")],
              "tokenizer": ["--corpus", str(tiny_data["corpus"])],
              "pack": ["--corpus", str(tiny_data["corpus"]), "--tokenizer", str(tiny_data["tokenizer"]),
                       "--metrics", str(tmp_path / "metrics" / "tokens.json")]}[stage]
    return ["--quiet", "--params", str(params), stage, "--out", str(out), *inputs]


def refused(capsys: pytest.CaptureFixture[str], path: str) -> str:
    """The one stderr line of a refused command; it names ``path``."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and path in err, err
    return err


@pytest.mark.parametrize("stage", DATA_STAGES)
@pytest.mark.parametrize("target", TARGETS)
def test_data_stage_refuses_a_foreign_out_and_leaves_it_byte_identical(
    stage: str, target: str, tiny_data: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = make_target(target, tmp_path / "target")
    before = snapshot(out)
    assert data_stages.main(data_args(stage, out, tiny_data, tmp_path)) == 2
    refused(capsys, str(out))
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


@pytest.mark.parametrize("stage", DATA_STAGES)
def test_data_stage_refuses_the_current_directory(
    stage: str, tiny_data: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    here = make_target("unrelated", tmp_path / "here")
    before = snapshot(here)
    monkeypatch.chdir(here)
    assert data_stages.main(data_args(stage, Path("."), tiny_data, tmp_path)) == 2
    assert "current directory" in refused(capsys, ".")
    assert snapshot(here) == before


@pytest.mark.parametrize("stage", DATA_STAGES)
def test_data_stage_refuses_an_output_of_another_kind(
    stage: str, tiny_data: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = "corpus" if stage != "corpus" else "tokens"
    out = tmp_path / "other"
    shutil.copytree(tiny_data[other], out)
    before = snapshot(out)
    assert data_stages.main(data_args(stage, out, tiny_data, tmp_path)) == 2
    refused(capsys, str(out))
    assert snapshot(out) == before


@pytest.mark.parametrize("stage", DATA_STAGES)
def test_data_stage_replaces_a_previous_output_of_its_kind(stage: str, tiny_data: dict, tmp_path: Path) -> None:
    out = tmp_path / "previous"
    shutil.copytree(tiny_data[SAME_KIND[stage]], out)
    before = json.loads((out / "meta.json").read_text())
    assert data_stages.main(data_args(stage, out, tiny_data, tmp_path)) == 0
    after = json.loads((out / "meta.json").read_text())
    assert after["format"] == before["format"] and after != before
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name) == []


def test_data_stage_refuses_a_metrics_path_that_is_a_folder(
    tiny_data: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = make_target("unrelated", tmp_path / "metrics-folder")
    before = snapshot(metrics)
    args = data_args("corpus", tmp_path / "corpus", tiny_data, tmp_path)
    args[args.index("--metrics") + 1] = str(metrics)
    assert data_stages.main(args) == 2
    refused(capsys, str(metrics))
    assert snapshot(metrics) == before and not (tmp_path / "corpus").exists()  # refused before any work


# ----------------------------------------------------------------------------- training stage --models
def train_args(tiny_data: dict, tmp_path: Path, models: str, steps: int = 2) -> list[str]:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(TINY | {"train": TINY["train"] | {"steps": steps, "sample_n": 0, "val_every": 0,
                                                                       "ckpt_every": 0}}))
    return ["train_flm", "--params", str(params), "--tokens", str(tiny_data["tokens"]), "--tokenizer",
            str(tiny_data["tokenizer"]), "--models", models, "--metrics", str(tmp_path / "metrics"),
            "--state", str(tmp_path / "state"), "--no-tracking", "--quiet", "--device", "cpu"]


@pytest.mark.parametrize("target", TARGETS)
def test_training_stage_refuses_foreign_models_before_training(
    target: str, tiny_data: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = make_target(target, tmp_path / "target")
    before = snapshot(models)
    assert train_stages.main(train_args(tiny_data, tmp_path, str(models))) == 2
    refused(capsys, str(models))
    assert snapshot(models) == before
    assert not (tmp_path / "state").exists()  # refused before the run started


def test_training_stage_refuses_models_dot_in_a_checkout(
    tiny_data: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = make_target("project", tmp_path / "checkout")
    before = snapshot(checkout)
    monkeypatch.chdir(checkout)
    assert train_stages.main(train_args(tiny_data, tmp_path, ".")) == 2
    assert "pyproject.toml" in refused(capsys, ".")
    assert snapshot(checkout) == before


def test_training_flow_refuses_a_foreign_models_entry_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.run import main as run_flow

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    entry = make_target("unrelated", tmp_path / "models" / "flm")
    before = snapshot(tmp_path)
    assert run_flow(["train_flm", "--root", str(tmp_path), "--workers", "0", "--no-register"]) == 2
    refused(capsys, str(entry))
    assert snapshot(tmp_path) == before  # no .state either: refused before Prefect, Ray or MLflow


def test_training_stage_replaces_its_previous_checkpoint(tiny_data: dict, tmp_path: Path) -> None:
    models = tmp_path / "models"
    assert train_stages.main(train_args(tiny_data, tmp_path, str(models), steps=2)) == 0
    assert json.loads((models / "flm" / "checkpoint.json").read_text())["step"] == 2
    assert train_stages.main(train_args(tiny_data, tmp_path, str(models), steps=3)) == 0
    assert json.loads((models / "flm" / "checkpoint.json").read_text())["step"] == 3


# ----------------------------------------------------------------------------- the library helpers
@pytest.mark.parametrize("marker", ["config.json", "MLmodel"])  # the judge cache, the downloaded-model cache
def test_a_cache_entry_holding_other_files_is_refused(marker: str, tmp_path: Path) -> None:
    entry = make_target("unrelated", tmp_path / "entry")
    before = snapshot(entry)
    with pytest.raises(OutputError, match=str(entry)), atomic_dir(entry, marker) as tmp:
        (tmp / marker).write_text("{}")
    assert snapshot(entry) == before
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty", marker) as tmp:  # an empty folder holds nothing to lose
        (tmp / marker).write_text("{}")
    with atomic_dir(tmp_path / "empty", marker) as tmp:  # and now it is an entry of this kind
        (tmp / "second").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["second"]


def test_a_folder_appearing_while_the_output_is_written_survives(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(OutputError, match=str(out)), atomic_dir(out, "meta.json", "flm.corpus/1") as tmp:
        (tmp / "meta.json").write_text('{"format": "flm.corpus/1"}')
        out.mkdir()
        (out / "precious.txt").write_text("mine")
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind


def test_write_json_atomic_replaces_a_file_but_never_a_folder(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "m.json", {"a": 1})
    write_json_atomic(tmp_path / "m.json", {"a": 2})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 2}
    folder = make_target("unrelated", tmp_path / "eval.json")
    before = snapshot(folder)
    with pytest.raises(OutputError, match=str(folder)):
        write_json_atomic(folder, {"a": 3})
    assert snapshot(folder) == before
