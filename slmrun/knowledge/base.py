"""``KnowledgeBase``: one knowledge base, its index on disk, and the models it answers with.

    kb = slmrun.create_knowledge_base("shop", ["docs/", "faq.csv"])   # or knowledge_base("shop")
    a = kb.ask("When are you open on Sundays?")
    a.answer, a.sources, a.abstained

Knowledge bases live in ``$SLMRUN_HOME/knowledge/NAME.sqlite``. The embedding model a base was
built with is recorded in it and loaded again for questions (vectors from another model would
be meaningless); the answering model is chosen per question (default: $SLMRUN_MODEL).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from .. import config
from ..errors import (InvalidArgumentError, KnowledgeBaseError, KnowledgeBaseExistsError,
                      KnowledgeBaseNotFoundError, NoDocumentsError)
from . import answer as A
from . import db
from .build import Report, index
from .decide import Thresholds, abstain_reason, faq_match
from .files import DEFAULT_MAX_FILE_BYTES, Root, roots_for
from .retrieve import MODES, Hit, Retriever, rerank as rerank_hits, signals

DEFAULT_EMBED = "minilm-l6"
METHODS = ("extract", "generate")
SUFFIX = ".sqlite"


class Embedder:
    """A loaded model's embeddings as the index wants them: float32, L2-normalised rows."""

    def __init__(self, model, ref: str):
        self.model, self.ref = model, ref

    def embed(self, texts):
        import numpy as np

        return np.asarray(self.model.embed(list(texts), normalize=True, truncate=True).vectors, dtype=np.float32)


def check_name(name) -> str:
    """A knowledge base's name -> its canonical form, checked before it names a file (the
    store's rule: no '/', no '..')."""
    from ..store import check_name as check

    return check(name, what="knowledge base")


def path_for(name: str) -> Path:
    return config.knowledge_dir() / f"{check_name(name)}{SUFFIX}"


def list_knowledge_bases() -> list[dict]:
    """Every knowledge base: name, documents, chunks, size on disk, updated."""
    out = []
    folder = config.knowledge_dir()
    from ..store import is_model_name

    for path in sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []:
        if not is_model_name(path.stem):  # not one of ours (a file put there by hand)
            continue
        try:
            with knowledge_base(path.stem) as kb:
                out.append(kb.info())
        except KnowledgeBaseError as exc:
            out.append({"name": path.stem, "error": exc.message})
    return out


def knowledge_base(name: str) -> "KnowledgeBase":
    """Open a knowledge base by name (KnowledgeBaseNotFoundError if there is none)."""
    name = check_name(name)
    path = path_for(name)
    if not path.exists():
        raise KnowledgeBaseNotFoundError(f"no knowledge base named {name!r}")
    return KnowledgeBase(name, path)


def remove_knowledge_base(name: str) -> None:
    name = check_name(name)
    path = path_for(name)
    if not path.exists():
        raise KnowledgeBaseNotFoundError(f"no knowledge base named {name!r}")
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _embed_ref(embed) -> str | None:
    if embed is None or isinstance(embed, str):
        return embed or None
    return str(getattr(embed, "path", None) or embed)  # a loaded Model: load it again by its file


def create_knowledge_base(name: str, paths, *, embed=DEFAULT_EMBED, on_event=None,
                          max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> "KnowledgeBase":
    """Index ``paths`` (files and folders) into a new knowledge base. ``embed``: the embedding
    model (a name, a .gguf path or a loaded Model; None for lexical search only). Built in a
    temporary file and moved into place when complete: an interruption leaves nothing."""
    name = check_name(name)
    final = path_for(name)
    if final.exists():
        raise KnowledgeBaseExistsError(f"a knowledge base named {name!r} already exists")
    roots = roots_for(paths)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
    model, owned = _embedding_model(embed)
    try:
        conn = db.connect(tmp, create=True)
        try:
            embedder = Embedder(model, _embed_ref(embed)) if model is not None else None
            report = index(conn, roots, embedder, on_event=on_event, max_file_bytes=max_file_bytes)
            n_docs = db.counts(conn)[0]
            if not n_docs:
                raise NoDocumentsError("nothing to index in " + ", ".join(str(r.path) for r in roots))
            dim = getattr(model, "n_embd", None) if model is not None else None
            db.set_meta(conn, name=name, created=str(int(time.time())), embed_model=_embed_ref(embed) or "",
                        embed_dim=str(dim or ""))
        finally:
            conn.close()  # the last connection: SQLite folds the WAL back into the file
        try:
            os.link(tmp, final)  # never over a base another process just created
        except FileExistsError:
            raise KnowledgeBaseExistsError(f"a knowledge base named {name!r} already exists") from None
    finally:
        for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        if owned:
            model.close()
    kb = KnowledgeBase(name, final)
    kb.last_report = report
    return kb


def _embedding_model(embed):
    """(model, whether we loaded it) for ``embed``: a name or path is loaded, a Model used as is."""
    if embed is None:
        return None, False
    if isinstance(embed, str):
        from ..api import load
        from ..errors import ModelNotFoundError, ModelNotPulledError
        try:
            return load(embed), True
        except (ModelNotFoundError, ModelNotPulledError) as exc:
            raise type(exc)(exc.message, hint=f"Run `slmrun pull {embed}` first, or index for lexical search "
                                              "only (`--embed none`, embed=None).") from None
    return embed, False


class KnowledgeBase:
    """An open knowledge base. Thread-safe; close() it (or use ``with``) to free its models."""

    def __init__(self, name: str, path: Path):
        self.name, self.path = name, Path(path)
        self._conn = db.connect(self.path)
        self._meta = db.get_meta(self._conn)
        self._lock = threading.Lock()
        self._models: dict[str, object] = {}  # loaded here, closed by close()
        self._embedder: Embedder | None = None
        self.retriever = Retriever(self._conn)
        self.thresholds = Thresholds()
        self.last_report: Report | None = None

    # --- facts -------------------------------------------------------------------------
    @property
    def embed_model(self) -> str | None:
        return self._meta.get("embed_model") or None

    def info(self) -> dict:
        with self.retriever.lock:
            docs, chunks, faqs = db.counts(self._conn)
            meta = db.get_meta(self._conn)
            roots = [p for p, _ in db.roots(self._conn)]
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        return {"name": self.name, "documents": docs, "chunks": chunks, "faq_entries": faqs,
                "embed_model": meta.get("embed_model") or None,
                "embed_dim": int(meta["embed_dim"]) if meta.get("embed_dim") else None,
                "size_bytes": size, "paths": roots, "created": int(meta.get("created", 0)),
                "updated": int(meta.get("updated", 0)), "path": str(self.path)}

    def documents(self) -> list[dict]:
        with self.retriever.lock:
            return [{"source": s, "kind": k, "size_bytes": n, "chunks": c} for s, k, n, c in db.document_list(self._conn)]

    # --- models ------------------------------------------------------------------------
    def _model(self, model):
        if model is not None and not isinstance(model, str):
            return model
        ref = model or config.default_model()
        with self._lock:
            if ref not in self._models:
                from ..api import load
                self._models[ref] = load(ref)
            return self._models[ref]

    def embedder(self, model=None) -> Embedder | None:
        """The embedding model this base was built with (None for a lexical-only base);
        ``model``: the same model already loaded, to use instead of loading it here."""
        ref = self.embed_model
        if ref is None:
            return None
        if model is not None:
            return Embedder(model, ref)
        if self._embedder is None:
            self._embedder = Embedder(self._model(ref), ref)
        return self._embedder

    # --- indexing ----------------------------------------------------------------------
    def update(self, *, on_event=None, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Report:
        """Re-index what changed under the paths it was made from (by content hash); drop
        documents whose files are gone."""
        with self.retriever.lock:
            roots = [Root(Path(p), label) for p, label in db.roots(self._conn)]
        report = index(self._conn, roots, self.embedder(), on_event=on_event, max_file_bytes=max_file_bytes)
        self.last_report = report
        return report

    # --- questions ---------------------------------------------------------------------
    def search(self, question: str, k: int = 5, *, mode: str = "hybrid", rerank_with=None,
               embed_with=None) -> list[Hit]:
        """The ``k`` best passages; ``rerank_with``: a model (or name) to rerank them with."""
        _check_question(question)
        if mode not in MODES:
            raise InvalidArgumentError(f"unknown search mode {mode!r}", hint=f"Use one of {', '.join(MODES)}.")
        embedder = self.embedder(embed_with) if mode != "lexical" else None
        hits = self.retriever.search(question, k, mode=mode, embedder=embedder)
        if rerank_with is not None:
            hits = rerank_hits(self._model(rerank_with), question, hits)
        return hits

    def ask(self, question: str, *, model=None, method: str = "extract", rerank: bool = False, k: int = 5,
            embed_with=None, thresholds: Thresholds | None = None, max_tokens: int = A.REPLY_TOKENS) -> A.Answer:
        """A grounded answer to ``question``: an FAQ entry's own answer when one matches, else an
        answer from the best passages, else "I don't know from these documents" (``abstained``).
        ``method``: "extract" (the model picks the passage that answers, by its own label
        probabilities, and the answer is quoted from it) or "generate" (the model writes the
        answer, constrained to cite only the passages given). ``model``: a name or a loaded Model
        (default $SLMRUN_MODEL)."""
        if method not in METHODS:
            raise InvalidArgumentError(f"unknown answer method {method!r}", hint=f"Use one of {', '.join(METHODS)}.")
        t = thresholds or self.thresholds
        hits = self.search(question, k, embed_with=embed_with)
        faq = self.retriever.best_faq(question, hits)
        s = signals(question, hits, faq)
        if faq is not None and faq_match(s, t):
            return A.faq_answer(faq, hits)
        reason = abstain_reason(s, t)
        if reason is not None:
            return A.abstention(reason, hits)
        m = self._model(model)
        if rerank:
            hits = rerank_hits(m, question, hits)
            reason = abstain_reason(signals(question, hits, faq), t)
            if reason is not None:
                return A.abstention(reason, hits)
        if method == "generate":
            return A.generate(m, question, hits, max_tokens=max_tokens)
        return A.extract(m, question, hits, embedder=self.embedder(embed_with), min_choice=t.min_choice)

    def ask_messages(self, messages: list[dict], **kwargs) -> A.Answer:
        """ask() for a chat: the last user message is the question (a small model answers best
        from one question and its passages; earlier turns are not re-sent)."""
        question = next((m.get("content") for m in reversed(messages or []) if m.get("role") == "user"), None)
        if not isinstance(question, str):
            raise InvalidArgumentError("the conversation has no user message to answer",
                                       hint="End the messages with {\"role\": \"user\", \"content\": \"...\"}.")
        return self.ask(question, **kwargs)

    # --- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            models, self._models = list(self._models.values()), {}
        for m in models:
            m.close()
        self._conn.close()

    def __enter__(self) -> "KnowledgeBase":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KnowledgeBase({self.name!r})"


def _check_question(question) -> None:
    if not isinstance(question, str) or not question.strip():
        raise InvalidArgumentError("the question is empty", hint="Ask something, e.g. kb.ask(\"When are you open?\").")
