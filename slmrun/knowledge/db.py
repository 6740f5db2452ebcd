"""One SQLite database per knowledge base: documents, chunks, an FTS5 index and the vectors.

The only module that talks SQL. Written in WAL mode: a reader (a server answering) sees the
last committed index while an update writes the next one, and a crash or Ctrl-C in the middle
of a write leaves the previous index as it was (SQLite rolls the unfinished transaction
back). A new knowledge base is built in a temporary file renamed into place at the end, so an
interrupted ``kb create`` leaves nothing behind.

Vectors are float32 blobs, L2-normalised, one per chunk (``vec``), plus one for an FAQ
entry's question alone (``qvec``: a question is matched against questions). Search over them
is exact, in numpy (retrieve.py): benchmarks/KNOWLEDGE.md measures it at 50k chunks.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ..errors import KnowledgeBaseError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE roots(id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, label TEXT NOT NULL);
CREATE TABLE documents(
    id INTEGER PRIMARY KEY, source TEXT NOT NULL UNIQUE, path TEXT NOT NULL, kind TEXT NOT NULL,
    sha256 TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, n_chunks INTEGER NOT NULL);
CREATE TABLE chunks(
    id INTEGER PRIMARY KEY, doc_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ord INTEGER NOT NULL, faq INTEGER NOT NULL, heading TEXT, text TEXT NOT NULL, vec BLOB, qvec BLOB);
CREATE INDEX chunks_doc ON chunks(doc_id);
CREATE VIRTUAL TABLE chunks_fts USING fts5(heading, text, content='chunks', content_rowid='id',
    tokenize='porter unicode61 remove_diacritics 2');
CREATE TRIGGER chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, heading, text) VALUES (new.id, new.heading, new.text);
END;
CREATE TRIGGER chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, heading, text) VALUES ('delete', old.id, old.heading, old.text);
END;
"""

# Words that carry no topic in a question: left out of the FTS5 query, where they would only
# make every chunk a match (BM25's IDF gives them little weight, but they cost time at 50k chunks).
STOPWORDS = frozenset("""a an the and or but if then else of to in on at by for with about from into over under
is are was were be been being am do does did doing have has had having can could may might must shall should
will would i me my we our us you your yours he him his she her it its they them their this that these those
what which who whom whose when where why how there here not no yes so than too very just also any some all
each more most other such only own same as up out off again once please tell know want need get""".split())

_WORD = re.compile(r"\w+", re.UNICODE)


MAX_TERMS = 64  # a question has far fewer; a pasted page would make an OR of thousands


def query_terms(text: str) -> list[str]:
    """The words of a question to search for: lower-cased, deduplicated, stopwords out (unless
    nothing else is left), the first MAX_TERMS."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))
    content = [w for w in words if w not in STOPWORDS]
    return (content or words)[:MAX_TERMS]


def fts_query(terms: list[str]) -> str:
    """An FTS5 MATCH expression: any of the terms (each quoted, so no word is an operator)."""
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


@dataclass(frozen=True)
class ChunkRow:
    id: int
    source: str
    heading: str | None
    text: str
    faq: bool
    ord: int


def connect(path: Path, *, create: bool = False) -> sqlite3.Connection:
    if not create and not path.exists():
        raise KnowledgeBaseError(f"no index at {path}")
    try:
        conn = sqlite3.connect(str(path), timeout=10.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, never corrupt
        if create:
            conn.executescript(_SCHEMA)
            set_meta(conn, schema=str(SCHEMA_VERSION), generation="0")
        else:
            version = int(get_meta(conn).get("schema", "0"))
            if version > SCHEMA_VERSION:
                raise KnowledgeBaseError(f"{path.name} was made by a newer slmrun (index version {version})",
                                         hint="Upgrade slmrun, or rebuild the knowledge base with this one.")
    except sqlite3.DatabaseError as exc:
        raise KnowledgeBaseError(f"{path} is not a readable knowledge base ({exc})") from None
    return conn


def get_meta(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM meta"))


def set_meta(conn: sqlite3.Connection, **values) -> None:
    conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                     [(k, str(v)) for k, v in values.items()])


def generation(conn: sqlite3.Connection) -> int:
    """Bumped by every committed write: readers reload their vectors when it moves."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
    return int(row[0]) if row else 0


# --- writing (inside the builder's transaction) --------------------------------------

def set_roots(conn: sqlite3.Connection, roots) -> None:
    conn.execute("DELETE FROM roots")
    conn.executemany("INSERT INTO roots(path, label) VALUES (?, ?)", [(str(r.path), r.label) for r in roots])


def documents(conn: sqlite3.Connection) -> dict[str, tuple[int, str, int, int]]:
    """source -> (id, sha256, size, mtime_ns)."""
    return {row[0]: row[1:] for row in conn.execute("SELECT source, id, sha256, size, mtime_ns FROM documents")}


def add_document(conn, *, source: str, path: str, kind: str, sha256: str, size: int, mtime_ns: int,
                 n_chunks: int) -> int:
    cur = conn.execute("INSERT INTO documents(source, path, kind, sha256, size, mtime_ns, n_chunks) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", (source, path, kind, sha256, size, mtime_ns, n_chunks))
    return int(cur.lastrowid)


def set_chunk_count(conn, doc_id: int, n_chunks: int) -> None:
    conn.execute("UPDATE documents SET n_chunks = ? WHERE id = ?", (n_chunks, doc_id))


def touch_document(conn, doc_id: int, size: int, mtime_ns: int) -> None:
    conn.execute("UPDATE documents SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, doc_id))


def remove_document(conn, doc_id: int) -> None:
    conn.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))  # row by row: the FTS trigger sees each
    conn.execute("DELETE FROM documents WHERE id = ?", (doc_id,))


def add_chunks(conn, rows) -> None:
    """rows: (doc_id, ord, faq, heading, text, vec bytes | None, qvec bytes | None)."""
    conn.executemany("INSERT INTO chunks(doc_id, ord, faq, heading, text, vec, qvec) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     rows)


# --- reading ------------------------------------------------------------------------------

def lexical(conn: sqlite3.Connection, question: str, limit: int) -> list[tuple[int, float]]:
    """(chunk id, BM25 score, higher is better) for the best ``limit`` chunks; headings count
    double (an FAQ entry's heading is its question)."""
    terms = query_terms(question)
    if not terms:
        return []
    rows = conn.execute("SELECT rowid, -bm25(chunks_fts, 2.0, 1.0) AS score FROM chunks_fts "
                        "WHERE chunks_fts MATCH ? ORDER BY score DESC LIMIT ?", (fts_query(terms), limit))
    return [(int(i), float(s)) for i, s in rows]


def vectors(conn: sqlite3.Connection):
    """(ids, vecs, faq_ids, qvecs): every chunk's vector and every FAQ question's, as arrays."""
    import numpy as np

    ids, blobs, faq_ids, qblobs = [], [], [], []
    for cid, vec, qvec in conn.execute("SELECT id, vec, qvec FROM chunks WHERE vec IS NOT NULL ORDER BY id"):
        ids.append(cid)
        blobs.append(vec)
        if qvec is not None:
            faq_ids.append(cid)
            qblobs.append(qvec)

    def matrix(parts):
        if not parts:
            return np.zeros((0, 0), dtype=np.float32)
        flat = np.frombuffer(b"".join(parts), dtype=np.float32)
        return flat.reshape(len(parts), -1)

    return (np.asarray(ids, dtype=np.int64), matrix(blobs), np.asarray(faq_ids, dtype=np.int64), matrix(qblobs))


def chunk_rows(conn: sqlite3.Connection, ids) -> dict[int, ChunkRow]:
    ids = [int(i) for i in ids]
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    rows = conn.execute(f"SELECT c.id, d.source, c.heading, c.text, c.faq, c.ord FROM chunks c "
                        f"JOIN documents d ON d.id = c.doc_id WHERE c.id IN ({marks})", ids)
    return {r[0]: ChunkRow(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in rows}


def counts(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """(documents, chunks, FAQ entries)."""
    docs = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
    chunks, faqs = conn.execute("SELECT count(*), coalesce(sum(faq), 0) FROM chunks").fetchone()
    return int(docs), int(chunks), int(faqs)


def document_list(conn: sqlite3.Connection) -> list[tuple[str, str, int, int]]:
    """(source, kind, size, chunks) of every document, by source."""
    return [tuple(r) for r in conn.execute("SELECT source, kind, size, n_chunks FROM documents ORDER BY source")]


def roots(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    return [tuple(r) for r in conn.execute("SELECT path, label FROM roots ORDER BY id")]
