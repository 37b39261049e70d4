"""All-or-nothing outputs: write into a temporary sibling, then rename over the final path.

A stage that fails half-way leaves neither a half-written output nor its temporary behind.

An output never destroys anything else: a directory output replaces only a missing path, an empty
directory, or a previous output of the same kind, recognised by the marker file the project writes
into it (``meta.json`` with its ``format``, ``checkpoint.json``, ...). Anything else, and always a
folder holding a project (``pyproject.toml``, an ``flm`` package) or a ``.git``, the file system
root, the home directory or a folder holding the current directory, is refused with an
:class:`~flm.data.errors.OutputError` naming the path, before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flm.data.errors import OutputError

_PROJECT_FILES = (".git", "pyproject.toml", "flm/__init__.py")
"""Entries that mark a folder as a project or a repository: never an output target."""


def _sibling(final: Path) -> Path:
    """A fresh hidden name next to ``final`` (same file system, so the rename is atomic)."""
    return final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _is_marked(folder: Path, marker: str, format: str | None) -> bool:
    """Whether ``folder/marker`` exists and, with ``format``, is JSON whose ``format`` is of the same family
    (``flm.corpus/1`` and ``flm.corpus/2`` are both corpora)."""
    path = folder / marker
    if not path.is_file():
        return False
    if format is None:
        return True
    try:
        found = json.loads(path.read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(found, str) and found.rsplit("/", 1)[0] == format.rsplit("/", 1)[0]


def project_marker(folder: str | Path) -> str | None:
    """The entry (``.git``, ``pyproject.toml``, ``flm/__init__.py``) that marks ``folder`` as a project or a
    repository, or ``None``: such a folder is never an output, nor a folder that outputs are written into by name."""
    return next((name for name in _PROJECT_FILES if (Path(folder) / name).exists()), None)


def check_output_dir(final: str | Path, marker: str | None = None, format: str | None = None) -> Path:
    """Raise :class:`OutputError` unless the directory output ``final`` may be (re)placed; return it as a Path.

    ``final`` may be replaced if it is missing, an empty directory, or a directory holding ``marker``
    (a file this kind of output always writes) whose JSON ``format`` field is of the family of
    ``format`` (when given). Never: a file, the file system root, the home directory, the current
    directory or one above it, a folder holding a ``.git``, a ``pyproject.toml`` or an ``flm`` package.
    """
    final = Path(final)
    where = final.resolve()
    if where.parent == where or where == Path.home().resolve():
        raise OutputError(f"{final}: refusing to write an output over the file system root or the home directory")
    cwd = Path.cwd().resolve()
    if where == cwd or where in cwd.parents:
        raise OutputError(f"{final}: refusing to write an output over the current directory or a folder holding it")
    if not final.exists():
        return final
    if not final.is_dir():
        raise OutputError(f"{final}: exists and is not a directory; refusing to replace it with an output directory")
    marker_found = project_marker(final)
    if marker_found is not None:
        raise OutputError(f"{final}: holds {marker_found} (a project or repository); refusing to replace it")
    if next(final.iterdir(), None) is None:
        return final
    if marker is not None and _is_marked(final, marker, format):
        return final
    what = (f"no {marker}" + (f" of format {format!r}" if format else "")) if marker else "not empty"
    raise OutputError(f"{final}: exists and is not a previous output of this kind ({what}); refusing to replace it, "
                      "move it away or choose another path")


@contextmanager
def atomic_dir(final: str | Path, marker: str | None = None, format: str | None = None) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes ``final`` when the block succeeds.

    ``final`` must be replaceable (:func:`check_output_dir` with ``marker`` and ``format``), checked
    before the block runs and again before the rename. On an exception the temporary directory is
    removed and ``final`` is left untouched.

    Raises:
        OutputError: ``final`` holds something else (nothing is written then).
    """
    final = check_output_dir(final, marker, format)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"{final}: a parent of this output path is a file") from None
    tmp = _sibling(final)
    tmp.mkdir()  # mode 0o777 less the umask, like any directory the user creates
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        check_output_dir(final, marker, format)  # something may have appeared while the block ran
    except OutputError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove(final)
    os.replace(tmp, final)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` through a temporary file.

    Raises:
        OutputError: ``path`` is a directory (a file is replaced, a directory never).
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; refusing to replace it with a JSON file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"{path}: a parent of this output path is a file") from None
    tmp = _sibling(path)
    try:
        with tmp.open("x", encoding="utf-8") as handle:
            json.dump(obj, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
