"""Any Hugging Face dataset as a document source.

``path`` is a Hub id (``dvruette/lm1b``) or a packaged builder (``parquet``, ``json``, ``text``)
with ``data_files``; ``name`` is its configuration. The datasets are memory-mapped Arrow tables
(or streams, with ``streaming``), read in batches: OpenWebText never sits in memory.

Online use needs the Hub: run without ``HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1``; the cache goes
to ``$HF_HOME`` (the pipeline sets it to ``.state/hf`` unless you did).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from flm.config import HFSource
from flm.data.detokenize import DETOKENIZERS
from flm.data.documents import Document, Split, hash_split
from flm.data.errors import DataError

BATCH_ROWS = 1000


def _describe(spec: HFSource) -> str:
    parts = [repr(spec.path)] + ([f"config {spec.name!r}"] if spec.name else [])
    return " ".join(parts) + (f" (data_files={spec.data_files!r})" if spec.data_files else "")


def load_split(spec: HFSource, split: str) -> Any:
    """``datasets.load_dataset`` for one split; errors name the ``data.source`` fields at fault."""
    import datasets  # lazy: heavy, and reads HF_* variables when imported

    try:
        return datasets.load_dataset(
            spec.path,
            spec.name,
            data_files=spec.data_files,
            revision=spec.revision,
            split=split,
            streaming=spec.streaming,
        )
    except DataError:
        raise
    except Exception as err:
        hint = ""
        if "split" in str(err).lower():
            hint = " (check data.source.train_split / val_split)"
        elif isinstance(err, (ConnectionError, OSError)) or "offline" in str(err).lower():
            hint = " (the Hub needs the network: unset HF_DATASETS_OFFLINE/HF_HUB_OFFLINE)"
        raise DataError(
            f"data.source: cannot load split {split!r} of {_describe(spec)}{hint}: {type(err).__name__}: {err}"
        ) from None


def _check_field(dataset: Any, spec: HFSource, split: str) -> None:
    columns = getattr(dataset, "column_names", None)
    if columns is not None and spec.text_field not in columns:
        raise DataError(
            f"data.source.text_field: split {split!r} of {_describe(spec)} has no column "
            f"{spec.text_field!r}; columns: {', '.join(columns)}"
        )


def _texts(dataset: Any, spec: HFSource, split: str) -> Iterator[str]:
    field = spec.text_field
    for batch in dataset.iter(batch_size=BATCH_ROWS):
        if field not in batch:
            raise DataError(f"data.source.text_field: split {split!r} of {_describe(spec)} has no {field!r}")
        for value in batch[field]:
            if value is None:
                yield ""
            elif isinstance(value, str):
                yield value
            else:
                raise DataError(f"data.source.text_field: {field!r} of {_describe(spec)} holds {type(value).__name__}")


def _head(dataset: Any, start: int, stop: int) -> Any:
    """Rows ``[start, stop)`` of a map-style dataset (contiguous: no index mapping is built)."""
    return dataset.select(range(start, stop))


def _cap(dataset: Any, limit: int | None) -> Any:
    if limit is None:
        return dataset
    if hasattr(dataset, "__len__"):
        return _head(dataset, 0, min(limit, len(dataset)))
    return dataset.take(limit)


def iter_hf(spec: HFSource) -> Iterator[Document]:
    """Documents of an ``hf`` source with their split (see :class:`flm.config.HFSource`)."""
    spec = spec.resolved()
    detok: Callable[[str], str] = DETOKENIZERS[spec.detokenize] if spec.detokenize else str
    train_name = spec.train_split or "train"
    train = load_split(spec, train_name)
    _check_field(train, spec, train_name)
    parts: list[tuple[Split, Any, str]]
    if spec.val_last_n is not None:
        total, held = len(train), spec.val_last_n
        if total <= held:
            raise DataError(
                f"data.source.val_last_n={held}: split {train_name!r} of {_describe(spec)} has only {total} rows"
            )
        parts = [
            ("train", _cap(_head(train, 0, total - held), spec.max_docs), train_name),
            ("val", _cap(_head(train, total - held, total), spec.max_docs), train_name),
        ]
    elif spec.val_split is not None:
        val = load_split(spec, spec.val_split)
        _check_field(val, spec, spec.val_split)
        parts = [
            ("train", _cap(train, spec.max_docs), train_name),
            ("val", _cap(val, spec.max_docs), spec.val_split),
        ]
    else:
        for text in _texts(train, spec, train_name):
            text = detok(text)
            yield Document(hash_split(text, spec.val_fraction), text)
        return
    for split, dataset, name in parts:
        for text in _texts(dataset, spec, name):
            yield Document(split, detok(text))
