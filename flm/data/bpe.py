"""Train a byte-level BPE on the training split with ``tokenizers``.

Byte-level means every string round-trips (``decode(encode(s)) == s``) and no text is unknown.
Two special tokens come first: ``<|endoftext|>`` (id 0) separates documents (it is both BOS and
EOS, as in GPT-2) and ``<|pad|>`` (id 1) fills the tail of the last block. The 256 byte symbols
follow, then the merges, up to ``vocab_size`` in all (fewer when the corpus runs out of pairs).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"
PAD = "<|pad|>"


def empty_byte_level_bpe() -> Tokenizer:
    """An untrained byte-level BPE with GPT-2's pre-tokenization regex and no normalizer."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_bpe(
    batches: Iterable[list[str]],
    vocab_size: int,
    min_frequency: int = 2,
    num_docs: int | None = None,
    progress: bool = True,
) -> Tokenizer:
    """Train on batches of documents; ``num_docs`` only sizes the progress bar."""
    tokenizer = empty_byte_level_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    tokenizer.train_from_iterator(batches, trainer=trainer, length=num_docs)
    return tokenizer
