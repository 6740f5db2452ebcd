"""PDF text layers to sections, with pypdf.

Why pypdf: pure Python (installs on a Raspberry Pi or anywhere pip runs, no compiler, no
system library), BSD-licensed, actively maintained, reads pages lazily from the file, and
says what is wrong with a damaged or encrypted file through its own exceptions. pdfminer.six
extracts layout a little better but is several times slower; PyMuPDF is faster but AGPL and a
binary wheel. A scanned PDF (no text layer) has nothing to extract: skipped, saying so, since
OCR is out of scope. Each page is a section headed "page N"; its paragraphs are the blank-
line separated runs pypdf gives.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

from .chunking import Section
from .parsers import Unreadable

MAX_PAGES = 5000


def pdf_sections(path: Path) -> Iterator[Section]:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError, PyPdfError

    with open(path, "rb") as f:
        if b"%PDF-" not in f.read(1024):
            raise Unreadable("not a PDF: it does not start like one")
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings about damaged files would print
    try:
        reader = PdfReader(str(path), strict=False)
        if reader.is_encrypted:
            try:  # many PDFs are "encrypted" with an empty user password: readable by anyone
                if not reader.decrypt(""):
                    raise Unreadable("encrypted PDF (a password is needed to read it)")
            except (FileNotDecryptedError, NotImplementedError, PyPdfError):
                raise Unreadable("encrypted PDF (a password is needed to read it)") from None
        n_pages = len(reader.pages)
    except Unreadable:
        raise
    except (PdfReadError, PyPdfError, ValueError, KeyError, TypeError, OSError, RecursionError) as exc:
        raise Unreadable(f"damaged PDF ({_short(exc)})") from None
    if n_pages > MAX_PAGES:
        raise Unreadable(f"a PDF of {n_pages} pages (the limit is {MAX_PAGES})")
    found_text = False
    for number in range(n_pages):
        try:
            text = reader.pages[number].extract_text() or ""
        except Exception as exc:  # pypdf raises many kinds on a broken page; skip the page, keep the rest
            if number == 0 and n_pages == 1:
                raise Unreadable(f"damaged PDF ({_short(exc)})") from None
            continue
        if text.strip():
            found_text = True
            yield Section(text, f"page {number + 1}")
    if not found_text:
        raise Unreadable("no text layer (a scanned PDF? slmrun does not OCR)")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:120]
