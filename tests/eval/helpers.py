"""A tiny project for the evaluate stage: packed real text (``L = 16``) and random tiny models of all four kinds."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from flm.config import BPETokenizer, FilesSource, PackingParams
from flm.model import DiT, DiTConfig
from flm.train.checkpoint import save_checkpoint
from flm.train.ema import EMA

TINY = {"d_model": 32, "n_layers": 2, "n_heads": 2, "cond_dim": 32, "time_freq_dim": 32}
SHAPES = {"flm": (1, False, 0), "fmlm": (2, False, 0), "mdlm": (1, False, 1), "ar": (0, True, 1)}
"""Model kind -> (time inputs, causal, extra ids past the tokenizer's V); MATH.md §6."""


def tiny_data(root: Path) -> Path:
    """``root/data/{corpus,tokenizer,tokens}``: 200 BBC articles, BPE (V = 384), blocks of L = 16."""
    from flm.data.corpus import build_corpus
    from flm.data.packaged import iter_packaged
    from flm.data.packing import pack
    from flm.data.tokenizer import build_tokenizer

    docs = list(iter_packaged("bbc_news"))[::11][:200]
    source = root / "in" / "docs.jsonl"
    source.parent.mkdir(parents=True)
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    data = root / "data"
    build_corpus(FilesSource(paths=(str(source),), val_fraction=0.1), data / "corpus", progress=False)
    build_tokenizer(BPETokenizer(vocab_size=384), data / "corpus", progress=False).save(data / "tokenizer")
    pack(data / "corpus", data / "tokenizer", data / "tokens", PackingParams(seq_len=16), progress=False)
    return data


class _Holder(nn.Module):
    def __init__(self, backbone: DiT) -> None:
        super().__init__()
        self.backbone = backbone


def tiny_model(folder: Path, kind: str, vocab: int, seq_len: int = 16, seed: int = 0) -> Path:
    """A random ~50k-parameter ``kind`` model (its ``model_kind`` recorded) saved as ``folder``."""
    n_times, causal, extra = SHAPES[kind]
    torch.manual_seed(seed)
    backbone = DiT(DiTConfig(vocab + extra, n_times=n_times, causal=causal, **TINY))
    with torch.no_grad():
        for param in backbone.parameters():
            param.normal_(0.0, 0.3)
    holder = _Holder(backbone)
    meta = {"params": {"data": {"packing": {"seq_len": seq_len}}}, "model_kind": kind}
    saved = save_checkpoint(folder.parent / f".{folder.name}-run", 1, holder, "backbone", EMA(backbone, 0.9),
                            torch.optim.AdamW(holder.parameters()), torch.Generator(), meta, keep_last=1)
    saved.rename(folder)
    return folder


LM1B_WORDS = "the company said profits rose sharply . shares fell in early trading , analysts were surprised"


def bert_like_tokenizer(folder: Path) -> Path:
    """A BERT-style WordPiece tokenizer (``[CLS]`` = BOS, ``[SEP]`` = EOS, lower-casing, the WordPiece decoder
    with its clean-up) over :data:`LM1B_WORDS`, built as the ``hf`` kind from a local ``tokenizer.json``:
    LM1B's tokenizer in miniature (no BERT vocabulary ships offline). Returns the data tokenizer's directory."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    from flm.config import HFTokenizer
    from flm.data.tokenizer import build_tokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys([*specials, *LM1B_WORDS.split()]))}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer.add_special_tokens(specials)
    source = folder / "bert-like"
    source.mkdir(parents=True)
    tokenizer.save(str(source / "tokenizer.json"))
    names = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]"}
    (source / "special_tokens_map.json").write_text(json.dumps(names), encoding="utf-8")
    build_tokenizer(HFTokenizer(name=str(source))).save(folder / "tokenizer")
    return folder / "tokenizer"
