"""Which files a knowledge base indexes: walking the paths given, safely.

``walk(roots)`` yields a ``Found`` for every file worth parsing and a ``Skip`` (path and one
line of reason) for everything else: a folder with no files, a broken link, a symlink that
leads back into a folder already being walked (a loop), a file reached twice through links,
a file over the size limit, an unreadable one, a type we do not parse. Hidden files and
folders (``.git``, ``.DS_Store``) are passed over silently: nobody means to index them.

Each file's path in the index (``source``) is relative to what was indexed: a folder given
as ``docs`` puts ``docs/manual/brakes.md``; a file given as ``~/faq.csv`` puts ``faq.csv``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import InvalidArgumentError

# Extension -> the parser's kind (parsers.PARSERS). What is not here is skipped, said once per file.
KINDS = {".md": "markdown", ".markdown": "markdown", ".mdown": "markdown", ".txt": "text", ".text": "text",
         ".rst": "text", ".html": "html", ".htm": "html", ".xhtml": "html", ".pdf": "pdf", ".csv": "csv",
         ".jsonl": "jsonl", ".ndjson": "jsonl"}

DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024  # a 2 GB log is not a document; parsing holds one file at a time


@dataclass(frozen=True)
class Root:
    path: Path  # absolute, as given (links not resolved: the user's name for it)
    label: str  # the first part of every source under it


@dataclass(frozen=True)
class Found:
    path: Path  # where to read it
    source: str  # its name in the index, relative to what was indexed (always with "/")
    kind: str  # markdown, text, html, pdf, csv, jsonl
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Skip:
    path: str  # as the user would name it
    reason: str

    def line(self) -> str:
        return f"skipped {self.path}: {self.reason}"


def roots_for(paths: Iterable[str | os.PathLike]) -> list[Root]:
    """The paths a knowledge base indexes, each with the label its sources start with. Two
    paths with the same name would give files the same sources: refused."""
    roots: list[Root] = []
    seen: dict[str, Path] = {}
    for p in paths:
        path = Path(os.path.abspath(os.path.expanduser(str(p))))
        if not os.path.lexists(path):
            raise InvalidArgumentError(f"no such file or folder: {p}", hint="Check the path.")
        label = path.name or path.anchor.strip("/\\") or "root"
        if label in seen:
            if seen[label] == path:
                continue
            raise InvalidArgumentError(
                f"{seen[label]} and {path} would both be indexed as {label!r}",
                hint="Index their common parent folder instead, or make two knowledge bases.")
        seen[label] = path
        roots.append(Root(path, label))
    if not roots:
        raise InvalidArgumentError("no paths to index", hint="Name at least one file or folder.")
    return roots


def kind_of(name: str) -> str | None:
    return KINDS.get(os.path.splitext(name)[1].lower())


def walk(roots: Iterable[Root], *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Iterator[Found | Skip]:
    """Every file under ``roots`` as a Found, or a Skip saying why not; sorted, deterministic."""
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: dict[tuple[int, int], str] = {}
    for root in roots:
        yield from _walk_one(root.path, root.label, seen_dirs, seen_files, max_file_bytes)


def _walk_one(path: Path, source: str, seen_dirs, seen_files, max_bytes: int) -> Iterator[Found | Skip]:
    try:
        st = os.stat(path)  # follows links
    except FileNotFoundError:
        yield Skip(str(path), "broken link (its target does not exist)")
        return
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: a link that points at itself, directly or not
            yield Skip(str(path), "symlink loop")
        else:
            yield Skip(str(path), f"cannot read it ({exc.strerror})")
        return
    if stat.S_ISDIR(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            yield Skip(str(path), "symlink loop (a link back to a folder already indexed)")
            return
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as exc:
            yield Skip(str(path), f"cannot list it ({exc.strerror})")
            return
        visible = [e for e in entries if not e.name.startswith(".")]
        if not visible:
            yield Skip(str(path), "empty folder")
            return
        for entry in visible:
            yield from _walk_one(Path(entry.path), f"{source}/{entry.name}", seen_dirs, seen_files, max_bytes)
        return
    if not stat.S_ISREG(st.st_mode):
        yield Skip(str(path), "not a regular file (a device, pipe or socket)")
        return
    kind = kind_of(path.name)
    if kind is None:
        ext = os.path.splitext(path.name)[1]
        yield Skip(str(path), f"unsupported type{' (' + ext + ')' if ext else ' (no extension)'}: "
                              "slmrun indexes .md, .txt, .html, .pdf, .csv and .jsonl")
        return
    key = (st.st_dev, st.st_ino)
    if key in seen_files:
        yield Skip(str(path), f"the same file as {seen_files[key]} (reached through a link)")
        return
    seen_files[key] = source
    if st.st_size == 0:
        yield Skip(str(path), "empty file")
        return
    if st.st_size > max_bytes:
        from ..units import format_bytes
        yield Skip(str(path), f"too large ({format_bytes(st.st_size)}; the limit is {format_bytes(max_bytes)}, "
                              "--max-file-size raises it)")
        return
    if not os.access(path, os.R_OK):
        yield Skip(str(path), "cannot read it (permission denied)")
        return
    yield Found(path=path, source=source, kind=kind, size=st.st_size, mtime_ns=st.st_mtime_ns)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
