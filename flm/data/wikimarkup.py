"""MediaWiki markup -> plain text, with ``mwparserfromhell`` (used for the packaged Wikipedia)."""

from __future__ import annotations

import re

_DROP_LINK_NAMESPACES = ("file:", "image:", "category:", "media:")
_INTERLANGUAGE = re.compile(r"^:?[a-z][a-z-]{1,11}:")
_DROP_TAGS = {"ref", "references", "gallery", "math", "timeline", "score", "imagemap", "syntaxhighlight"}
_END_SECTIONS = {"references", "notes", "see also", "further reading", "external links", "bibliography"}
_REFS = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>|<!--.*?-->", re.DOTALL | re.IGNORECASE)
_FILE_LINE = re.compile(r"^\[\[(file|image):", re.IGNORECASE)
_BLANK_RUNS = re.compile(r"\n{3,}")
_SPACE_RUNS = re.compile(r"[ \t]{2,}")
_LONE_MARKUP = {"*", "#", ":", ";"}
_TABLE_LINE = ("{|", "|", "!")  # rows of tables the parser did not recognise


def _dropped(node) -> bool:
    from mwparserfromhell.nodes import Tag, Wikilink

    if isinstance(node, Wikilink):
        title = str(node.title).strip().lower()
        return title.lstrip(":").startswith(_DROP_LINK_NAMESPACES) or bool(_INTERLANGUAGE.match(title))
    return isinstance(node, Tag) and str(node.tag).strip().lower() in _DROP_TAGS


def _prune(code) -> None:
    """Drop unwanted nodes from ``code`` and from every tag's or link's contents (in place)."""
    code.nodes = [node for node in code.nodes if not _dropped(node)]
    for node in code.nodes:
        for child in (getattr(node, "contents", None), getattr(node, "text", None)):
            if child is not None and hasattr(child, "nodes"):
                _prune(child)


def wiki_to_text(markup: str) -> str:
    """Plain prose from an article's markup.

    Drops templates, references, files, categories, interlanguage links and the trailing
    reference sections (References, See also, External links, ...); keeps link texts, headings as
    plain lines and list items. Paragraphs are separated by one blank line.
    """
    import mwparserfromhell  # lazy: only the packaged Wikipedia needs it
    from mwparserfromhell.nodes import Heading

    code = mwparserfromhell.parse(_REFS.sub("", markup))  # refs first: the parser misses some
    for index, node in enumerate(code.nodes):
        if isinstance(node, Heading) and node.title.strip_code().strip().lower() in _END_SECTIONS:
            code.nodes = code.nodes[:index]
            break
    _prune(code)  # one linear pass over the tree, no searches
    text = code.strip_code(normalize=True, collapse=True, keep_template_params=False)
    lines = [_SPACE_RUNS.sub(" ", line).strip() for line in text.splitlines()]
    text = "\n".join(
        line
        for line in lines
        if line not in _LONE_MARKUP and not line.startswith(_TABLE_LINE) and not _FILE_LINE.match(line)
    )
    return _BLANK_RUNS.sub("\n\n", text).strip()
