"""HTML to sections, with the standard library's ``html.parser``.

Why not a third-party library: what the index needs from HTML is its text, split at
headings and block elements, without scripts, styles and navigation. ``html.parser`` is
forgiving (unclosed tags, stray ``</p>``, bad entities never raise), incremental (the file is
fed 64 KiB at a time, so memory stays bounded), and has no dependency; BeautifulSoup or lxml
would add a package to do the same walk. Headings h1-h6 start sections ("Top > Sub");
p, li, td, pre, blockquote, dd, div ... end paragraphs; script, style, template, noscript,
svg, head, nav and footer are dropped. ``<details><summary>Question?</summary>`` with its
answer inside is an FAQ entry.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator

from .chunking import Section
from .parsers import FAQ_ANSWER_MAX

_SKIP = {"script", "style", "template", "noscript", "svg", "head", "nav", "footer", "iframe", "object"}
_BLOCK = {"p", "div", "li", "dd", "dt", "td", "th", "tr", "pre", "blockquote", "section", "article", "main",
          "table", "ul", "ol", "dl", "br", "hr", "figcaption", "caption", "address", "form", "aside", "header"}
_HEADING = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_VOID = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "track", "wbr"}


class _Reader(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[Section] = []  # drained by the caller after each feed
        self.stack: list[tuple[int, str]] = []
        self.paras: list[str] = []
        self.line: list[str] = []
        self.skip_depth = 0
        self.heading_level = 0
        self.heading_text: list[str] = []
        self.in_pre = 0
        self.summary: list[str] | None = None  # inside <summary>
        self.details: list[tuple[str, int]] = []  # (question, len(paras) when it started)

    # --- text ---------------------------------------------------------------------
    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        if self.heading_level:
            self.heading_text.append(data)
        elif self.summary is not None:
            self.summary.append(data)
        else:
            self.line.append(data)

    def end_paragraph(self) -> None:
        raw = "".join(self.line)
        text = raw.strip("\n") if self.in_pre else " ".join(raw.split())
        self.line = []
        if text:
            self.paras.append(text)

    def flush(self) -> None:
        self.end_paragraph()
        if self.paras:
            path = " > ".join(t for _, t in self.stack if t) or None
            self.out.append(Section("\n\n".join(self.paras), path))
        self.paras = []

    # --- tags ---------------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in _SKIP and tag not in _VOID:
            self.skip_depth += 1
            return
        if self.skip_depth:
            return
        if tag in _HEADING:
            self.flush()
            self.heading_level, self.heading_text = _HEADING[tag], []
        elif tag == "summary":
            self.end_paragraph()
            self.summary = []
        elif tag == "details":
            self.flush()
            self.details.append(("", 0))
        elif tag in _BLOCK:
            self.end_paragraph()
            if tag == "pre":
                self.in_pre += 1

    def handle_startendtag(self, tag: str, attrs) -> None:
        if tag in _BLOCK and not self.skip_depth:
            self.end_paragraph()

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
            return
        if self.skip_depth:
            return
        if tag in _HEADING and self.heading_level:
            title = " ".join("".join(self.heading_text).split())
            while self.stack and self.stack[-1][0] >= self.heading_level:
                self.stack.pop()
            self.stack.append((self.heading_level, title))
            self.heading_level = 0
        elif tag == "summary" and self.summary is not None:
            question = " ".join("".join(self.summary).split())
            self.summary = None
            if self.details:
                self.details[-1] = (question, len(self.paras))
        elif tag == "details" and self.details:
            self.end_paragraph()
            question, start = self.details.pop()
            answer = "\n\n".join(self.paras[start:])
            if question and answer and len(answer) <= FAQ_ANSWER_MAX:
                self.out.append(Section(answer, question, faq=True))
                del self.paras[start:]
            elif question:
                self.paras.insert(start, question)
        elif tag in _BLOCK:
            self.end_paragraph()
            if tag == "pre":
                self.in_pre = max(0, self.in_pre - 1)


def html_sections(path: Path, encoding: str) -> Iterator[Section]:
    reader = _Reader()
    with open(path, encoding=encoding, errors="replace") as f:
        for block in iter(lambda: f.read(65536), ""):
            reader.feed(block)
            yield from reader.out
            reader.out = []
    reader.close()
    reader.flush()
    yield from reader.out
