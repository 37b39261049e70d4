"""The user's own text files: ``.txt``, ``.jsonl`` (one JSON object a line), ``.parquet``.

Files are read as a stream (a line, a row group at a time) and must be valid UTF-8 text (a NUL
byte marks a binary file: an error); each file is named once. Every error names the file (and
line) and the parameter that pointed at it.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from flm.data.errors import DataError

SUFFIXES = (".txt", ".jsonl", ".parquet")
_GLOB_CHARS = set("*?[")


def expand_paths(patterns: Iterable[str], param: str = "data.source.paths") -> list[Path]:
    """Files named by ``patterns`` (paths or globs, ``**`` allowed), sorted within each glob.

    A file named twice (the same path twice, two spellings or links of one file, a glob that also
    matches a listed file) is an error: its documents would count twice.
    """
    files: list[Path] = []
    seen: dict[tuple[int, int], Path] = {}
    for pattern in patterns:
        if _GLOB_CHARS & set(pattern):
            found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
            if not found:
                raise DataError(f"{param}: the pattern {pattern!r} matches no file")
        else:
            path = Path(pattern)
            if not path.exists():
                raise DataError(f"{param}: no such file: {pattern}")
            if path.is_dir():
                raise DataError(f"{param}: {pattern} is a directory; give files or a glob like '{pattern}/*.txt'")
            found = [path]
        for path in found:
            if path.suffix.lower() not in SUFFIXES:
                raise DataError(f"{param}: {path}: unsupported file type; known: {', '.join(SUFFIXES)}")
            identity = _identity(path, param)
            if identity in seen:
                also = "" if seen[identity] == path else f" (also as {seen[identity]})"
                raise DataError(f"{param}: {path} is listed twice{also}; name each file once")
            seen[identity] = path
        files.extend(found)
    return files


def _identity(path: Path, param: str) -> tuple[int, int]:
    """``(device, inode)`` of a file: equal for every spelling, symbolic and hard link of it."""
    try:
        info = path.stat()
    except OSError as err:
        raise DataError(f"{param}: cannot read {path}: {err.strerror or err}") from None
    return info.st_dev, info.st_ino


def _decode(raw: bytes, where: str, offset: int = 0) -> str:
    """UTF-8 text of ``raw``; a NUL byte (a binary file) or invalid UTF-8 is an error naming ``where``."""
    nul = raw.find(0)
    if nul >= 0:
        raise DataError(f"{where}: NUL byte at byte {offset + nul}: a binary file, not text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{where}: invalid UTF-8 at byte {offset + err.start}") from None


def _iter_txt(path: Path, docs: str) -> Iterator[str]:
    with path.open("rb") as handle:
        if docs == "file":
            yield _decode(handle.read(), str(path))
            return
        offset, paragraph = 0, []
        for lineno, raw in enumerate(handle, start=1):
            line = _decode(raw, f"{path}:{lineno}", offset).rstrip("\r\n")
            offset += len(raw)
            if docs == "line":
                yield line
            elif line.strip():
                paragraph.append(line)
            elif paragraph:
                yield "\n".join(paragraph)
                paragraph = []
        if paragraph:
            yield "\n".join(paragraph)


def _field(value: object, where: str, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} holds {type(value).__name__}, not text")
    return value


def _iter_jsonl(path: Path, field: str) -> Iterator[str]:
    with path.open("rb") as handle:
        offset = 0
        for lineno, raw in enumerate(handle, start=1):
            where = f"{path}:{lineno}"
            line = _decode(raw, where, offset)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: each line must be a JSON object, got {type(row).__name__}")
            if field not in row:
                raise DataError(
                    f"{where}: no field {field!r} (data.source.text_field); fields: {', '.join(map(str, row))}"
                )
            yield _field(row[field], where, field)


def _iter_parquet(path: Path, field: str, batch_rows: int = 4096) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable parquet file ({err})") from None
    names = table.schema_arrow.names
    if field not in names:
        raise DataError(f"{path}: no column {field!r} (data.source.text_field); columns: {', '.join(names)}")
    kind = table.schema_arrow.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"{path}: column {field!r} has type {kind}, not text")
    for batch in table.iter_batches(batch_size=batch_rows, columns=[field]):
        column = batch.column(0)
        try:
            column.validate(full=True)
        except pa.ArrowInvalid:
            raise DataError(f"{path}: column {field!r} holds invalid UTF-8") from None
        for value in column.to_pylist():
            yield _field(value, str(path), field)


def iter_file_texts(path: Path, text_field: str = "text", txt_docs: str = "file") -> Iterator[str]:
    """Documents of one file; ``text_field`` for structured files, ``txt_docs`` for ``.txt``."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            yield from _iter_txt(path, txt_docs)
        elif suffix == ".jsonl":
            yield from _iter_jsonl(path, text_field)
        elif suffix == ".parquet":
            yield from _iter_parquet(path, text_field)
        else:
            raise DataError(f"{path}: unsupported file type; known: {', '.join(SUFFIXES)}")
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
