"""Indexing: files into a knowledge base's database, in one transaction, one file at a time.

``index(conn, roots, embedder)`` walks the roots (files.walk), and for every file that is new
or whose content hash changed, parses it (parsers), chunks it (chunking), embeds its chunks in
batches across files, and writes them; documents whose files are gone are dropped. Unchanged
files (same size and mtime, or the same hash) cost a stat (or a read for the hash). Memory
is bounded whatever the size of the corpus or of a file: chunks stream from the parser to the
writer, which holds one embedding batch (EMBED_BATCH chunks); parsers read text, HTML, CSV,
JSONL and PDF pages incrementally (a Markdown file is parsed whole: its structure needs it,
and files are capped by ``max_file_bytes``, 64 MiB by default).

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
    """A file's chunks and an optional warning, or Unreadable (the file is skipped). All in a
    list: for tests and small files; the indexer streams them (stream_chunks)."""
    chunks: list[Chunk] = []
    warning = stream_chunks(found, chunks.append, max_chars)
    return chunks, warning


def stream_chunks(found: Found, emit: Callable[[Chunk], None], max_chars: int = MAX_CHARS) -> str | None:
    """Each of a file's chunks to ``emit`` as it is read; an optional warning, or Unreadable
    (the file is skipped: what was emitted must be undone by the caller)."""
    from .faq import BadRows
    from .parsers import Unreadable, sections

    warning = None
    n = 0
    try:
        for chunk in chunk_sections(sections(found.path, found.kind), max_chars):
            emit(chunk)
            n += 1
    except BadRows as exc:
        warning = f"{found.source}: {exc}"
    except Unreadable:
        raise
    except (UnicodeError, RecursionError, MemoryError, ValueError, OSError) as exc:
        raise Unreadable(f"could not be parsed ({type(exc).__name__}: {str(exc)[:100]})") from None
    if not n:
        raise Unreadable("no text in it")
    return warning


class _Writer:
    """Chunks waiting for their embeddings, written a batch at a time: at most EMBED_BATCH
    chunks are held, whatever the size of a file or of the corpus."""

    def __init__(self, conn, embedder, report: Report):
        self.conn, self.embedder, self.report = conn, embedder, report
        self.pending: list[tuple[int, int, Chunk]] = []  # (doc_id, ord, chunk)
        self.written: dict[int, int] = {}  # doc_id -> chunks added so far (written or pending)

    def add(self, doc_id: int, chunk: Chunk) -> None:
        ord_ = self.written.get(doc_id, 0)
        self.written[doc_id] = ord_ + 1
        self.pending.append((doc_id, ord_, chunk))
        if len(self.pending) >= EMBED_BATCH:
            self.flush()

    def forget(self, doc_id: int) -> None:
        """A document that turned out unreadable: its pending chunks are dropped (its written
        ones go with its row)."""
        self.pending = [p for p in self.pending if p[0] != doc_id]
        self.written.pop(doc_id, None)

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
            if old is not None:  # its old version goes whatever the new one holds (unreadable: nothing)
                db.remove_document(conn, old[0])
            doc_id = db.add_document(conn, source=item.source, path=str(item.path), kind=item.kind, sha256=digest,
                                     size=item.size, mtime_ns=item.mtime_ns, n_chunks=0)
            try:  # streamed: the chunks go to the writer as the parser reads them
                warning = stream_chunks(item, lambda chunk: writer.add(doc_id, chunk), max_chars)
            except Unreadable as exc:
                writer.forget(doc_id)
                db.remove_document(conn, doc_id)
                skip = Skip(str(item.path), str(exc))
                report.skipped.append(skip)
                emit("skip", skip)
                seen.discard(item.source)  # counted as removed below when an old version was indexed
                continue
            db.set_chunk_count(conn, doc_id, writer.written.pop(doc_id))
            if warning:
                report.warnings.append(warning)
                emit("warn", warning)
            if old is not None:
                report.updated += 1
            else:
                report.added += 1
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
