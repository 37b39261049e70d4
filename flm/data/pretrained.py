"""Pretrained fast tokenizers: a Hugging Face Hub id, or a local ``tokenizer.json`` / folder.

Online, ``name`` is a Hub repository (``bert-base-uncased`` for LM1B, ``gpt2`` for OWT, as in
the paper): its ``tokenizer.json`` (and, when present, ``tokenizer_config.json`` and
``special_tokens_map.json``) are fetched with ``huggingface_hub`` into ``$HF_HOME``. Only fast
tokenizers (those with a ``tokenizer.json``) are supported; ``transformers`` is not needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from flm.data.errors import DataError

CONFIG_FILES = ("special_tokens_map.json", "tokenizer_config.json")
BOS_GUESSES = ("<|startoftext|>", "<s>", "[CLS]", "<bos>", "<|bos|>", "<|endoftext|>")
EOS_GUESSES = ("<|endoftext|>", "</s>", "[SEP]", "<eos>", "<|eos|>")
PAD_GUESSES = ("[PAD]", "<pad>", "<|pad|>")


def _fetch(name: str, revision: str | None) -> tuple[Path, list[Path]]:
    """Paths of ``tokenizer.json`` and of whichever config files exist, local or from the Hub."""
    local = Path(name).expanduser()
    if local.is_file():
        return local, [p for p in (local.with_name(f) for f in CONFIG_FILES) if p.is_file()]
    if local.is_dir():
        main = local / "tokenizer.json"
        if not main.is_file():
            raise DataError(f"data.tokenizer.name: {local} has no tokenizer.json (only fast tokenizers work)")
        return main, [p for p in (local / f for f in CONFIG_FILES) if p.is_file()]
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        main = Path(hf_hub_download(name, "tokenizer.json", revision=revision))
    except RemoteEntryNotFoundError:
        raise DataError(f"data.tokenizer.name: {name!r} has no tokenizer.json (only fast tokenizers work)") from None
    except Exception as err:
        raise DataError(
            f"data.tokenizer.name: cannot fetch {name!r} from the Hugging Face Hub "
            f"({type(err).__name__}: {err}); "
            "it needs the network (unset HF_HUB_OFFLINE), or give a local folder holding tokenizer.json"
        ) from None
    configs = []
    for filename in CONFIG_FILES:
        try:
            configs.append(Path(hf_hub_download(name, filename, revision=revision)))
        except Exception:  # optional files; many repositories lack them
            continue
    return main, configs


def _named_specials(configs: list[Path]) -> dict[str, str]:
    """``bos_token``, ``cls_token``, ... as strings, from the tokenizer's config files."""
    found: dict[str, str] = {}
    for path in configs:
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for key in ("bos_token", "eos_token", "pad_token", "cls_token", "sep_token"):
            value = data.get(key) if isinstance(data, dict) else None
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str) and key not in found:
                found[key] = value
    return found


def _pick(
    tokenizer: Tokenizer, explicit: str | None, param: str, named: list[str | None], guesses: tuple[str, ...]
) -> int | None:
    """The id of the explicit token, else of a token named in the configs, else of a guess
    that is one of the tokenizer's special tokens (never an ordinary word that looks like one)."""
    if explicit is not None:
        index = tokenizer.token_to_id(explicit)
        if index is None:
            raise DataError(f"data.tokenizer.{param}: {explicit!r} is not in the tokenizer's vocabulary")
        return index
    for token in named:
        if token is not None and tokenizer.token_to_id(token) is not None:
            return tokenizer.token_to_id(token)
    specials = {added.content: index for index, added in tokenizer.get_added_tokens_decoder().items() if added.special}
    return next((specials[token] for token in guesses if token in specials), None)


def load_pretrained(
    name: str,
    revision: str | None = None,
    bos: str | None = None,
    eos: str | None = None,
    pad: str | None = None,
    add_pad: bool = False,
) -> tuple[Tokenizer, int | None, int, int]:
    """The tokenizer and its BOS (or None), EOS and PAD ids (PAD falls back to EOS).

    ``add_pad``: append ``pad`` (default ``[PAD]``) as a special token if the vocabulary lacks it.
    """
    main, configs = _fetch(name, revision)
    try:
        tokenizer = Tokenizer.from_file(str(main))
    except Exception as err:
        raise DataError(f"data.tokenizer.name: {main} is not a readable tokenizer.json ({err})") from None
    if add_pad:
        pad = pad or "[PAD]"
        if tokenizer.token_to_id(pad) is None:
            tokenizer.add_special_tokens([pad])
    named = _named_specials(configs)
    bos_id = _pick(tokenizer, bos, "bos", [named.get("bos_token"), named.get("cls_token")], BOS_GUESSES)
    eos_id = _pick(tokenizer, eos, "eos", [named.get("eos_token"), named.get("sep_token")], EOS_GUESSES)
    if eos_id is None:
        raise DataError(f"data.tokenizer: cannot tell which token of {name!r} ends a document; set data.tokenizer.eos")
    pad_id = _pick(tokenizer, pad, "pad", [named.get("pad_token")], PAD_GUESSES)
    return tokenizer, bos_id, eos_id, eos_id if pad_id is None else pad_id
