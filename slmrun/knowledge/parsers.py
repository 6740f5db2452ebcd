"""Documents to sections: Markdown, plain text, HTML, PDF and FAQ files (CSV, JSONL).

``sections(path, kind)`` yields ``chunking.Section``s as it reads, one file at a time, and
raises ``Unreadable`` (one line: why) for a file that is not what its extension says (binary
bytes in a .md, a .pdf that is a PNG), a damaged or encrypted PDF, a PDF with no text layer.

Markdown goes through markdown-it-py (CommonMark; also what rich renders with), so a ``#``
line inside a code fence is code and setext headings are headings. A heading that asks a
question (ends with "?") over a short answer is an FAQ entry: "Markdown whose headings are
questions". HTML is read with the standard library's parser (html_text.py), PDF with pypdf
(pdf_text.py), CSV and JSONL question/answer pairs by faq.py.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Iterator

from .chunking import Section

SNIFF_BYTES = 8192
FAQ_ANSWER_MAX = 1500  # a "question" heading over more than this is a document section, not an FAQ entry


class Unreadable(Exception):
    """A file to skip; the message is the reason, one line."""


def sections(path: Path, kind: str) -> Iterator[Section]:
    if kind == "pdf":
        from .pdf_text import pdf_sections
        yield from pdf_sections(path)
        return
    encoding = text_encoding(path, kind)
    if kind == "markdown":
        yield from markdown_sections(path.read_text(encoding=encoding, errors="replace"))
    elif kind == "text":
        yield from text_sections(path, encoding)
    elif kind == "html":
        from .html_text import html_sections
        yield from html_sections(path, encoding)
    elif kind in ("csv", "jsonl"):
        from .faq import faq_sections
        yield from faq_sections(path, kind, encoding)
    else:  # files.KINDS and this list are kept together
        raise Unreadable(f"no parser for {kind}")


_NAMES = {"markdown": "Markdown", "text": "text", "html": "HTML", "csv": "CSV", "jsonl": "JSONL"}


def text_encoding(path: Path, kind: str) -> str:
    """UTF-8 (with or without a BOM), or cp1252 for older text; binary content is refused, so a
    PNG renamed .md is skipped rather than indexed as noise."""
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if looks_binary(head):
        what = "a PDF" if head.startswith(b"%PDF-") else "binary data"
        raise Unreadable(f"not {_NAMES.get(kind, kind)}: the file holds {what}")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        return "utf-8"
    except UnicodeDecodeError:
        return "cp1252"


def looks_binary(head: bytes) -> bool:
    """NUL bytes, or more than 10% control characters other than whitespace: not text."""
    if not head:
        return False
    if b"\x00" in head:
        return True
    control = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13, 27))
    return control > len(head) * 0.10


def text_sections(path: Path, encoding: str) -> Iterator[Section]:
    """Plain text, streamed: paragraphs gathered into sections of ~8 KB (chunking splits them
    further), so a long text file never sits in memory whole."""
    buf: list[str] = []
    size = 0
    with open(path, encoding=encoding, errors="replace", newline=None) as f:
        for line in f:
            buf.append(line)
            size += len(line)
            if size > 8192 and not line.strip():  # cut only at a paragraph break
                yield Section("".join(buf))
                buf, size = [], 0
    if "".join(buf).strip():
        yield Section("".join(buf))


def markdown_sections(text: str) -> Iterator[Section]:
    """One section per heading (its path of headings, "Top > Sub"), its blocks as paragraphs of
    plain text (emphasis marks and link targets off; list items and table rows one a line)."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    stack: list[tuple[int, str]] = []  # (level, title) of the headings above
    body: list[str] = []
    title: str | None = None
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.type == "heading_open" and tok.level == 0:
            if "".join(body).strip():
                yield _section(title, stack, "\n\n".join(body))
            body = []
            level = int(tok.tag[1:])
            title = _plain(tokens[i + 1]).strip() if i + 1 < len(tokens) else ""
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, title))
            i += 3  # heading_open, inline, heading_close
            continue
        end = _block_end(tokens, i)
        if tok.type != "hr":
            block = _block_text(tokens[i:end])
            if block:
                body.append(block)
        i = end
    if "".join(body).strip():
        yield _section(title, stack, "\n\n".join(body))


def _section(title: str | None, stack, text: str) -> Section:
    path = " > ".join(t for _, t in stack if t) or None
    if title and title.endswith("?") and len(text) <= FAQ_ANSWER_MAX:
        return Section(text, title, faq=True)
    return Section(text, path)


def _plain(inline) -> str:
    """An inline token's text without its markup: emphasis, code ticks and link targets off."""
    out = []
    for child in inline.children or []:
        if child.type in ("text", "code_inline", "html_inline"):
            out.append(child.content)
        elif child.type == "softbreak":  # a line break in the source, not in the text
            out.append(" ")
        elif child.type == "hardbreak":
            out.append("\n")
        elif child.type == "image":
            out.append(child.content)  # its alt text
    return "".join(out)


def _block_text(block) -> str:
    """A top-level block's tokens as text: paragraphs, list items ("- "), table rows ("a | b")."""
    lines: list[str] = []
    parts: list[str] = []
    prefix = ""
    for t in block:
        if t.type in ("fence", "code_block", "html_block"):
            lines.append(t.content.rstrip("\n"))
        elif t.type == "inline":
            parts.append(_plain(t))
        elif t.type == "list_item_open":
            prefix = f"{t.info}{t.markup} " if t.info else "- "
        elif t.type in ("paragraph_close", "tr_close", "heading_close") and parts:
            lines.append(prefix + " | ".join(p.strip() for p in parts))
            parts, prefix = [], ""
    if parts:
        lines.append(prefix + " | ".join(p.strip() for p in parts))
    return "\n".join(line for line in lines if line.strip()).strip()


def _block_end(tokens, i: int) -> int:
    """The index after the top-level block that starts at ``tokens[i]``."""
    if tokens[i].nesting != 1:
        return i + 1
    depth = 0
    for j in range(i, len(tokens)):
        depth += tokens[j].nesting
        if depth == 0:
            return j + 1
    return len(tokens)
