"""Indexing: files into a knowledge base's database, in one transaction, one file at a time.

``index(conn, roots, embedder)`` walks the roots (files.walk), and for every file that is new
or whose content hash changed, parses it (parsers), chunks it (chunking), embeds its chunks in
batches across files, and writes them; documents whose files are gone are dropped. Unchanged
files (same size and mtime, or the same hash) cost a stat (or a read for the hash). Memory
holds one file's chunks plus one embedding batch, whatever the size of the corpus.

The whole run is one transaction (BEGIN IMMEDIATE: one writer at a time; readers go on reading
the last committed index): an error or Ctrl-C rolls it back and the index is as before.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import KnowledgeBaseError
from . import db
from .chunking import MAX_CHARS, Chunk, chunk_sections
from .files import DEFAULT_MAX_FILE_BYTES, Found, Root, Skip, sha256_of, walk

EMBED_BATCH = 64  # chunks per embedding call: the engine decodes them together


@dataclass
class Report:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    chunks: int = 0  # chunks written by this run
    skipped: list[Skip] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    embed_seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)

    def to_dict(self) -> dict:
        return {"added": self.added, "updated": self.updated, "unchanged": self.unchanged, "removed": self.removed,
                "chunks": self.chunks, "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
                "warnings": list(self.warnings), "seconds": round(self.seconds, 3)}


Event = Callable[[str, object], None]  # ("skip", Skip) | ("warn", str) | ("file", Found)


def read_chunks(found: Found, max_chars: int = MAX_CHARS) -> tuple[list[Chunk], str | None]:
    """A file's chunks and an optional warning, or Unreadable (the file is skipped)."""
    from .faq import BadRows
    from .parsers import Unreadable, sections

    chunks: list[Chunk] = []
    warning = None
    try:
        for chunk in chunk_sections(sections(found.path, found.kind), max_chars):
            chunks.append(chunk)
    except BadRows as exc:
        warning = f"{found.source}: {exc}"
    except Unreadable:
        raise
    except (UnicodeError, RecursionError, MemoryError, ValueError, OSError) as exc:
        raise Unreadable(f"could not be parsed ({type(exc).__name__}: {str(exc)[:100]})") from None
    if not chunks:
        raise Unreadable("no text in it")
    return chunks, warning


class _Writer:
    """Chunks waiting for their embeddings, written a batch at a time."""

    def __init__(self, conn, embedder, report: Report):
        self.conn, self.embedder, self.report = conn, embedder, report
        self.pending: list[tuple[int, int, Chunk]] = []  # (doc_id, ord, chunk)

    def add(self, doc_id: int, chunks: list[Chunk]) -> None:
        self.pending += [(doc_id, i, c) for i, c in enumerate(chunks)]
        if len(self.pending) >= EMBED_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        vecs = qvecs = None
        if self.embedder is not None:
            t0 = time.perf_counter()
            vecs = self.embedder.embed([c.indexed_text() for _, _, c in batch])
            faq = [c.heading for _, _, c in batch if c.faq]
            q = iter(self.embedder.embed(faq) if faq else [])
            qvecs = [next(q) if c.faq else None for _, _, c in batch]
            self.report.embed_seconds += time.perf_counter() - t0
        rows = []
        for n, (doc_id, ord_, c) in enumerate(batch):
            vec = vecs[n].astype("float32").tobytes() if vecs is not None else None
            qvec = qvecs[n].astype("float32").tobytes() if qvecs is not None and qvecs[n] is not None else None
            rows.append((doc_id, ord_, int(c.faq), c.heading, c.text, vec, qvec))
        db.add_chunks(self.conn, rows)
        self.report.chunks += len(rows)


def index(conn: sqlite3.Connection, roots: list[Root], embedder=None, *, on_event: Event | None = None,
          max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, max_chars: int = MAX_CHARS) -> Report:
    """Bring the index up to date with the files under ``roots``; see the module docstring."""
    from .parsers import Unreadable

    emit = on_event or (lambda kind, value: None)
    report = Report()
    t0 = time.perf_counter()
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise KnowledgeBaseError(f"the knowledge base is being written by another process ({exc})",
                                 hint="Wait for the other `slmrun kb update` to finish, then run it again.") from None
    try:
        db.set_roots(conn, roots)
        existing = db.documents(conn)
        seen: set[str] = set()
        writer = _Writer(conn, embedder, report)
        for root in roots:
            if not Path(root.path).exists() and not Path(root.path).is_symlink():
                report.warnings.append(f"{root.path} no longer exists: its documents are dropped")
                emit("warn", report.warnings[-1])
        for item in walk(roots, max_file_bytes=max_file_bytes):
            if isinstance(item, Skip):
                report.skipped.append(item)
                emit("skip", item)
                continue
            seen.add(item.source)
            old = existing.get(item.source)
            if old is not None and old[2] == item.size and old[3] == item.mtime_ns:
                report.unchanged += 1
                continue
            digest = sha256_of(item.path)
            if old is not None and old[1] == digest:
                db.touch_document(conn, old[0], item.size, item.mtime_ns)
                report.unchanged += 1
                continue
            try:
                chunks, warning = read_chunks(item, max_chars)
            except Unreadable as exc:
                skip = Skip(str(item.path), str(exc))
                report.skipped.append(skip)
                emit("skip", skip)
                seen.discard(item.source)  # an old version of it is dropped below: it no longer reads
                continue
            if warning:
                report.warnings.append(warning)
                emit("warn", warning)
            if old is not None:
                db.remove_document(conn, old[0])
                report.updated += 1
            else:
                report.added += 1
            doc_id = db.add_document(conn, source=item.source, path=str(item.path), kind=item.kind, sha256=digest,
                                     size=item.size, mtime_ns=item.mtime_ns, n_chunks=len(chunks))
            writer.add(doc_id, chunks)
            emit("file", item)
        writer.flush()
        for source, (doc_id, *_rest) in existing.items():
            if source not in seen:
                db.remove_document(conn, doc_id)
                report.removed += 1
        if report.changed:
            db.set_meta(conn, generation=str(db.generation(conn) + 1))
        db.set_meta(conn, updated=str(int(time.time())))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    report.seconds = time.perf_counter() - t0
    return report
