"""Retrieval: lexical (FTS5's BM25), dense (exact cosine in numpy), fused by rank, then
optionally reranked by a generative model's own yes/no probabilities.

Dense search is one matrix-vector product over every chunk's vector: exact, no index to
build or tune. benchmarks/KNOWLEDGE.md measures it (and the whole query) at 1k and 50k chunks.
The vectors are read from the database once and kept until the index's generation moves (a
``kb update`` committed), so a server answering from a knowledge base sees an update at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

from . import db
from .decide import Signals, coverage, fuse_rerank, rrf, terms

CANDIDATES = 50  # from each retriever, before fusion
# RRF's k and the lexical list's weight (the dense list's being 1), calibrated on the benchmark's
# calibration questions (benchmarks/KNOWLEDGE.md): BM25 finds few paraphrases, and with the
# usual k=60 and equal weights it pulled the dense list's right first answer down (0.62 hit@1
# against 0.87); k=2 and weight 0.1 keep dense's order and let BM25 break its near-ties.
FUSION_K = 2
LEXICAL_WEIGHT = 0.1
MODES = ("hybrid", "lexical", "dense")

RERANK_INSTRUCTION = ("You judge search results. Does the passage answer the question? "
                      "Answer yes or no.")


@dataclass(frozen=True)
class Hit:
    id: int
    source: str  # the file, relative to what was indexed
    heading: str | None  # the section's heading; an FAQ entry's question
    text: str  # the passage; an FAQ entry's answer
    faq: bool
    score: float  # fused score (or P(yes) after reranking): higher is better
    lexical_rank: int | None = None
    dense_rank: int | None = None
    dense: float | None = None  # cosine with the question
    faq_similarity: float | None = None  # an FAQ entry: its question's cosine with the question
    coverage: float = 0.0  # share of the question's words in heading + text
    rerank: float | None = None  # P(yes), when reranked

    def citation(self) -> dict:
        out = {"source": self.source}
        if self.heading:
            out["heading"] = self.heading
        return out

    def to_dict(self) -> dict:
        return {"source": self.source, "heading": self.heading, "text": self.text, "faq": self.faq,
                "score": round(self.score, 6), "dense": _round(self.dense), "rerank": _round(self.rerank),
                "faq_similarity": _round(self.faq_similarity), "coverage": round(self.coverage, 3)}


def _round(x):
    return None if x is None else round(float(x), 4)


class Retriever:
    """Searches one knowledge base; thread-safe (one connection, a lock around it)."""

    def __init__(self, conn):
        self.conn = conn
        self.lock = threading.Lock()
        self._generation = -1
        self._vectors = None

    def vectors(self):
        """(ids, vecs, faq_ids, qvecs), reloaded when the index changed."""
        with self.lock:
            gen = db.generation(self.conn)
            if gen != self._generation or self._vectors is None:
                self._vectors = db.vectors(self.conn)
                self._generation = gen
            return self._vectors

    def search(self, question: str, k: int = 5, *, mode: str = "hybrid", embedder=None,
               weights: tuple[float, float] | None = None, rrf_k: int | None = None) -> list[Hit]:
        """The ``k`` best passages for ``question``, best first; dense search needs ``embedder``."""
        import numpy as np

        from .db import STOPWORDS

        lexical: list[tuple[int, float]] = []
        if mode in ("hybrid", "lexical"):
            with self.lock:
                lexical = db.lexical(self.conn, question, CANDIDATES)
        dense_ids: list[int] = []
        cosine: dict[int, float] = {}
        faq_sim: dict[int, float] = {}
        if mode in ("hybrid", "dense") and embedder is not None:
            ids, vecs, faq_ids, qvecs = self.vectors()
            if len(ids):
                q = np.asarray(embedder.embed([question])[0], dtype=np.float32)
                sims = vecs @ q
                if len(faq_ids):  # how close each FAQ entry's question is, for the verbatim answer
                    faq_sim = {int(i): float(s) for i, s in zip(faq_ids, qvecs @ q)}
                top = np.argpartition(-sims, min(CANDIDATES, len(sims) - 1))[:CANDIDATES]
                top = top[np.argsort(-sims[top], kind="stable")]
                dense_ids = [int(ids[i]) for i in top]
                cosine = {int(ids[i]): float(sims[i]) for i in top}
        lex_ids = [i for i, _ in lexical]
        lists = [(r, w) for r, w in zip((lex_ids, dense_ids), weights or (LEXICAL_WEIGHT, 1.0)) if r]
        fused = rrf([r for r, _ in lists], k=rrf_k or FUSION_K, weights=[w for _, w in lists])[:k]
        if dense_ids:  # every hit's cosine, also those only the lexical search found
            pos = np.searchsorted(ids, [i for i, _ in fused])
            cosine.update({cid: float(sims[p]) for (cid, _), p in zip(fused, pos) if p < len(ids) and ids[p] == cid})
        with self.lock:
            rows = db.chunk_rows(self.conn, [i for i, _ in fused])
        q_terms = terms(question, STOPWORDS)
        lex_rank = {i: r for r, i in enumerate(lex_ids, 1)}
        dense_rank = {i: r for r, i in enumerate(dense_ids, 1)}
        hits = []
        for cid, score in fused:
            row = rows.get(cid)
            if row is None:  # deleted between the two reads
                continue
            hits.append(Hit(id=row.id, source=row.source, heading=row.heading, text=row.text, faq=row.faq,
                            score=score, lexical_rank=lex_rank.get(cid), dense_rank=dense_rank.get(cid),
                            dense=cosine.get(cid), faq_similarity=faq_sim.get(cid),
                            coverage=coverage(q_terms, terms(f"{row.heading or ''} {row.text}"))))
        return hits

    def best_faq(self, question: str, hits: list[Hit]) -> Hit | None:
        """The FAQ entry among ``hits`` whose question is closest to ``question``."""
        faqs = [h for h in hits if h.faq]
        if not faqs:
            return None
        if any(h.faq_similarity is not None for h in faqs):
            return max(faqs, key=lambda h: h.faq_similarity if h.faq_similarity is not None else -1.0)
        return max(faqs, key=lambda h: _question_coverage(question, h))


def _question_coverage(question: str, hit: Hit) -> float:
    from .db import STOPWORDS
    return coverage(terms(question, STOPWORDS), terms(hit.heading or ""))


def signals(question: str, hits: list[Hit], faq: Hit | None) -> Signals:
    dense = [h.dense for h in hits if h.dense is not None]
    return Signals(best_dense=max(dense) if dense else None,
                   best_coverage=max((h.coverage for h in hits), default=0.0),
                   best_faq_similarity=faq.faq_similarity if faq is not None else None,
                   best_faq_coverage=_question_coverage(question, faq) if faq is not None else 0.0,
                   best_rerank=max((h.rerank for h in hits if h.rerank is not None), default=None),
                   n_hits=len(hits))


def rerank(model, question: str, hits: list[Hit], *, weight: float = 1.0) -> list[Hit]:
    """``hits`` reordered by the model's P(yes) that each passage answers the question (its own
    label probabilities by teacher forcing: Model.classify_many), scored side by side on its slots."""
    if not hits:
        return hits
    texts = [passage_for_rerank(question, h.heading, h.text) for h in hits]
    scores = score_passages(model, texts)
    p = {h.id: s for h, s in zip(hits, scores)}
    by_id = {h.id: replace(h, rerank=p[h.id]) for h in hits}
    order = fuse_rerank([h.id for h in hits], p, weight)
    return [replace(by_id[i], score=p[i]) for i in order]


def passage_for_rerank(question: str, heading: str | None, text: str) -> str:
    body = f"{heading}\n{text}" if heading else text
    return f"Question: {question}\n\nPassage:\n{body}"


def score_passages(model, texts: list[str]) -> list[float]:
    """P(yes) for each text (a question and a passage): the generative model's own label
    probabilities, the texts scored side by side on its slots (Model.classify_many)."""
    if not texts:
        return []
    results = model.classify_many(list(texts), ["yes", "no"], instruction=RERANK_INSTRUCTION)
    return [float(r.probabilities["yes"]) for r in results]


def cosine_scores(model, query: str, documents: list[str]) -> list[float]:
    """An embedding model's relevance: each document's cosine with the query (a bi-encoder's
    rerank, for /v1/rerank naming an embedding model)."""
    import numpy as np

    vecs = np.asarray(model.embed([query, *documents], normalize=True, truncate=True).vectors, dtype=np.float32)
    return [float(x) for x in vecs[1:] @ vecs[0]]
