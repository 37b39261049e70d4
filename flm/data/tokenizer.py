"""The tokenizer factory and the saved form every kind shares.

``data.tokenizer`` -> :class:`TextTokenizer`: a ``tokenizers.Tokenizer`` plus the ids that wrap a
document (BOS, EOS), the id that pads, and the exact vocabulary size ``V`` (every id is < ``V``;
``V`` sets the flow's schedule). Kinds: ``bpe`` (trained on the corpus' training split), ``gpt2``
(offline, from ``gpt2.tiktoken``), ``hf`` (a pretrained tokenizer, Hub id or local file), ``char``
(one id per printable ASCII character, :func:`char_tokenizer`).

A tokenizer directory holds ``tokenizer.json`` and ``meta.json``; ``meta.json`` carries the
special ids, ``V`` and the SHA-256 of ``tokenizer.json`` (the tokenizer hash).

Special tokens written literally in a text (``"<|endoftext|>"``) are encoded as ordinary text,
never as the special token, so a document can never forge a separator.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from flm.config import BPETokenizer, CharTokenizer, GPT2Tokenizer, HFTokenizer
from flm.data.atomic import atomic_dir
from flm.data.errors import DataError

TOKENIZER_FORMAT = "flm.tokenizer/1"
TOKENIZER_KINDS = ("bpe", "char", "gpt2", "hf")
CHAR_EOT, CHAR_PAD = "<|endoftext|>", "<|pad|>"


@dataclass(frozen=True)
class TokenizerInfo:
    """What the packing and the model need to know about a tokenizer."""

    kind: str
    name: str
    vocab_size: int
    bos_id: int | None
    eos_id: int
    pad_id: int
    sha256: str


class TextTokenizer:
    """Encodes documents (without the tokenizer's own templates) and decodes ids back to text."""

    def __init__(self, tokenizer: Tokenizer, info: TokenizerInfo) -> None:
        self.tokenizer = tokenizer
        self.info = info

    @property
    def vocab_size(self) -> int:
        """``V``: one more than the largest id."""
        return self.info.vocab_size

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, no BOS/EOS (parallel over texts inside ``tokenizers``)."""
        return [encoding.ids for encoding in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def wrap(self, ids: list[int]) -> list[int]:
        """A document as it enters the stream: ``[BOS] ids [EOS]`` (no BOS when BOS is EOS)."""
        head = [self.info.bos_id] if self.info.bos_id not in (None, self.info.eos_id) else []
        return [*head, *ids, self.info.eos_id]

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``, special tokens dropped."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def save(self, out_dir: str | Path) -> None:
        """Write ``tokenizer.json`` and ``meta.json`` into ``out_dir``, atomically."""
        with atomic_dir(out_dir, "meta.json", TOKENIZER_FORMAT) as tmp:
            (tmp / "tokenizer.json").write_text(self.tokenizer.to_str(), encoding="utf-8")
            meta = {"format": TOKENIZER_FORMAT, **asdict(self.info)}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def finish(tokenizer: Tokenizer, kind: str, name: str, bos_id: int | None, eos_id: int, pad_id: int) -> TextTokenizer:
    """Switch off truncation/padding, stop parsing specials in text, record ``V`` and the hash."""
    tokenizer.no_truncation()
    tokenizer.no_padding()
    tokenizer.encode_special_tokens = True
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    size = max(vocab.values()) + 1
    for label, index in (("bos", bos_id), ("eos", eos_id), ("pad", pad_id)):
        if index is not None and not 0 <= index < size:
            raise DataError(f"data.tokenizer: {label} id {index} is outside the vocabulary [0, {size})")
    digest = hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()
    return TextTokenizer(tokenizer, TokenizerInfo(kind, name, size, bos_id, eos_id, pad_id, digest))


def _build_bpe(spec: BPETokenizer, corpus_dir: str | Path | None, progress: bool) -> TextTokenizer:
    from flm.data.bpe import EOT, PAD, train_bpe
    from flm.data.corpus import iter_corpus_batches, read_corpus_meta

    if corpus_dir is None:
        raise DataError("data.tokenizer: kind 'bpe' is trained on a corpus; none was given")
    docs = read_corpus_meta(corpus_dir)["splits"]["train"]["docs"]
    limit = min(docs, spec.max_train_docs or docs)

    def batches() -> Any:
        seen = 0
        for batch in iter_corpus_batches(corpus_dir, "train"):
            batch = batch[: limit - seen]
            seen += len(batch)
            yield batch
            if seen >= limit:
                return

    tokenizer = train_bpe(batches(), spec.vocab_size, spec.min_frequency, num_docs=limit, progress=progress)
    eot, pad = tokenizer.token_to_id(EOT), tokenizer.token_to_id(PAD)
    return finish(tokenizer, "bpe", f"bpe-{spec.vocab_size}", eot, eot, pad)


def char_tokenizer() -> Tokenizer:
    """The ``char`` kind: ids ``0..94`` are the printable ASCII characters ``' '..'~'``, then EOT, PAD.

    Normalizer: NFKD (``é`` -> ``e`` + a combining accent), every character outside ``' '..'~'`` and
    white space dropped, then every run of white space -> one space. Each character is its own pre-token, so
    ``encode(text).ids == [ord(c) - 32 for c in normalized(text)]``; the decoder fuses them back.
    """
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers

    vocab = {chr(code): code - 32 for code in range(32, 127)}
    vocab |= {CHAR_EOT: len(vocab), CHAR_PAD: len(vocab) + 1}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=CHAR_PAD))
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.NFKD(),
        normalizers.Replace(Regex(r"[^\x20-\x7E\s]"), ""),
        normalizers.Replace(Regex(r"\s+"), " "),
    ])
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([CHAR_EOT, CHAR_PAD])
    return tokenizer


def build_tokenizer(
    spec: BPETokenizer | GPT2Tokenizer | HFTokenizer | CharTokenizer,
    corpus_dir: str | Path | None = None,
    progress: bool = True,
) -> TextTokenizer:
    """The factory: train or load the tokenizer that ``spec`` names."""
    if isinstance(spec, BPETokenizer):
        return _build_bpe(spec, corpus_dir, progress)
    if isinstance(spec, CharTokenizer):
        tokenizer = char_tokenizer()
        eot = tokenizer.token_to_id(CHAR_EOT)
        return finish(tokenizer, "char", "char-ascii", eot, eot, tokenizer.token_to_id(CHAR_PAD))
    if isinstance(spec, GPT2Tokenizer):
        from flm.data.gpt2 import EOT, gpt2_tokenizer

        tokenizer = gpt2_tokenizer()
        eot = tokenizer.token_to_id(EOT)
        return finish(tokenizer, "gpt2", "gpt2", eot, eot, eot)
    if isinstance(spec, HFTokenizer):
        from flm.data.pretrained import load_pretrained

        tokenizer, bos, eos, pad = load_pretrained(spec.name, spec.revision, spec.bos, spec.eos, spec.pad, spec.add_pad)
        return finish(tokenizer, "hf", spec.name, bos, eos, pad)
    raise DataError(f"data.tokenizer: unknown tokenizer {spec!r}; known kinds: {', '.join(TOKENIZER_KINDS)}")


def load_tokenizer(tokenizer_dir: str | Path) -> TextTokenizer:
    """A tokenizer saved by :meth:`TextTokenizer.save`; its hash is checked."""
    folder = Path(tokenizer_dir)
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except FileNotFoundError:
        raise DataError(f"{folder}: no tokenizer here; run the tokenizer stage first") from None
    if meta.get("format") != TOKENIZER_FORMAT:
        raise DataError(f"{folder}/meta.json: not a tokenizer of format {TOKENIZER_FORMAT}")
    info = TokenizerInfo(**{key: meta[key] for key in TokenizerInfo.__dataclass_fields__})
    loaded = finish(tokenizer, info.kind, info.name, info.bos_id, info.eos_id, info.pad_id)
    if loaded.info != info:
        raise DataError(f"{folder}: tokenizer.json does not match meta.json (hash or vocabulary size differs)")
    return loaded
