"""Undo the word tokenization of LM1B and WikiText text, as MDLM/Duo do before tokenizing.

Both corpora were published pre-tokenized (``"the cat , said he"``, ``"1 @,@ 000"``); the
subword tokenizers of the paper expect ordinary text.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_LM1B_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(https?) : / / "), r"\1://"),
    (re.compile(r" '(\w+)"), r"'\1"),  # it 's -> it's
    (re.compile(r" n't\b"), "n't"),
    (re.compile(r" ([.?!,:;])(?= |$)"), r"\1"),
    (re.compile(r" / "), "/"),
    (re.compile(r"\" ([^\"]+) \""), r'"\1"'),
    (re.compile(r"' ([^']+) '"), r"'\1'"),
    (re.compile(r"\( ([^()]+) \)"), r"(\1)"),
    (re.compile(r"\[ ([^\[\]]+) \]"), r"[\1]"),
    (re.compile(r"([$£]) "), r"\1"),
]

_WIKITEXT_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r" @([-,.])@ "), r"\1"),  # 1 @,@ 000 -> 1,000 ; well @-@ known -> well-known
    (re.compile(r"s ' "), "s' "),
    (re.compile(r" '(s|re|ve|d|ll|m|t)\b"), r"'\1"),
    (re.compile(r" n't\b"), "n't"),
    (re.compile(r" ([.,:;?!])(?= |$)"), r"\1"),
    (re.compile(r"\( ([^()]*) \)"), r"(\1)"),
    (re.compile(r"\[ ([^\[\]]*) \]"), r"[\1]"),
    (re.compile(r"\{ ([^{}]*) \}"), r"{\1}"),
    (re.compile(r"\" ([^\"]*) \""), r'"\1"'),
    (re.compile(r" \n"), "\n"),
]


def _apply(rules: list[tuple[re.Pattern[str], str]], text: str) -> str:
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return text


def lm1b(text: str) -> str:
    """``"It 's a test , he said ."`` -> ``"It's a test, he said."``."""
    return _apply(_LM1B_RULES, text)


def wikitext(text: str) -> str:
    """``"the 1 @,@ 000 @-@ year war ( see below ) ."`` -> ``"the 1,000-year war (see below)."``."""
    return _apply(_WIKITEXT_RULES, text)


DETOKENIZERS: dict[str, Callable[[str], str]] = {"lm1b": lm1b, "wikitext": wikitext}
"""Known detokenizers, by the name used in ``data.source.detokenize``."""
