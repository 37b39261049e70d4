"""Documents and the deterministic document-level train/validation split."""

from __future__ import annotations

import hashlib
from typing import Literal, NamedTuple

Split = Literal["train", "val"]
SPLITS: tuple[Split, ...] = ("train", "val")


class Document(NamedTuple):
    """One document of a corpus and the split it belongs to."""

    split: Split
    text: str


def val_score(text: str) -> float:
    """A uniform number in [0, 1) that depends on the document's text only (BLAKE2b, 64 bits).

    The split is a function of content, not of position: reordering the input, adding files or
    changing the number of workers never moves a document, and two identical documents always
    land in the same split.
    """
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def hash_split(text: str, val_fraction: float) -> Split:
    """``"val"`` for about ``val_fraction`` of all documents, ``"train"`` for the rest."""
    return "val" if val_score(text) < val_fraction else "train"
