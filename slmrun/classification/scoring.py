"""The decisions of classification as pure functions of arrays: tested from tables.

Embedding method
- ``centroids(X, y, k)``: each label's mean example embedding, L2-normalised (nearest centroid).
- ``cosine_scores(X, P)``: cosine similarity of each text to each prototype / centroid (rows of
  both are unit vectors, so a dot product).
- ``softmax(scores, temperature)``: probabilities from similarities. Similarities of a sentence
  embedding model sit in a narrow band (0.1-0.6 for MiniLM), so the softmax needs a small
  temperature to say anything; how small is *fitted*, not guessed:
- ``loo_scores(X, y, k)`` + ``fit_temperature(scores, y)``: each training example scored against
  centroids computed without it (leave-one-out: what an unseen text would meet), then the
  temperature minimising the negative log-likelihood of the true labels over those scores
  (a one-parameter Platt / temperature scaling, Guo et al. 2017). Examples whose label has no
  other example cannot be scored that way and are left out of the fit.

Generative method (calibration against the label prior)
- ``divide_prior(probs, prior)``: p(label | text) / prior(label), renormalised: Zhao et al.
  (2021)'s contextual calibration with W = diag(prior)^-1, b = 0, where the prior is the
  model's label distribution for a content-free input (``mean_prior`` over "N/A", ...), or the
  mean over a batch of texts (Zhou et al. 2023's batch calibration).

Metrics: ``accuracy``, ``macro_f1``, ``expected_calibration_error`` (benchmarks and eval).
"""

from __future__ import annotations

import math
from typing import Sequence


def _np():
    import numpy as np
    return np


def unit_rows(X):
    """Rows scaled to length 1 (a zero row stays zero)."""
    np = _np()
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, 1e-12)


def centroids(X, y: Sequence[int], k: int):
    """(k, d): the normalised mean of each label's rows of ``X``; a label with none is a zero row."""
    np = _np()
    X, y = unit_rows(X), np.asarray(y)
    out = np.zeros((k, X.shape[1]))
    for label in range(k):
        members = X[y == label]
        if len(members):
            out[label] = members.mean(axis=0)
    return unit_rows(out)


def cosine_scores(X, P):
    """(n, k): cosine similarity of each row of ``X`` to each row of ``P``."""
    return unit_rows(X) @ unit_rows(P).T


def softmax(scores, temperature: float):
    """Row-wise softmax of ``scores / temperature``."""
    np = _np()
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def loo_scores(X, y: Sequence[int], k: int, extra=None):
    """Leave-one-out centroid scores: row i is example i's cosine similarity to every label's
    centroid, with example i left out of its own label's centroid; plus the indices of the
    examples that could be scored (their label has another example, or a row of ``extra``, a
    (k, d) array of prototypes added to the centroids as one more member where not None)."""
    np = _np()
    X, y = unit_rows(X), np.asarray(y)
    d = X.shape[1]
    sums, counts = np.zeros((k, d)), np.zeros(k)
    for label in range(k):
        members = X[y == label]
        sums[label], counts[label] = members.sum(axis=0), len(members)
    if extra is not None:
        extra = unit_rows(extra)
        sums, counts = sums + extra, counts + 1
    rows, kept = [], []
    for i, (x, label) in enumerate(zip(X, y)):
        if counts[label] < 2:
            continue
        s = sums.copy()
        s[label] = s[label] - x
        rows.append(unit_rows(s) @ x)
        kept.append(i)
    return (np.array(rows) if rows else np.zeros((0, k))), kept


def nll(scores, y: Sequence[int], temperature: float) -> float:
    """Mean negative log-likelihood of labels ``y`` under softmax(scores / temperature)."""
    np = _np()
    z = np.asarray(scores, dtype=np.float64) / temperature
    top = z.max(axis=1, keepdims=True)
    log_norm = (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))[:, 0]
    return float(np.mean(log_norm - z[np.arange(len(z)), np.asarray(y)]))


def fit_temperature(scores, y: Sequence[int], *, lo: float = 1e-3, hi: float = 10.0) -> float:
    """The temperature in [lo, hi] minimising ``nll``: golden-section search over log T (the NLL
    of a softmax is convex in 1/T, so unimodal in log T). Needs at least one row."""
    if len(scores) == 0:
        raise ValueError("no scores to fit a temperature on")
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(scores, y, math.exp(c)), nll(scores, y, math.exp(d))
    for _ in range(60):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(scores, y, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(scores, y, math.exp(d))
    return math.exp((a + b) / 2)


# --- the generative method's calibration ---------------------------------------------------------

def divide_prior(probs, prior):
    """Probabilities (n, k) divided by the label ``prior`` (k,) and renormalised per row."""
    np = _np()
    probs, prior = np.asarray(probs, dtype=np.float64), np.asarray(prior, dtype=np.float64)
    if probs.shape[-1] != prior.shape[-1]:
        raise ValueError(f"{probs.shape[-1]} labels but a prior over {prior.shape[-1]}")
    w = probs / np.maximum(prior, 1e-12)
    return w / w.sum(axis=-1, keepdims=True)


def mean_prior(probs):
    """The mean of probability rows (n, k), renormalised: the prior of a set of inputs."""
    np = _np()
    p = np.asarray(probs, dtype=np.float64).mean(axis=0)
    return p / p.sum()


# --- metrics ---------------------------------------------------------------------------------------

def accuracy(gold: Sequence, predicted: Sequence) -> float:
    if len(gold) != len(predicted) or not gold:
        raise ValueError("need as many predictions as gold labels, and at least one")
    return sum(g == p for g, p in zip(gold, predicted)) / len(gold)


def macro_f1(gold: Sequence, predicted: Sequence, labels: Sequence | None = None) -> float:
    """The unweighted mean over labels of F1 = 2PR / (P + R); a label never predicted nor gold
    is left out, one with no true positive scores 0."""
    labels = list(labels) if labels is not None else sorted(set(gold) | set(predicted), key=str)
    scores = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, predicted))
        fp = sum(g != label and p == label for g, p in zip(gold, predicted))
        fn = sum(g == label and p != label for g, p in zip(gold, predicted))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Σ over equal-width confidence bins of (share of items) × |accuracy - mean confidence|."""
    n = len(confidences)
    if n == 0 or n != len(correct):
        raise ValueError("need one correctness flag per confidence, and at least one")
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [(c, ok) for c, ok in zip(confidences, correct) if lo < c <= hi or (b == 0 and c <= 0)]
        if inside:
            acc = sum(ok for _, ok in inside) / len(inside)
            conf = sum(c for c, _ in inside) / len(inside)
            total += len(inside) / n * abs(acc - conf)
    return total
