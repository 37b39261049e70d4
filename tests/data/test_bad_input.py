"""Bad input: a clear error naming the parameter or file, and nothing half-written left behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from flm.config import BPETokenizer, FilesSource, HFSource, HFTokenizer, PackingParams
from flm.data.corpus import build_corpus
from flm.data.errors import DataError
from flm.data.packaged import locate
from flm.data.packing import pack
from flm.data.tokenizer import build_tokenizer
from pipelines.data_stages import main

from .conftest import leftovers, write_jsonl, write_parquet


def fails_cleanly(source: FilesSource | HFSource, out: Path, match: str) -> None:
    """Building a corpus from ``source`` raises ``match`` and leaves no trace in ``out.parent``."""
    with pytest.raises(DataError, match=match):
        build_corpus(source, out, progress=False)
    assert not out.exists()
    assert leftovers(out.parent) == []


# ----------------------------------------------------------------------------- unknown names
def run_stage(tmp_path: Path, data: dict, stage: str = "corpus") -> int:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": data}), encoding="utf-8")
    return main(["--quiet", "--params", str(params), stage, "--out", str(tmp_path / "out")])


def test_unknown_source_via_the_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_stage(tmp_path, {"source": {"kind": "ftp"}}) == 2
    err = capsys.readouterr().err
    assert "data.source" in err and "'packaged', 'files', 'hf'" in err
    assert not (tmp_path / "out").exists()


def test_unknown_tokenizer_via_the_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_stage(tmp_path, {"tokenizer": "spm"}, stage="tokenizer") == 2
    assert "unknown tokenizer 'spm'; known: bpe, char, gpt2, hf:NAME" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_packaged_corpus() -> None:
    with pytest.raises(DataError, match="unknown corpus 'enron'; known: bbc_news, wikipedia, shakespeare"):
        locate("enron")


def test_missing_params_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--params", str(tmp_path / "nope.yaml"), "corpus"]) == 2
    assert "cannot read parameter file" in capsys.readouterr().err


# ----------------------------------------------------------------------------- files
def test_missing_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.txt")
    fails_cleanly(FilesSource(paths=(missing,)), tmp_path / "c", f"data.source.paths: no such file: {missing}")


def test_glob_matching_nothing(tmp_path: Path) -> None:
    fails_cleanly(FilesSource(paths=(f"{tmp_path}/*.jsonl",)), tmp_path / "c", "matches no file")


def test_directory_and_unknown_suffix(tmp_path: Path) -> None:
    (tmp_path / "dir.txt").mkdir()
    fails_cleanly(FilesSource(paths=(str(tmp_path / "dir.txt"),)), tmp_path / "c", "is a directory")
    (tmp_path / "a.csv").write_text("x")
    fails_cleanly(FilesSource(paths=(str(tmp_path / "a.csv"),)), tmp_path / "c", r"unsupported file type; known: \.txt")


def test_unreadable_file(tmp_path: Path) -> None:
    """A file that exists but cannot be read, even by root: reading /proc/self/mem at 0 fails."""
    if not Path("/proc/self/mem").exists():
        pytest.skip("needs Linux /proc")
    path = tmp_path / "memory.txt"
    path.symlink_to("/proc/self/mem")
    fails_cleanly(FilesSource(paths=(str(path),)), tmp_path / "c", f"cannot read {path}: Input/output error")


@contextmanager
def without_root() -> Iterator[None]:
    """Run the body as ``nobody`` (effective ids) when this process is root, so file modes apply; restored after."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_file_without_read_permission() -> None:
    """Mode 0 refuses reading with EACCES; root reads whatever the mode, so as root the build runs as ``nobody``
    (in a folder anyone may enter and write, outside pytest's owner-only temporary folders)."""
    folder = Path(tempfile.mkdtemp(prefix="flm-mode-"))
    try:
        folder.chmod(0o777)
        path = folder / "secret.txt"
        path.write_text("hidden")
        path.chmod(0)
        with without_root():
            fails_cleanly(FilesSource(paths=(str(path),)), folder / "c", f"cannot read {path}: Permission denied")
    finally:
        shutil.rmtree(folder)


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    fails_cleanly(FilesSource(paths=(str(path),)), tmp_path / "c", "not a readable parquet file")


def test_empty_corpus(tmp_path: Path) -> None:
    (tmp_path / "blank.txt").write_text("  \n\n\t\n")
    fails_cleanly(FilesSource(paths=(str(tmp_path / "blank.txt"),)), tmp_path / "c", "the corpus is empty")


def test_empty_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ["", "", " "], field="body")
    source = FilesSource(paths=(str(path),), text_field="body")
    fails_cleanly(source, tmp_path / "c", r"the corpus is empty: .*text field 'body'.*\(3 blank ones\)")
    parquet = write_parquet(tmp_path / "d.parquet", [None, "", None])
    fails_cleanly(FilesSource(paths=(str(parquet),)), tmp_path / "c", "the corpus is empty")


def test_missing_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ["a", "b"], field="content")
    match = f"{path}:1: no field 'text' \\(data.source.text_field\\); fields: content, id"
    fails_cleanly(FilesSource(paths=(str(path),)), tmp_path / "c", match)
    parquet = write_parquet(tmp_path / "d.parquet", ["a"], field="content")
    fails_cleanly(FilesSource(paths=(str(parquet),)), tmp_path / "c", "no column 'text'.*columns: content, n")


def test_invalid_utf8(tmp_path: Path, bbc_docs: list[str]) -> None:
    txt = tmp_path / "latin1.txt"
    txt.write_bytes("good line\nprice: £5\n".encode("latin-1"))
    fails_cleanly(FilesSource(paths=(str(txt),)), tmp_path / "c", f"{txt}: invalid UTF-8 at byte 17")
    source = FilesSource(paths=(str(txt),), txt_docs="line")
    fails_cleanly(source, tmp_path / "c", f"{txt}:2: invalid UTF-8 at byte 17")
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    fails_cleanly(FilesSource(paths=(str(jsonl),)), tmp_path / "c", f"{jsonl}:2: invalid UTF-8")


def test_invalid_utf8_in_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    column = pa.array([b"fine", b"caf\xe9"], type=pa.binary()).view(pa.string())  # unchecked bytes
    pq.write_table(pa.table({"text": column}), tmp_path / "bad.parquet")
    fails_cleanly(FilesSource(paths=(str(tmp_path / "bad.parquet"),)), tmp_path / "c", "invalid UTF-8")


def test_failure_after_many_documents_keeps_the_old_output(tmp_path: Path, bbc_docs: list[str]) -> None:
    good = write_jsonl(tmp_path / "a.jsonl", bbc_docs[:1500])
    build_corpus(FilesSource(paths=(str(good),)), tmp_path / "corpus", progress=False)
    before = {p: p.read_bytes() for p in (tmp_path / "corpus").rglob("*") if p.is_file()}
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(DataError, match="invalid UTF-8"):  # fails after 1,500 documents were written
        build_corpus(FilesSource(paths=(str(good), str(bad))), tmp_path / "corpus", progress=False)
    after = {p: p.read_bytes() for p in (tmp_path / "corpus").rglob("*") if p.is_file()}
    assert after == before
    assert leftovers(tmp_path) == []


def test_no_validation_document(tmp_path: Path, bbc_docs: list[str]) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", bbc_docs[:5])
    source = FilesSource(paths=(str(path),), val_fraction=1e-9)
    fails_cleanly(source, tmp_path / "c", r"no validation documents among 5: raise data.source.val_fraction")


# ----------------------------------------------------------------------------- hf
def test_hf_bad_field_split_and_file(tmp_path: Path, bbc_docs: list[str]) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", bbc_docs[:20], field="body")
    fails_cleanly(HFSource(path="json", data_files=str(data)), tmp_path / "c", "has no column 'text'; columns: body")
    source = HFSource(path="json", data_files=str(data), text_field="body", val_split="validation")
    fails_cleanly(source, tmp_path / "c", r"cannot load split 'validation'.*train_split / val_split")
    source = HFSource(path="json", data_files=str(tmp_path / "missing.jsonl"), text_field="body")
    fails_cleanly(source, tmp_path / "c", r"data\.source: cannot load split 'train'")
    source = HFSource(path="json", data_files=str(data), text_field="body", val_last_n=20)
    fails_cleanly(source, tmp_path / "c", r"data\.source\.val_last_n=20: .* has only 20 rows")


# ----------------------------------------------------------------------------- tokenizer and packing
@pytest.fixture
def tiny_corpus(tmp_path: Path, bbc_docs: list[str]) -> Path:
    source = FilesSource(paths=(str(write_jsonl(tmp_path / "d.jsonl", bbc_docs[:30])),), val_fraction=0.2)
    build_corpus(source, tmp_path / "corpus", progress=False)
    build_tokenizer(BPETokenizer(vocab_size=500), tmp_path / "corpus", progress=False).save(tmp_path / "tok")
    return tmp_path


def test_sequence_longer_than_the_corpus(tiny_corpus: Path) -> None:
    corpus = json.loads((tiny_corpus / "corpus" / "meta.json").read_text())["splits"]
    assert corpus["train"]["chars"] > 20_000 > corpus["val"]["chars"] > 0
    # 20,000 tokens: more than the validation split holds, far fewer than the training split
    with pytest.raises(DataError, match=r"data\.packing\.seq_len: L = 20,000 is larger than the val split can fill"):
        pack(tiny_corpus / "corpus", tiny_corpus / "tok", tiny_corpus / "tokens", PackingParams(seq_len=20_000))
    assert not (tiny_corpus / "tokens").exists() and leftovers(tiny_corpus) == []


def test_vocabulary_too_large_for_uint16(tiny_corpus: Path) -> None:
    from .test_packing import word_level

    build_tokenizer(HFTokenizer(name=str(word_level(tiny_corpus / "big", 70_000)))).save(tiny_corpus / "bigtok")
    with pytest.raises(DataError, match=r"data\.packing\.dtype: uint16 holds ids below 65,536 .* V = 70,000"):
        pack(tiny_corpus / "corpus", tiny_corpus / "bigtok", tiny_corpus / "tokens", PackingParams(dtype="uint16"))
    assert not (tiny_corpus / "tokens").exists() and leftovers(tiny_corpus) == []


def test_stages_out_of_order(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run the corpus stage first"):
        build_tokenizer(BPETokenizer(), tmp_path / "no-corpus", progress=False)
    with pytest.raises(DataError, match="run the corpus stage first"):
        pack(tmp_path / "no-corpus", tmp_path / "no-tok", tmp_path / "tokens", PackingParams())
    assert not (tmp_path / "tokens").exists()
