"""Bad parameters and bad data inputs fail at load time: exit 2, one line naming the setting or the
file, before any tool state, server or output exists, and every earlier output stays byte-identical."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from pipelines import data_stages
from pipelines import run as run_cli

# (id, params.yaml text, a substring of the one-line error). Absent sections take their defaults.
BAD_PARAMS = [
    ("duplicate-key", "train:\n  lr: 0.001\n  steps: 10\n  lr: 0.1\n",
     "duplicate key train.lr at line 4 (first at line 2)"),
    ("duplicate-section", "model: {d_model: 64}\neval: {seed: 1}\nmodel: {d_model: 32}\n",
     "duplicate key model at line 3 (first at line 1)"),
    ("duplicate-key-in-profile", "profiles:\n  big:\n    train: {steps: 5, steps: 6}\n",
     "duplicate key profiles.big.train.steps at line 3 (first at line 3)"),
    ("yaml-syntax", "train: {sample_steps: [1, 2}\n", "not valid YAML: expected ',' or ']', but got '}' at line 1"),
    ("train-sample-steps-0", "train: {sample_steps: [0]}\n", "train.sample_steps.0: Input should be greater than"),
    ("distill-sample-steps-negative", "distill: {sample_steps: [1, -4]}\n", "distill.sample_steps.1: Input should be"),
    ("ar-sample-steps-0", "ar: {sample_steps: [0]}\n", "ar.sample_steps.0: Input should be greater than"),
    ("mdlm-sample-steps-0", "mdlm: {sample_steps: [0]}\n", "mdlm.sample_steps.0: Input should be greater than"),
    ("sample-steps-0-in-profile", "profiles:\n  big:\n    train: {sample_steps: [0]}\n",
     "(profile 'big'): train.sample_steps.0"),
    ("fmlm-nfe-0", "eval: {fmlm_nfe: [0, 8]}\n", "eval.fmlm_nfe.0: Input should be greater than"),
    ("fmlm-nfe-repeated", "eval: {fmlm_nfe: [1, 1, 8]}\n", "eval: fmlm_nfe [1, 1, 8] has duplicates"),
    ("max-nfe-0", "eval: {max_nfe: 0}\n", "eval.max_nfe: Input should be greater than"),
    ("max-nfe-not-power-of-two", "eval: {max_nfe: 100}\n", "eval: max_nfe=100 must be a power of two"),
    ("promote-nfe-off-grid", "eval: {promote_nfe: 3}\n", "eval: promote_nfe=3 is not evaluated for flm, fmlm, mdlm"),
    ("fractions-sum-above-1", "distill: {diag_fraction: 0.9, boundary_fraction: 0.2}\n",
     "distill: diag_fraction=0.9 + boundary_fraction=0.2 exceeds 1"),
    ("fraction-above-1", "distill: {boundary_fraction: 1.5}\n", "distill.boundary_fraction: Input should be less"),
    ("warmup-beyond-steps", "train: {steps: 10, warmup_steps: 20}\n", "train: warmup_steps=20 exceeds steps=10"),
    ("batch-vs-accumulation", "mdlm: {batch_size: 30, grad_accum: 4}\n",
     "mdlm: batch_size=30 is not divisible by grad_accum=4"),
    ("batch-vs-workers", "cluster: {workers: 3}\n",
     "train.batch_size=32 is not divisible by cluster.workers x train.grad_accum = 3 x 1"),
    ("entropy-floor-0", "eval: {entropy_floor: 0}\n", "eval.entropy_floor: Input should be greater than 0"),
    ("entropy-floor-above-1", "eval: {entropy_floor: 1.5}\n", "eval.entropy_floor: Input should be less than"),
    ("seed-1e23-text", "train: {seed: 1e23}\n", "train.seed: Input should be a valid integer"),
    ("seed-1e23-float", "ar: {seed: 1.0e+23}\n", "ar.seed: "),
    ("seed-above-2**32-1", "distill: {seed: 4294967296}\n",
     "distill.seed: Input should be less than or equal to 4294967295"),
    ("seed-negative", "eval: {seed: -1}\n", "eval.seed: Input should be greater than or equal to 0"),
    ("unknown-model-key", "model: {d_modle: 64}\n", "model.d_modle: Extra inputs are not permitted"),
    ("odd-time-features", "model: {time_freq_dim: 33}\n", "model: time_freq_dim=33 must be even"),
]


def tree_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path (directories as ``/``-suffixed names)."""
    hashes = {}
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        hashes[key + "/" if path.is_dir() else key] = "" if path.is_dir() else hashlib.sha256(
            path.read_bytes()).hexdigest()
    return hashes


def one_line_error(err: str, *names: str) -> str:
    """The single stderr line; it names every one of ``names``."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- the parameter file
@pytest.mark.parametrize("text, message", [row[1:] for row in BAD_PARAMS], ids=[row[0] for row in BAD_PARAMS])
@pytest.mark.parametrize("cli", ["data_stages", "run"])
def test_bad_params_fail_before_anything_starts(
    cli: str, text: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(text, encoding="utf-8")
    monkeypatch.chdir(project)  # anything written relative to the cwd would show up below
    if cli == "data_stages":
        status = data_stages.main(["--quiet", "--params", "params.yaml", "corpus"])
    else:
        status = run_cli.main(["train_flm", "--root", str(project), "--workers", "0", "--no-register"])
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    one_line_error(err, "params.yaml", message)
    assert sorted(p.name for p in project.iterdir()) == ["params.yaml"]  # no data/, models/, .state, mlflow.db


def test_workers_option_must_split_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text("distill: {batch_size: 8}\n", encoding="utf-8")
    monkeypatch.chdir(project)
    assert run_cli.main(["distill_fmlm", "--root", str(project), "--workers", "3", "--no-register"]) == 2
    one_line_error(capsys.readouterr().err, "--workers 3: train.batch_size=32 is not divisible by cluster.workers")
    assert sorted(p.name for p in project.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize("seed", ["1e23", "-1", "4294967296", "1" + "0" * 30])
def test_generate_seed_out_of_range(
    seed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flm.cli import main as flm_main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        flm_main(["generate", "models/flm", "--seed", seed])
    assert exit_info.value.code == 2
    one_line_error(capsys.readouterr().err, f"argument --seed: must be an integer in [0, 4294967295], got {seed}")
    assert list(tmp_path.iterdir()) == []


def test_the_projects_own_params_load_in_every_profile() -> None:
    from flm.config import load_params

    repo = Path(__file__).resolve().parents[2]
    raw = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    for profile in ["laptop", *raw["profiles"]]:
        assert load_params(repo / "params.yaml", profile=profile).profile == profile


def test_a_merge_key_may_be_overridden(tmp_path: Path) -> None:
    """YAML merge keys (``<<``) are not duplicates: the explicit key overrides the merged one."""
    from flm.config import load_params

    path = tmp_path / "params.yaml"
    path.write_text("train: &loop {steps: 20, batch_size: 8}\nar: {<<: *loop, steps: 10}\n", encoding="utf-8")
    params = load_params(path)
    assert (params.train.steps, params.ar.steps, params.ar.batch_size) == (20, 10, 8)


# ----------------------------------------------------------------------------- data inputs
LINES = [f"Line {i} of a small corpus, with a few words of real text in it." for i in range(40)]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """``in/train.txt`` and ``in/val.txt`` (one document a line), the files of the cases below."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "train.txt").write_text("\n".join(LINES[:30]) + "\n", encoding="utf-8")
    (folder / "val.txt").write_text("\n".join(LINES[30:]) + "\n", encoding="utf-8")
    (folder / "nul.txt").write_bytes(b"\0" * 4096)
    (folder / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(1, 256)))
    (folder / "late-nul.txt").write_bytes(b"a real first line\nthen a NUL \0 here\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "more.txt").write_text("another document\n", encoding="utf-8")
    (folder / "link.txt").symlink_to(folder / "train.txt")
    return folder


# (id, data.source.paths relative to in/, txt_docs, the file named in the error, a substring of it)
BAD_FILES = [
    ("nul-bytes", ["train.txt", "nul.txt"], "file", "nul.txt", "nul.txt: NUL byte at byte 0: a binary file, not text"),
    ("nul-bytes-by-line", ["late-nul.txt", "train.txt"], "line", "late-nul.txt",
     "late-nul.txt:2: NUL byte at byte 29: a binary file"),
    ("binary", ["binary.txt", "train.txt"], "paragraph", "binary.txt", "binary.txt:1: invalid UTF-8 at byte 0"),
    ("same-path-twice", ["train.txt", "train.txt"], "line", "train.txt", "train.txt is listed twice; name each file"),
    ("two-spellings", ["train.txt", "sub/../train.txt"], "line", "train.txt",
     "sub/../train.txt is listed twice (also as "),
    ("glob-overlaps-a-file", ["train.txt", "*.txt"], "line", "train.txt", "is listed twice"),
    ("symlink-to-a-listed-file", ["train.txt", "link.txt"], "line", "link.txt", "link.txt is listed twice (also as "),
    ("recursive-glob-overlap", ["sub/more.txt", "**/more.txt"], "line", "more.txt", "is listed twice"),
]


def write_source(project: Path, folder: Path, paths: list[str], txt_docs: str) -> None:
    source = {"kind": "files", "paths": [str(folder / p) for p in paths], "val_paths": [str(folder / "val.txt")],
              "txt_docs": txt_docs}
    (project / "params.yaml").write_text(yaml.safe_dump({"data": {"source": source}}), encoding="utf-8")


def corpus_stage() -> int:
    return data_stages.main(["--quiet", "--params", "params.yaml", "corpus", "--out", "data/corpus",
                             "--metrics", "data/metrics/corpus.json"])


@pytest.mark.parametrize("paths, txt_docs, culprit, message", [row[1:] for row in BAD_FILES],
                         ids=[row[0] for row in BAD_FILES])
def test_bad_data_files_leave_the_corpus_unchanged(
    paths: list[str], txt_docs: str, culprit: str, message: str, files: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    write_source(project, files, ["train.txt"], "line")
    assert corpus_stage() == 0  # the earlier output
    capsys.readouterr()
    before = tree_hashes(project)
    assert "data/corpus/meta.json" in before and "data/metrics/corpus.json" in before

    write_source(project, files, paths, txt_docs)
    assert corpus_stage() == 2
    out, err = capsys.readouterr()
    one_line_error(err, culprit, message)
    assert out == ""
    after = tree_hashes(project)
    assert {k: v for k, v in after.items() if k != "params.yaml"} == \
        {k: v for k, v in before.items() if k != "params.yaml"}
