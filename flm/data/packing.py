"""The paper's "wrap" packing: tokenize every document, join them, cut blocks of ``L`` tokens.

Each split is one stream ``[BOS] doc_1 [EOS] [BOS] doc_2 [EOS] ...`` (no BOS when the tokenizer's
BOS is its EOS, as for GPT-2 and the trained BPE) cut into consecutive blocks of ``L`` tokens; a
document may straddle two blocks. Nothing is dropped: the last block is filled up with PAD, and
``meta.json`` says how many. Blocks go to raw little-endian shards ``{split}-NNNNN.bin`` of
uint16 (every id < 65,536) or uint32, read back memory-mapped by :mod:`flm.data.blocks`.

The corpus streams through in batches of documents; ``tokenizers`` encodes each batch on all
cores while the next batch is read, so memory stays flat however large the corpus.
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from flm.config import PackingParams
from flm.data.atomic import atomic_dir
from flm.data.corpus import iter_corpus_batches, read_corpus_meta
from flm.data.documents import SPLITS
from flm.data.errors import DataError
from flm.data.tokenizer import TextTokenizer, load_tokenizer

TOKENS_FORMAT = "flm.tokens/1"


def shard_dtype(vocab_size: int, requested: str = "auto") -> np.dtype:
    """The shard dtype for ids in ``[0, vocab_size)``: uint16 when they fit, else uint32."""
    fits16 = vocab_size <= 1 << 16
    if requested == "auto":
        return np.dtype("<u2" if fits16 else "<u4")
    if requested == "uint16" and not fits16:
        raise DataError(
            f"data.packing.dtype: uint16 holds ids below 65,536 but the vocabulary has V = {vocab_size:,}; "
            "use uint32 or auto"
        )
    if requested not in ("uint16", "uint32"):
        raise DataError(f"data.packing.dtype: unknown dtype {requested!r}; known: auto, uint16, uint32")
    if vocab_size > 1 << 32:
        raise DataError(f"data.packing.dtype: V = {vocab_size:,} does not fit uint32")
    return np.dtype("<u2" if requested == "uint16" else "<u4")


class _BlockWriter:
    """Appends one split's token stream to shard files of whole blocks."""

    def __init__(self, folder: Path, split: str, seq_len: int, dtype: np.dtype, shard_tokens: int) -> None:
        self.folder, self.split, self.seq_len, self.dtype = folder, split, seq_len, dtype
        self.capacity = max(1, shard_tokens // seq_len) * seq_len
        self.tokens = 0
        self.in_shard = 0
        self.shards: list[dict[str, Any]] = []
        self.handle: BinaryIO | None = None

    def _open(self) -> BinaryIO:
        if self.handle is None:
            name = f"{self.split}-{len(self.shards):05d}.bin"
            self.shards.append({"file": name, "blocks": 0})
            self.handle = (self.folder / name).open("wb")
            self.in_shard = 0
        return self.handle

    def add(self, chunk: np.ndarray) -> None:
        """Append stream tokens (counted as content)."""
        self.tokens += chunk.size
        self._write(chunk)

    def _write(self, chunk: np.ndarray) -> None:
        while chunk.size:
            room = self.capacity - self.in_shard
            part, chunk = chunk[:room], chunk[room:]
            self._open().write(part.tobytes())
            self.in_shard += part.size
            self.shards[-1]["blocks"] = -(-self.in_shard // self.seq_len)
            if self.in_shard == self.capacity:
                self.handle.close()
                self.handle = None

    def discard(self) -> None:
        """Close the open shard without padding (the caller is abandoning the output)."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def close(self, pad_id: int) -> int:
        """Pad the last block; return the number of PAD tokens written."""
        pad = -self.tokens % self.seq_len
        if pad:
            self._write(np.full(pad, pad_id, dtype=self.dtype))
        self.discard()
        return pad


def _stream_chunk(tok: TextTokenizer, encoded: list[list[int]], dtype: np.dtype) -> np.ndarray:
    wrapped = [tok.wrap(ids) for ids in encoded]
    count = sum(len(ids) for ids in wrapped)
    return np.fromiter(itertools.chain.from_iterable(wrapped), dtype=dtype, count=count)


def _pack_split(
    tok: TextTokenizer, corpus_dir: Path, writer: _BlockWriter, docs: int, batch_docs: int, progress: bool
) -> None:
    from tqdm.auto import tqdm

    with (
        ThreadPoolExecutor(max_workers=1) as pool,
        tqdm(total=docs, desc=f"pack {writer.split}", unit=" doc", disable=not progress, mininterval=1.0) as bar,
    ):
        pending: deque[tuple[int, Any]] = deque()

        def drain(keep: int) -> None:
            while len(pending) > keep:
                size, future = pending.popleft()
                writer.add(_stream_chunk(tok, future.result(), writer.dtype))
                bar.update(size)
                bar.set_postfix(tokens=f"{writer.tokens:,}", refresh=False)

        for batch in iter_corpus_batches(corpus_dir, writer.split, batch_docs):
            pending.append((len(batch), pool.submit(tok.encode_batch, batch)))
            drain(keep=1)  # encode batch i+1 while batch i is written
        drain(keep=0)


def pack(
    corpus_dir: str | Path,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    params: PackingParams,
    progress: bool = True,
    batch_docs: int = 1000,
) -> dict[str, Any]:
    """Tokenize and pack both splits of a corpus into ``out_dir`` (atomically); return its meta."""
    corpus_dir = Path(corpus_dir)
    corpus = read_corpus_meta(corpus_dir)
    tok = load_tokenizer(tokenizer_dir)
    dtype = shard_dtype(tok.vocab_size, params.dtype)
    seq_len = params.seq_len
    splits: dict[str, Any] = {}
    with atomic_dir(out_dir, "meta.json", TOKENS_FORMAT) as tmp:
        for split in SPLITS:
            docs = corpus["splits"][split]["docs"]
            writer = _BlockWriter(tmp, split, seq_len, dtype, params.shard_tokens)
            try:
                _pack_split(tok, corpus_dir, writer, docs, batch_docs, progress)
                if writer.tokens < seq_len:
                    raise DataError(
                        f"data.packing.seq_len: L = {seq_len:,} is larger than the {split} split can fill "
                        f"({writer.tokens:,} tokens in {docs:,} documents); lower it or use more text"
                    )
                pad = writer.close(tok.info.pad_id)
            except BaseException:
                writer.discard()
                raise
            splits[split] = {
                "docs": docs,
                "tokens": writer.tokens,
                "separator_tokens": docs * (len(tok.wrap([]))),
                "pad_tokens": pad,
                "blocks": (writer.tokens + pad) // seq_len,
                "shards": writer.shards,
            }
        meta = {
            "format": TOKENS_FORMAT,
            "V": tok.vocab_size,
            "L": seq_len,
            "dtype": dtype.name,
            "byteorder": "little",
            "tokenizer": asdict(tok.info),
            "source_fingerprint": corpus["fingerprint"],
            "splits": splits,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return meta
