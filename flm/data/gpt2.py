"""GPT-2's tokenizer, offline: ``openai-whisper`` ships its BPE ranks as ``gpt2.tiktoken``.

A ``.tiktoken`` file lists each token's bytes (base64) and rank; the rank is the token's id and
the order of its merge. :func:`ranks_to_tokenizer` rebuilds the merge list a HF byte-level BPE
needs: the merge that creates token ``t`` is the last step of running BPE on ``t``'s bytes with
only the merges ranked below ``t`` — exactly the pair tiktoken would join. The result encodes
every text to the same ids as tiktoken's ``r50k_base`` / HF's ``gpt2``.
"""

from __future__ import annotations

import base64
import importlib.util
from functools import lru_cache
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, models

from flm.data.bpe import empty_byte_level_bpe
from flm.data.errors import DataError

EOT = "<|endoftext|>"
GPT2_VOCAB = 50257
WHISPER_PIN = "openai-whisper==20250625"


def gpt2_tiktoken_path() -> Path:
    """``whisper/assets/gpt2.tiktoken`` of the installed ``openai-whisper`` (not imported)."""
    spec = importlib.util.find_spec("whisper")
    roots = list(spec.submodule_search_locations or []) if spec else []
    path = Path(roots[0]) / "assets" / "gpt2.tiktoken" if roots else None
    if path is None or not path.is_file():
        raise DataError(
            f"data.tokenizer: kind 'gpt2' reads gpt2.tiktoken from openai-whisper; "
            f"install it with: pip install --no-deps {WHISPER_PIN}"
        )
    return path


def load_ranks(path: Path) -> dict[bytes, int]:
    """Token bytes -> rank, from a ``.tiktoken`` file."""
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise DataError(f"{path}:{lineno}: not a '.tiktoken' line (base64 token, rank)") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise DataError(f"{path}: ranks are not 0..{len(ranks) - 1}")
    return ranks


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 bytes to printable characters (``tokenizers`` uses it)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _last_merge(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two parts that BPE, limited to ranks below ``token``'s, leaves of ``token``."""
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best, where = limit, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1], limit)
            if rank < best:
                best, where = rank, i
        if where < 0:
            break
        parts[where : where + 2] = [parts[where] + parts[where + 1]]
    if len(parts) != 2:
        raise DataError(f"token {token!r} (rank {limit}) is not reachable by merges below its rank")
    return parts[0], parts[1]


def ranks_to_tokenizer(ranks: dict[bytes, int], specials: dict[str, int]) -> Tokenizer:
    """A HF byte-level BPE equivalent to the tiktoken encoding ``ranks`` + ``specials``."""
    to_str = byte_to_unicode()

    def text(token: bytes) -> str:
        return "".join(to_str[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = [
        tuple(text(part) for part in _last_merge(token, ranks))
        for token, _ in sorted(ranks.items(), key=lambda item: item[1])
        if len(token) > 1
    ]
    tokenizer = empty_byte_level_bpe()
    tokenizer.model = models.BPE(vocab=vocab, merges=merges)
    for content, index in sorted(specials.items(), key=lambda item: item[1]):
        if index != tokenizer.get_vocab_size(with_added_tokens=True):
            raise DataError(f"special token {content!r} must take the next free id, not {index}")
        tokenizer.add_special_tokens([AddedToken(content, special=True, normalized=False)])
    return tokenizer


def gpt2_tokenizer() -> Tokenizer:
    """GPT-2's 50,257-token tokenizer (``<|endoftext|>`` = 50256), built offline."""
    ranks = load_ranks(gpt2_tiktoken_path())
    tokenizer = ranks_to_tokenizer(ranks, {EOT: len(ranks)})
    if tokenizer.get_vocab_size(with_added_tokens=True) != GPT2_VOCAB:
        raise DataError(f"gpt2.tiktoken gave {tokenizer.get_vocab_size()} tokens, expected {GPT2_VOCAB}")
    return tokenizer
