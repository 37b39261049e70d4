"""The source factory: a ``data.source`` parameter block -> a stream of split documents."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flm.config import FilesSource, HFSource, PackagedSource
from flm.data.documents import Document, hash_split
from flm.data.errors import DataError
from flm.data.files import expand_paths, iter_file_texts

SOURCE_KINDS = ("packaged", "files", "hf")


def _iter_packaged(spec: PackagedSource) -> Iterator[Document]:
    from flm.data.packaged import iter_packaged, locate

    for name in spec.corpora:
        locate(name)  # fail on a missing package before reading anything
    for name in spec.corpora:
        for text in iter_packaged(name):
            yield Document(hash_split(text, spec.val_fraction), text)


def _iter_files(spec: FilesSource) -> Iterator[Document]:
    train_files = expand_paths(spec.paths, "data.source.paths")
    val_files = expand_paths(spec.val_paths, "data.source.val_paths") if spec.val_paths else []
    both = sorted({p.resolve() for p in train_files} & {p.resolve() for p in val_files})
    if both:
        raise DataError(f"data.source.val_paths: {both[0]} is also in data.source.paths")
    for path in train_files:
        for text in iter_file_texts(path, spec.text_field, spec.txt_docs):
            yield Document("train" if val_files else hash_split(text, spec.val_fraction), text)
    for path in val_files:
        for text in iter_file_texts(path, spec.text_field, spec.txt_docs):
            yield Document("val", text)


def iter_documents(source: PackagedSource | FilesSource | HFSource) -> Iterator[Document]:
    """Every document of ``source`` with its split, in a fixed order (empty ones included)."""
    if isinstance(source, PackagedSource):
        return _iter_packaged(source)
    if isinstance(source, FilesSource):
        return _iter_files(source)
    if isinstance(source, HFSource):
        from flm.data.hf import iter_hf

        return iter_hf(source)
    raise DataError(f"data.source: unknown source {source!r}; known kinds: {', '.join(SOURCE_KINDS)}")


def describe_source(source: PackagedSource | FilesSource | HFSource) -> dict[str, Any]:
    """The source's parameters plus the versions of what it reads (recorded in corpus meta)."""
    info: dict[str, Any] = {"params": source.model_dump(mode="json")}
    if isinstance(source, PackagedSource):
        from flm.data.packaged import PACKAGED, package_version

        info["packages"] = {PACKAGED[n].package: package_version(n) for n in source.corpora}
    elif isinstance(source, HFSource):
        import importlib.metadata

        info["resolved"] = source.resolved().model_dump(mode="json")
        info["packages"] = {"datasets": importlib.metadata.version("datasets")}
    return info
