"""The decisions of retrieval and answering, as pure functions over scores: tested from tables.

- ``rrf``: reciprocal rank fusion (Cormack et al. 2009): each list gives a document
  weight / (k + rank); lists that agree lift a document, and scores of different kinds (BM25,
  cosine) never need to be put on one scale. The paper's k = 60 is the default here; the
  retriever uses its own calibrated k and weights (retrieve.py).
- ``faq_match``: an FAQ entry whose question is close enough to the user's is answered with its
  own answer, verbatim, without generation.
- ``abstain_reason``: when the retrieved passages do not hold an answer. Thresholds come from
  calibration on held-out questions (benchmarks/knowledge.py ``--calibrate``; the figures are
  in benchmarks/KNOWLEDGE.md) and are per signal: dense cosine for a knowledge base with vectors,
  term coverage for a lexical-only one, and the reranker's P(yes) when it ran.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

RRF_K = 60


def rrf(rankings: Sequence[Sequence[int]], k: int = RRF_K, weights: Sequence[float] | None = None) -> list[tuple[int, float]]:
    """(id, fused score) best first; each ranking is ids best first, ``weights`` one per ranking
    (default 1 each). Ties keep first-seen order."""
    weights = list(weights) if weights is not None else [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(rankings)} rankings but {len(weights)} weights")
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights):
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])


_WORD = re.compile(r"\w+", re.UNICODE)


def stem(word: str) -> str:
    """A crude English stem, enough to compare a question's words with a passage's ("hours" /
    "hour", "opening" / "open"); FTS5's Porter stemmer does the searching itself."""
    for suffix in ("ing", "ies", "ed", "es", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def terms(text: str, stopwords: Iterable[str] = ()) -> set[str]:
    stop = set(stopwords)
    return {stem(w) for w in (w.lower() for w in _WORD.findall(text)) if w not in stop}


def coverage(question_terms: set[str], passage_terms: set[str]) -> float:
    """The share of the question's words that the passage holds (0 when the question has none)."""
    return len(question_terms & passage_terms) / len(question_terms) if question_terms else 0.0


@dataclass(frozen=True)
class Thresholds:
    """Where answering stops. The defaults are calibrated for all-MiniLM-L6-v2 (minilm-l6) and
    the default model's reranker; benchmarks/KNOWLEDGE.md shows how they were chosen."""

    faq_similarity: float = 0.85  # question-to-question cosine for a verbatim FAQ answer (calibrated)
    faq_coverage: float = 1.0  # ... or, with no vectors, every content word of the question in the FAQ's
    min_dense: float = 0.46  # the best passage's cosine below this: nothing here answers it (calibrated)
    min_coverage: float = 0.5  # lexical-only: the best passage holds fewer of the question's words
    min_rerank: float = 0.0  # the reranker's best P(yes) below this (0: not used)
    min_choice: float = 0.0  # extractive answers: the model's P(best passage) below this


@dataclass(frozen=True)
class Signals:
    """What retrieval knows about its best passages."""

    best_dense: float | None = None  # best cosine, None without vectors
    best_coverage: float = 0.0  # best share of the question's words in one passage
    best_faq_similarity: float | None = None  # best question-to-question cosine
    best_faq_coverage: float = 0.0
    best_rerank: float | None = None  # best P(yes), when reranked
    n_hits: int = 0


def faq_match(s: Signals, t: Thresholds) -> bool:
    """Answer verbatim from the best FAQ entry? By question similarity where there are vectors,
    else only when the FAQ's question holds every word of the user's."""
    if s.best_faq_similarity is not None:
        return s.best_faq_similarity >= t.faq_similarity
    return s.best_faq_coverage >= t.faq_coverage


def abstain_reason(s: Signals, t: Thresholds) -> str | None:
    """Why the passages cannot answer, or None to go on and ask the model."""
    if s.n_hits == 0:
        return "no passage matches the question"
    if s.best_dense is not None:
        if s.best_dense < t.min_dense:
            return f"the closest passage is too far from the question (similarity {s.best_dense:.2f} < {t.min_dense:.2f})"
    elif s.best_coverage < t.min_coverage:
        return f"no passage holds enough of the question's words ({s.best_coverage:.0%} < {t.min_coverage:.0%})"
    if s.best_rerank is not None and s.best_rerank < t.min_rerank:
        return f"the model judges no passage answers it (P(yes) {s.best_rerank:.2f} < {t.min_rerank:.2f})"
    return None


def fuse_rerank(fused: Sequence[int], p_yes: dict[int, float], weight: float = 1.0) -> list[int]:
    """Reorder ``fused`` (ids best first) by the reranker: score = weight * P(yes) + (1 - weight)
    * the fused order's own score (1 for the first down to 1/n); weight 1 sorts by P(yes) alone,
    ties keeping the fused order."""
    n = len(fused)
    score = {i: weight * p_yes.get(i, 0.0) + (1 - weight) * (n - r) / n for r, i in enumerate(fused)}
    return sorted(fused, key=lambda i: -score[i])
