"""A tiny project for the shared-store tests: real text packed small, tiny model and loop parameters.

:func:`build_data` writes ``data/corpus``, ``data/tokenizer`` and ``data/tokens`` (120 BBC articles,
BPE with V = 320, blocks of L = 16) with the project's own data code, in about a second;
:func:`tiny_params` is a parameter tree that trains in a few seconds on one CPU thread.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TINY_MODEL: dict[str, Any] = {"d_model": 32, "n_layers": 2, "n_heads": 2, "cond_dim": 32, "time_freq_dim": 32}
TINY_LOOP: dict[str, Any] = {
    "steps": 4, "batch_size": 8, "lr": 3e-3, "warmup_steps": 1, "ema_decay": 0.9, "val_every": 2, "val_batches": 1,
    "ckpt_every": 2, "keep_last": 2, "log_every": 2, "sample_n": 1, "sample_steps": [2],
}


def tiny_tree(**sections: dict[str, Any]) -> dict[str, Any]:
    """The tiny parameter tree as a dict (``params.yaml`` sections); ``sections`` update it."""
    tree: dict[str, Any] = {"model": TINY_MODEL, "train": TINY_LOOP, "cluster": {"workers": 0, "cpus_per_worker": 1}}
    for name, values in sections.items():
        tree[name] = tree.get(name, {}) | values
    return tree


def tiny_params(**sections: dict[str, Any]) -> Any:
    """:func:`tiny_tree` validated into :class:`flm.config.Params`."""
    from flm.config import Params

    return Params.model_validate(tiny_tree(**sections))


def build_data(root: Path) -> dict[str, Path]:
    """``root/data/{corpus,tokenizer,tokens}`` from 120 packaged BBC articles; returns the three folders."""
    from flm.config import BPETokenizer, FilesSource, PackingParams
    from flm.data.corpus import build_corpus
    from flm.data.packaged import iter_packaged
    from flm.data.packing import pack
    from flm.data.tokenizer import build_tokenizer

    data = root / "data"
    docs = list(iter_packaged("bbc_news"))[::17][:120]
    src = root / "in" / "docs.jsonl"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    build_corpus(FilesSource(paths=(str(src),), val_fraction=0.1), data / "corpus", progress=False)
    build_tokenizer(BPETokenizer(vocab_size=320), data / "corpus", progress=False).save(data / "tokenizer")
    pack(data / "corpus", data / "tokenizer", data / "tokens", PackingParams(seq_len=16), progress=False)
    return {name: data / name for name in ("corpus", "tokenizer", "tokens")}
