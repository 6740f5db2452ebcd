"""Classification with embeddings: ``EmbeddingClassifier(model, labels).fit(examples).predict(texts)``.

- **Zero-shot** (no examples): each label's prototype is the embedding of its description, or
  of its name; a text goes to the label whose prototype is most similar (cosine).
- **Few-shot** (``fit(examples)``): each label's centroid, the normalised mean embedding of its
  examples and its prototype (nearest centroid); a label with no example keeps its prototype.
  ``benchmarks/CLASSIFY.md`` compares this with a logistic regression on the same embeddings.
- **Probabilities**: softmax(similarity / T). After ``fit``, T is fitted on the examples by
  leave-one-out (scoring.loo_scores, scoring.fit_temperature): each example is scored against
  centroids computed without it, as a new text would be, and T minimises the negative
  log-likelihood of the true labels. Zero-shot, or with too few examples to leave one out,
  T is ZERO_SHOT_TEMPERATURE, fitted the same way on the train split of the benchmark's
  topics (never its test split) with all-MiniLM-L6-v2.

Any model that embeds will do; an embedding model (``minilm-l6``) is the one to use. A
generative model's embeddings (mean-pooled hidden states of a model trained to predict the
next token) work, but place texts poorly for this: see the benchmark.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

from ..errors import InvalidArgumentError
from ..structured import Classification
from . import scoring
from .labels import LabelSet, check_examples, label_set

# Fitted on the train split of benchmarks/data/topics.jsonl (CLASSIFY.md; 0.031 with label names,
# 0.032 with descriptions), all-MiniLM-L6-v2.
ZERO_SHOT_TEMPERATURE = 0.03
T_MIN, T_MAX = 0.005, 1.0  # a fit on a handful of examples can run to an edge: keep it sane


@dataclass(frozen=True)
class EmbeddingClassification(Classification):
    """A Classification from embeddings: ``logprobs`` are the log of the calibrated
    probabilities, ``similarities`` each label's cosine similarity to the text."""

    similarities: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "similarities": self.similarities}


class EmbeddingClassifier:
    """Labels for texts from a model's embeddings. ``labels``: names, or {name: description};
    optional when ``fit`` gets examples (the labels are then theirs, in order of appearance)."""

    def __init__(self, model, labels=None, *, temperature: float | None = None):
        self.model = model
        self.labels: LabelSet | None = label_set(labels) if labels is not None else None
        self.temperature = ZERO_SHOT_TEMPERATURE if temperature is None else float(temperature)
        self._fixed_temperature = temperature is not None
        self.method = "prototypes"  # or "centroids" after fit()
        self.n_examples = 0
        self._P = None  # (labels, dimensions): prototypes or centroids

    # --- training ---------------------------------------------------------------------------------
    def fit(self, examples) -> "EmbeddingClassifier":
        """Nearest centroid over ``examples`` ((text, label) pairs or {"text", "label"} dicts),
        and the temperature fitted on them by leave-one-out. Returns self."""
        import numpy as np

        pairs = check_examples(examples, self.labels.names if self.labels else None)
        if not pairs:
            raise InvalidArgumentError("no examples to fit", hint="Give (text, label) pairs, or no fit() for zero-shot.")
        if self.labels is None:
            self.labels = label_set(list(dict.fromkeys(label for _, label in pairs)))
        names = self.labels.names
        index = {name: i for i, name in enumerate(names)}
        X = self._embed([text for text, _ in pairs])
        y = [index[label] for _, label in pairs]
        # The label's prototype (description, else name) counts as one more member of its centroid:
        # measured better at every k, most at one example a label (topics 0.69 -> 0.84-0.86).
        protos = self._embed([self.labels.prototype_text(i) for i in range(len(names))])
        P = scoring.centroids(np.vstack([X, protos]), y + list(range(len(names))), len(names))
        if not self._fixed_temperature:
            # Leave-one-out needs two labels with two real examples each; else the zero-shot temperature.
            counts = collections.Counter(y)
            if sum(n >= 2 for n in counts.values()) >= 2:
                scores, kept = scoring.loo_scores(X, y, len(names), extra=protos)
                self.temperature = scoring.fit_temperature(scores, [y[i] for i in kept], lo=T_MIN, hi=T_MAX)
            else:
                self.temperature = ZERO_SHOT_TEMPERATURE
        self._P, self.method, self.n_examples = P, "centroids", len(pairs)
        return self

    def _prototypes(self):
        if self._P is None:
            if self.labels is None:
                raise InvalidArgumentError("the classifier has no labels",
                                           hint="Give labels, or fit() it on labelled examples.")
            self._P = self._embed([self.labels.prototype_text(i) for i in range(len(self.labels.names))])
        return self._P

    # --- prediction -------------------------------------------------------------------------------
    def predict(self, texts) -> list[EmbeddingClassification]:
        """One EmbeddingClassification per text, in order (embedded together, in one call)."""
        if isinstance(texts, str):
            raise InvalidArgumentError("predict() takes a list of texts, got one string",
                                       hint="Use classify(text) for one text, or pass [text].")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InvalidArgumentError(f"text {i} is empty or not a string: {text!r}")
        if not texts:
            return []
        P = self._prototypes()
        sims = scoring.cosine_scores(self._embed(texts), P)
        probs = scoring.softmax(sims, self.temperature)
        names = self.labels.names
        out = []
        for s, p in zip(sims, probs):
            best = int(p.argmax())  # ties: the first label listed
            out.append(EmbeddingClassification(
                label=names[best], probabilities={n: float(v) for n, v in zip(names, p)},
                logprobs={n: (math.log(v) if v > 0 else -math.inf) for n, v in zip(names, p)},
                similarities={n: float(v) for n, v in zip(names, s)}))
        return out

    def classify(self, text: str) -> EmbeddingClassification:
        """The label for one text."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidArgumentError("the text to classify is empty")
        return self.predict([text])[0]

    def _embed(self, texts):
        return self.model.embed(list(texts), normalize=True).vectors

    def __repr__(self) -> str:
        labels = list(self.labels.names) if self.labels else None
        return (f"EmbeddingClassifier({getattr(self.model, 'name', self.model)!r}, labels={labels}, "
                f"method={self.method!r}, temperature={self.temperature:.4g}, examples={self.n_examples})")
