"""A corpus on disk: a source's documents split train/validation, as parquet shards.

Layout of a corpus directory::

    meta.json                  source parameters and versions, counts, fingerprint
    train/part-00000.parquet   one string column ``text``; 100,000 documents a shard
    val/part-00000.parquet

Documents stream through: at most one row group (1,000 documents) per split is held in memory.
Blank documents are skipped and counted. The fingerprint is a SHA-256 over every kept document's
split and bytes, in order, so it changes exactly when the corpus does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flm.config import FilesSource, HFSource, PackagedSource
from flm.data.atomic import atomic_dir
from flm.data.documents import SPLITS
from flm.data.errors import DataError
from flm.data.sources import describe_source, iter_documents

CORPUS_FORMAT = "flm.corpus/1"
DOCS_PER_SHARD = 100_000
ROWS_PER_GROUP = 1_000


class _ShardWriter:
    """Appends texts to ``part-NNNNN.parquet`` files of one split."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.buffer: list[str] = []
        self.shard_docs = 0
        self.shard_index = 0
        self.writer: Any = None
        folder.mkdir(parents=True)

    def add(self, text: str) -> None:
        self.buffer.append(text)
        if len(self.buffer) >= ROWS_PER_GROUP or self.shard_docs + len(self.buffer) >= DOCS_PER_SHARD:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.buffer:
            return
        if self.writer is None:
            path = self.folder / f"part-{self.shard_index:05d}.parquet"
            self.writer = pq.ParquetWriter(path, pa.schema([("text", pa.large_string())]), compression="zstd")
        self.writer.write_table(pa.table({"text": pa.array(self.buffer, type=pa.large_string())}))
        self.shard_docs += len(self.buffer)
        self.buffer = []
        if self.shard_docs >= DOCS_PER_SHARD:
            self.writer.close()
            self.writer, self.shard_docs = None, 0
            self.shard_index += 1

    def close(self) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()


def _empty_message(source: PackagedSource | FilesSource | HFSource, blank: int) -> str:
    where = f"data.source ({source.kind})"
    field = getattr(source, "text_field", None) if not isinstance(source, PackagedSource) else None
    if field:
        where += f", text field {field!r}"
    return f"the corpus is empty: {where} gave no non-blank document ({blank} blank ones)"


def build_corpus(
    source: PackagedSource | FilesSource | HFSource, out_dir: str | Path, progress: bool = True
) -> dict[str, Any]:
    """Read ``source`` and write the corpus directory ``out_dir`` atomically; return its meta."""
    from tqdm.auto import tqdm

    cap = source.max_docs
    counts = {split: {"docs": 0, "chars": 0, "bytes": 0} for split in SPLITS}
    digests = {split: hashlib.sha256() for split in SPLITS}
    blank = 0
    with atomic_dir(out_dir, "meta.json", CORPUS_FORMAT) as tmp:
        writers = {split: _ShardWriter(tmp / split) for split in SPLITS}
        with tqdm(desc="corpus", unit=" doc", disable=not progress, mininterval=1.0) as bar:
            for split, text in iter_documents(source):
                if not text.strip():
                    blank += 1
                    continue
                if cap is not None and counts[split]["docs"] >= cap:
                    if all(counts[s]["docs"] >= cap for s in SPLITS):
                        break
                    continue
                raw = text.encode("utf-8")
                writers[split].add(text)
                counts[split]["docs"] += 1
                counts[split]["chars"] += len(text)
                counts[split]["bytes"] += len(raw)
                digests[split].update(len(raw).to_bytes(8, "little") + raw)
                bar.update(1)
                if bar.n % 1000 == 0:
                    bar.set_postfix(train=counts["train"]["docs"], val=counts["val"]["docs"], refresh=False)
        for writer in writers.values():
            writer.close()
        if counts["train"]["docs"] + counts["val"]["docs"] == 0:
            raise DataError(_empty_message(source, blank))
        if counts["val"]["docs"] == 0:
            raise DataError(
                f"no validation documents among {counts['train']['docs']}: raise data.source.val_fraction "
                f"(now {source.val_fraction}) or name a validation split/files"
            )
        if counts["train"]["docs"] == 0:
            raise DataError(f"no training documents (all {counts['val']['docs']} went to validation)")
        hashes = {split: digests[split].hexdigest() for split in SPLITS}
        meta = {
            "format": CORPUS_FORMAT,
            "source": describe_source(source),
            "splits": counts,
            "blank_docs_skipped": blank,
            "split_sha256": hashes,
            "fingerprint": hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest(),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return meta


def read_corpus_meta(corpus_dir: str | Path) -> dict[str, Any]:
    """The ``meta.json`` of a corpus directory (an error says to run the corpus stage first)."""
    path = Path(corpus_dir) / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{corpus_dir}: no corpus here ({path.name} missing); run the corpus stage first") from None
    if meta.get("format") != CORPUS_FORMAT:
        raise DataError(f"{path}: not a corpus of format {CORPUS_FORMAT}")
    return meta


def iter_corpus_batches(corpus_dir: str | Path, split: str, batch_docs: int = 1000) -> Iterator[list[str]]:
    """The texts of one split, in order, ``batch_docs`` at a time."""
    import pyarrow.parquet as pq

    files = sorted((Path(corpus_dir) / split).glob("part-*.parquet"))
    if not files:
        raise DataError(f"{corpus_dir}: split {split!r} has no shard; run the corpus stage first")
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_docs, columns=["text"]):
            yield batch.column(0).to_pylist()
