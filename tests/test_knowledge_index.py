"""Knowledge bases on disk: parsing each kind of file, hostile inputs skipped with one line each,
updates by content hash, transactions that leave the previous index whole, readers during a
write, dense search with a tiny BERT, and the `kb` / `ask` commands."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

import slmrun
from slmrun.errors import (InvalidArgumentError, KnowledgeBaseExistsError, KnowledgeBaseNotFoundError,
                           NoDocumentsError)
from slmrun.knowledge.chunking import Section
from slmrun.knowledge.files import Found
from slmrun.knowledge.parsers import Unreadable, markdown_sections, sections

from conftest import slmrun_cmd
from tinymodels import write_tiny_bert

FAQ_CSV = "question,answer\nWhat are your opening hours?,We open from 9:00 to 18:00.\nDo you rent kayaks?,No.\n"
HANDBOOK = """# Handbook

## Brakes

Replace disc pads under 1.5 mm.
Bed them in with twenty stops.

```
# not a heading
```

## Shipping?

We ship in 3 days.
"""


def text_pdf(path: Path, lines: list[str]) -> Path:
    """A one-page PDF with a text layer, written by hand (the format's own minimum)."""
    content = "BT /F1 12 Tf 72 720 Td " + " ".join(f"({t}) Tj 0 -16 Td" for t in lines) + " ET"
    objs = ["<< /Type /Catalog /Pages 2 0 R >>", "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            "/Resources << /Font << /F1 5 0 R >> >> >>",
            f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = b"%PDF-1.4\n", []
    for i, obj in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{obj}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(out)
    return path


def encrypted_pdf(src: Path, dest: Path) -> Path:
    from pypdf import PdfReader, PdfWriter

    w = PdfWriter()
    for page in PdfReader(src).pages:
        w.add_page(page)
    w.encrypt(user_password="secret", owner_password="owner")
    with open(dest, "wb") as f:
        w.write(f)
    return dest


def found(path: Path, kind: str) -> Found:
    return Found(path=path, source=path.name, kind=kind, size=path.stat().st_size, mtime_ns=0)


@pytest.fixture
def docs(tmp_path) -> Path:
    d = tmp_path / "docs"
    d.mkdir()
    (d / "faq.csv").write_text(FAQ_CSV)
    (d / "handbook.md").write_text(HANDBOOK)
    (d / "visit.html").write_text("<html><head><script>var x='SCRIPT';</script></head><body><nav>Menu</nav>"
                                  "<h1>Visit</h1><p>Bus 7 stops <b>outside</b>.</p>"
                                  "<details><summary>Is there parking?</summary><p>Six spaces.</p></details>"
                                  "</body></html>")
    text_pdf(d / "leaflet.pdf", ["Spring sale: helmets half price.", "Until April."])
    return d


# --- parsers ----------------------------------------------------------------------------------

def test_markdown_follows_headings_code_fences_and_question_headings():
    got = list(markdown_sections(HANDBOOK))
    assert got == [Section("Replace disc pads under 1.5 mm. Bed them in with twenty stops.\n\n# not a heading",
                           "Handbook > Brakes"),
                   Section("We ship in 3 days.", "Shipping?", faq=True)]


def test_each_kind_reads_to_sections(docs):
    html = list(sections(docs / "visit.html", "html"))
    assert [s.heading for s in html] == ["Visit", "Is there parking?"] and html[1].faq
    assert "SCRIPT" not in repr(html) and "Menu" not in repr(html) and "Bus 7 stops outside." in html[0].text
    pdf = list(sections(docs / "leaflet.pdf", "pdf"))
    assert pdf[0].heading == "page 1" and "helmets half price" in pdf[0].text
    faq = list(sections(docs / "faq.csv", "csv"))
    assert [(s.heading, s.text, s.faq) for s in faq][0] == ("What are your opening hours?", "We open from 9:00 to 18:00.", True)


def test_faq_files_with_and_without_a_header_and_bad_lines(tmp_path):
    from slmrun.knowledge.build import read_chunks

    (tmp_path / "plain.csv").write_text("Do you ship?;Yes, in 3 days.\nDo you fit?;Yes.\n")
    assert [c.heading for c in read_chunks(found(tmp_path / "plain.csv", "csv"))[0]] == ["Do you ship?", "Do you fit?"]
    (tmp_path / "faq.jsonl").write_text('{"question": "Q1?", "answer": "A1"}\nnot json\n{"q": "Q2?", "a": "A2"}\n[1]\n')
    chunks, warning = read_chunks(found(tmp_path / "faq.jsonl", "jsonl"))
    assert [c.text for c in chunks] == ["A1", "A2"] and "2 lines not a question/answer pair (the first: line 2)" in warning
    (tmp_path / "none.jsonl").write_text('{"x": 1}\n')
    with pytest.raises(Unreadable, match="no question/answer pairs"):
        read_chunks(found(tmp_path / "none.jsonl", "jsonl"))


@pytest.mark.parametrize("name, data, reason", [
    ("image.pdf", b"\x89PNG\r\n\x1a\n" + bytes(200), "not a PDF"),
    ("broken.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 9 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF",
     "PDF"),
    ("notes.md", bytes(range(256)) * 8, "not Markdown: the file holds binary data"),
    ("page.html", b"%PDF-1.4\n\x00\x01\x02" * 50, "not HTML: the file holds a PDF"),
    ("blank.txt", b"\n\n   \n", "no text"),
])
def test_files_that_are_not_what_they_say_are_unreadable(tmp_path, name, data, reason):
    from slmrun.knowledge.build import read_chunks
    from slmrun.knowledge.files import kind_of

    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(Unreadable, match=reason):
        read_chunks(found(path, kind_of(name)))


def test_an_encrypted_pdf_is_refused(tmp_path):
    from slmrun.knowledge.build import read_chunks

    enc = encrypted_pdf(text_pdf(tmp_path / "a.pdf", ["Secret"]), tmp_path / "enc.pdf")
    with pytest.raises(Unreadable, match="encrypted PDF"):
        read_chunks(found(enc, "pdf"))


# --- building and updating ------------------------------------------------------------------------

def test_hostile_inputs_are_skipped_one_line_each_and_the_rest_indexed(docs, tmp_path):
    bad = docs / "bad"
    bad.mkdir()
    (bad / "empty").mkdir()
    (bad / "photo.pdf").write_bytes(b"\xff\xd8\xff\xe0" + bytes(100))
    (bad / "blob.md").write_bytes(os.urandom(4096).replace(b"\x00", b"\x01") + b"\x00")
    encrypted_pdf(text_pdf(tmp_path / "plain.pdf", ["x"]), bad / "locked.pdf")
    (bad / "cut.pdf").write_bytes(text_pdf(tmp_path / "whole.pdf", ["Cut short."]).read_bytes()[:150])  # malformed
    (bad / "page.html").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))  # an image named .html
    with open(bad / "huge.txt", "wb") as f:  # 2 GB, sparse: nothing written to disk
        f.truncate(2 << 30)
    (bad / "loop").symlink_to(bad)
    (bad / "dangling.md").symlink_to(tmp_path / "missing.md")
    (bad / "tool.exe").write_bytes(b"MZ")
    events = []
    kb = slmrun.create_knowledge_base("shop", [docs], embed=None, on_event=lambda kind, v: events.append((kind, v)))
    with kb:
        skipped = {Path(s.path).name: s.reason for s in kb.last_report.skipped}
        assert set(skipped) == {"empty", "photo.pdf", "blob.md", "locked.pdf", "cut.pdf", "page.html", "huge.txt",
                                "loop", "dangling.md", "tool.exe"}
        assert "too large (2.0 GiB" in skipped["huge.txt"] and "symlink loop" in skipped["loop"]
        assert "encrypted" in skipped["locked.pdf"] and "empty folder" == skipped["empty"]
        assert "PDF" in skipped["cut.pdf"] and "not HTML" in skipped["page.html"]
        assert all("\n" not in s.line() and s.path in s.line() for s in kb.last_report.skipped)
        assert [k for k, _ in events].count("skip") == 10
        assert {d["source"] for d in kb.documents()} == {"docs/faq.csv", "docs/handbook.md", "docs/visit.html",
                                                         "docs/leaflet.pdf"}


def test_nothing_to_index_is_refused_and_leaves_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoDocumentsError):
        slmrun.create_knowledge_base("none", [tmp_path / "empty"], embed=None)
    assert slmrun.list_knowledge_bases() == []
    assert [p.name for p in (slmrun.config.knowledge_dir()).iterdir()] == []


def test_names_and_existence(docs):
    with pytest.raises(InvalidArgumentError):
        slmrun.create_knowledge_base("../x", [docs], embed=None)
    with pytest.raises(InvalidArgumentError, match="no such file"):
        slmrun.create_knowledge_base("x", [docs / "nope"], embed=None)
    slmrun.create_knowledge_base("x", [docs], embed=None).close()
    with pytest.raises(KnowledgeBaseExistsError):
        slmrun.create_knowledge_base("x", [docs], embed=None)
    slmrun.remove_knowledge_base("x")
    with pytest.raises(KnowledgeBaseNotFoundError):
        slmrun.knowledge_base("x")


def test_indexing_streams_a_large_file_in_bounded_memory(tmp_path):
    """An 8 MiB text file (~15k chunks) is indexed holding a small part of it at a time: chunks go
    from the parser to the database one embedding batch at a time (Python's own allocations,
    counted by tracemalloc: SQLite's are its own)."""
    import random
    import tracemalloc

    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "a.txt").write_text("Warm-up: the parsers' modules are imported before measuring.")
    slmrun.create_knowledge_base("warm", [folder], embed=None).close()
    rng, words = random.Random(0), "wheel brake chain gear saddle frame tyre pedal spoke hub".split()
    size = 8 << 20
    with open(folder / "log.txt", "w") as f:
        written = 0
        while written < size:
            written += f.write(" ".join(rng.choices(words, k=100)) + ".\n\n")
    tracemalloc.start()
    try:
        with slmrun.create_knowledge_base("big", [folder], embed=None) as kb:
            _, peak = tracemalloc.get_traced_memory()
            chunks = kb.info()["chunks"]
    finally:
        tracemalloc.stop()
    assert chunks > 10_000
    assert peak < size / 2, f"peak {peak / 2**20:.1f} MiB while indexing an {size >> 20} MiB file"


def test_a_file_that_breaks_after_some_chunks_were_written_leaves_none_of_them(docs):
    """The CSV reads for 100 entries (one embedding batch written), then a field past the csv
    module's limit: skipped whole, its written chunks gone, its old version dropped."""
    from slmrun.knowledge.build import EMBED_BATCH

    rows = [f"Question number {i}?,Answer number {i}." for i in range(EMBED_BATCH + 36)]
    (docs / "faq.csv").write_text("question,answer\n" + "\n".join(rows) + "\n")
    with slmrun.create_knowledge_base("shop", [docs], embed=None) as kb:
        assert kb.search("question number 70", 1, mode="lexical")[0].source == "docs/faq.csv"
        (docs / "faq.csv").write_text("question,answer\n" + "\n".join(rows) + f'\nBig?,"{"x" * 200_000}"\n')
        report = kb.update()
        assert [Path(s.path).name for s in report.skipped] == ["faq.csv"]
        assert "not a readable CSV" in report.skipped[0].reason and report.removed == 1
        assert not [h for h in kb.search("question number 70", 5, mode="lexical") if h.source == "docs/faq.csv"]
        n = kb._conn.execute("SELECT count(*) FROM chunks c LEFT JOIN documents d ON d.id = c.doc_id "
                             "WHERE d.id IS NULL").fetchone()[0]
        assert n == 0 and kb.info()["chunks"] == sum(d["chunks"] for d in kb.documents())


def test_update_reindexes_only_what_changed_and_drops_what_is_gone(docs):
    with slmrun.create_knowledge_base("shop", [docs], embed=None) as kb:
        assert kb.last_report.added == 4
        r = kb.update()
        assert (r.added, r.updated, r.unchanged, r.removed, r.chunks) == (0, 0, 4, 0, 0)
        os.utime(docs / "faq.csv", ns=(1, 1))  # touched, same content: hashed, not re-indexed
        (docs / "handbook.md").write_text(HANDBOOK.replace("1.5 mm", "2 mm"))
        (docs / "leaflet.pdf").unlink()
        (docs / "new.txt").write_text("Winter storage costs 60 euros.")
        r = kb.update()
        assert (r.added, r.updated, r.unchanged, r.removed) == (1, 1, 2, 1)
        assert "2 mm" in kb.search("disc pads replace", 1, mode="lexical")[0].text
        assert kb.search("winter storage", 1, mode="lexical")[0].source == "docs/new.txt"
        assert not [h for h in kb.search("helmets half price", 5, mode="lexical") if h.source.endswith(".pdf")]


class Interrupt(BaseException):
    pass


class FailingEmbedder:
    """Embeds like a model (random unit vectors) and is interrupted at the n-th call."""

    def __init__(self, fail_at: int, dim: int = 8):
        import numpy as np
        self.calls, self.fail_at, self.n_embd, self.rng = 0, fail_at, dim, np.random.default_rng(0)
        self.path = "failing"

    def embed(self, texts, **kw):
        import numpy as np
        self.calls += 1
        if self.calls == self.fail_at:
            raise Interrupt("Ctrl-C")
        v = self.rng.standard_normal((len(texts), self.n_embd)).astype(np.float32)
        return type("E", (), {"vectors": v / np.linalg.norm(v, axis=1, keepdims=True)})()


def test_an_interrupted_create_leaves_nothing_and_an_interrupted_update_leaves_the_old_index(docs, tmp_path):
    with pytest.raises(Interrupt):
        slmrun.create_knowledge_base("shop", [docs], embed=FailingEmbedder(fail_at=2))
    assert list(slmrun.config.knowledge_dir().iterdir()) == []
    many = tmp_path / "many"
    many.mkdir()
    for i in range(100):
        (many / f"note{i:03d}.txt").write_text(f"Note {i} about wheel number {i}.")
    with slmrun.create_knowledge_base("shop", [docs, many], embed=None) as kb:
        before = kb.info()
        for i in range(100):
            (many / f"note{i:03d}.txt").write_text(f"Changed note {i}.")
        kb._meta["embed_model"] = "x"  # update() embeds with this object instead of loading a model
        kb._embedder = slmrun.knowledge.base.Embedder(FailingEmbedder(fail_at=2), "x")
        with pytest.raises(Interrupt):
            kb.update()
        after = kb.info()
        assert (after["documents"], after["chunks"]) == (before["documents"], before["chunks"])
        assert kb.search("wheel number 42", 1, mode="lexical")[0].text == "Note 42 about wheel number 42."


def test_a_reader_sees_the_last_committed_index_while_an_update_writes(docs):
    gate, entered = threading.Event(), threading.Event()

    class Slow(FailingEmbedder):
        def embed(self, texts, **kw):
            entered.set()
            gate.wait(30)
            return super().embed(texts)

    slmrun.create_knowledge_base("shop", [docs], embed=None).close()
    writer, reader = slmrun.knowledge_base("shop"), slmrun.knowledge_base("shop")
    writer._meta["embed_model"] = "x"
    writer._embedder = slmrun.knowledge.base.Embedder(Slow(fail_at=-1), "x")
    (docs / "new.txt").write_text("Tandem bicycles are not offered.")
    t = threading.Thread(target=writer.update)
    t.start()
    try:
        assert entered.wait(30)  # the write transaction is open
        assert not reader.search("tandem bicycles", 5, mode="lexical")
        assert reader.info()["documents"] == 4
    finally:
        gate.set()
        t.join(30)
    assert reader.search("tandem bicycles", 1, mode="lexical")[0].source == "docs/new.txt"
    writer.close()
    reader.close()


# --- dense search with a tiny BERT --------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert.gguf")


def test_dense_search_stores_vectors_and_reloads_the_same_model(docs, tiny_bert):
    with slmrun.create_knowledge_base("shop", [docs], embed=str(tiny_bert)) as kb:
        info = kb.info()
        assert info["embed_model"] == str(tiny_bert) and info["embed_dim"] == 32
        ids, vecs, faq_ids, qvecs = kb.retriever.vectors()
        assert vecs.shape == (info["chunks"], 32) and len(faq_ids) == info["faq_entries"] == qvecs.shape[0]
        hits = kb.search("what are your opening hours", 3, mode="dense")
        assert len(hits) == 3 and all(h.dense is not None for h in hits)
        faq = [h for h in kb.search("What are your opening hours?", 10) if h.faq]
        assert all(h.faq_similarity is not None for h in faq)
        # The question is the FAQ's own: its question vector is the question's, cosine 1.
        assert max(h.faq_similarity for h in faq) == pytest.approx(1.0, abs=1e-4)
        a = kb.ask("What are your opening hours?")
        assert (a.method, a.answer, a.sources) == ("faq", "We open from 9:00 to 18:00.",
                                                   [{"source": "docs/faq.csv", "heading": "What are your opening hours?"}])


# --- the commands ---------------------------------------------------------------------------------

def run(*args, stdin=None):
    return subprocess.run([*slmrun_cmd(), *args], capture_output=True, text=True, input=stdin, timeout=120,
                          env=os.environ.copy())


def test_kb_commands_and_ask_json(docs):
    (docs / "blob.md").write_bytes(b"\x00\x01" * 100)
    p = run("kb", "create", "shop", str(docs), "--embed", "none")
    assert p.returncode == 0, p.stderr
    assert f"skipped {docs / 'blob.md'}: not Markdown" in p.stderr and "created shop: 4 documents" in p.stdout
    assert run("kb", "create", "shop", str(docs), "--embed", "none").returncode == 24
    listed = json.loads(run("kb", "list", "--json").stdout)
    assert [(b["name"], b["documents"], b["embed_model"]) for b in listed] == [("shop", 4, None)]
    shown = run("kb", "show", "shop")
    assert "docs/handbook.md" in shown.stdout and "none (lexical search only)" in shown.stdout
    a = json.loads(run("ask", "--kb", "shop", "What are your opening hours?", "--json").stdout)
    assert a == {"answer": "We open from 9:00 to 18:00.", "abstained": False,
                 "sources": [{"source": "docs/faq.csv", "heading": "What are your opening hours?"}]}
    a = json.loads(run("ask", "--kb", "shop", "Who won the world cup in 1998?", "--json").stdout)
    assert a == {"answer": "I don't know from these documents.", "sources": [], "abstained": True}
    text = run("ask", "--kb", "shop", "what are your opening hours").stdout
    assert text == "We open from 9:00 to 18:00. [1]\n\n[1] docs/faq.csv: What are your opening hours?\n"
    chat = run("chat", "--kb", "shop", stdin="What are your opening hours?\nWhat is the capital of Peru?\n")
    assert chat.stdout.count("We open from 9:00") == 1 and "I don't know from these documents." in chat.stdout
    (docs / "faq.csv").write_text(FAQ_CSV + "Do you sell gift cards?,Yes from 20 euros.\n")
    assert "0 added, 1 updated, 3 unchanged, 1 skipped" in run("kb", "update", "shop").stdout
    assert run("kb", "rm", "shop").returncode == 0
    p = run("ask", "--kb", "shop", "hi")
    assert p.returncode == 23 and "no knowledge base named 'shop'" in p.stderr and "kb list" in p.stderr
