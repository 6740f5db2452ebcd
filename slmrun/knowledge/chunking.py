"""Sections (what the parsers read) into chunks (what is indexed and retrieved): pure functions.

A chunk follows the document's structure: it never spans two headings, it is one or more
whole paragraphs under one heading while they fit ``max_chars``, and only a paragraph longer
than that is cut, at sentence ends (and, for a sentence longer still, between words). An FAQ
entry is one chunk whatever its length: its answer is given verbatim, so it is never cut.

~900 characters is ~200-250 word pieces: within the embedding model's 256-token window
(all-MiniLM-L6-v2 truncates there), and five chunks fit a small model's prompt with room to answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator

MAX_CHARS = 900


@dataclass(frozen=True)
class Section:
    """A run of text under one heading, or one FAQ entry; what a parser yields."""

    text: str  # the body: paragraphs separated by blank lines (an FAQ entry's answer)
    heading: str | None = None  # "Brakes > Adjusting the pads"; an FAQ entry's question
    faq: bool = False


@dataclass(frozen=True)
class Chunk:
    text: str  # the passage (an FAQ entry: its answer)
    heading: str | None = None
    faq: bool = False

    def indexed_text(self) -> str:
        """What the embedding model reads: the heading gives a passage its topic."""
        return f"{self.heading}\n{self.text}" if self.heading else self.text


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_SPACE = re.compile(r"[ \t\r\f\v]+")


def normalize_space(text: str) -> str:
    """Runs of spaces within lines to one, lines stripped, 3+ newlines to a paragraph break."""
    lines = [_SPACE.sub(" ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, each with its inner line breaks kept."""
    return [p.strip() for p in re.split(r"\n\s*\n", normalize_space(text)) if p.strip()]


def split_long(text: str, max_chars: int = MAX_CHARS) -> list[str]:
    """A paragraph longer than ``max_chars`` cut at sentence ends, sentences packed greedily; a
    sentence longer than ``max_chars`` cut between words (a word longer still, hard)."""
    if len(text) <= max_chars:
        return [text]
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        if len(sentence) <= max_chars:
            pieces.append(sentence)
            continue
        words, line = sentence.split(" "), ""
        for word in words:
            while len(word) > max_chars:  # no spaces to cut at (a URL, base64)
                if line:
                    pieces.append(line)
                    line = ""
                pieces.append(word[:max_chars])
                word = word[max_chars:]
            if line and len(line) + 1 + len(word) > max_chars:
                pieces.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        if line:
            pieces.append(line)
    return pack(pieces, max_chars, sep=" ")


def pack(pieces: list[str], max_chars: int, sep: str = "\n\n") -> list[str]:
    """Consecutive pieces joined while the result fits ``max_chars`` (each piece already does)."""
    out: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + len(sep) + len(piece) > max_chars:
            out.append(current)
            current = piece
        else:
            current = f"{current}{sep}{piece}" if current else piece
    if current:
        out.append(current)
    return out


def chunk_section(section: Section, max_chars: int = MAX_CHARS) -> list[Chunk]:
    """One section's chunks: an FAQ entry whole; otherwise its paragraphs packed up to ``max_chars``."""
    if section.faq:
        answer = normalize_space(section.text)
        question = normalize_space(section.heading or "")
        return [Chunk(answer, question, faq=True)] if answer and question else []
    pieces = [p for para in paragraphs(section.text) for p in split_long(para, max_chars)]
    return [Chunk(text, section.heading) for text in pack(pieces, max_chars)]


def chunk_sections(sections: Iterable[Section], max_chars: int = MAX_CHARS) -> Iterator[Chunk]:
    for section in sections:
        yield from chunk_section(section, max_chars)
