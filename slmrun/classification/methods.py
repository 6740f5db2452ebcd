"""``classify`` by either method, and the generative method's calibration.

``Model.classify(text, labels, method=..., calibrate=...)`` and the CLI come here when they ask
for more than the generative scoring of structured/classify.py:

- ``method="embedding"`` (the default for an embedding model): EmbeddingClassifier, zero-shot
  from the labels (names or descriptions) or few-shot from ``examples``; the fitted classifier
  is kept per model and (labels, examples), so classifying text after text embeds the examples
  once.
- ``method="generative"`` (the default for a generative model): the model's own probability of
  answering each label (``Model.classify``). An embedding model cannot do this
  (ModelCapabilityError).
- ``calibrate`` (generative only; embedding probabilities are calibrated already): a small
  model's prior over the labels swamps the text (SmolLM2-135M put 93 of 100 news articles into
  two of five topics). ``"content-free"``: Zhao et al. (2021): the label distribution the model
  gives for content-free inputs (CONTENT_FREE) in the same prompt is divided out
  (scoring.divide_prior); it costs one classification per content-free input, once per model,
  labels, instruction and examples. ``"batch"``: the prior is the mean distribution over the
  texts classified together (Zhou et al. 2023); it needs many texts of a mix of labels.
  ``True`` is the one that measured better (CALIBRATE_DEFAULT; benchmarks/CLASSIFY.md).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

from ..errors import InvalidArgumentError, ModelCapabilityError
from . import scoring
from .labels import check_examples, label_set

METHODS = ("embedding", "generative")
CALIBRATIONS = ("content-free", "batch")
CALIBRATE_DEFAULT = "batch"  # measured better (CLASSIFY.md); content-free for fewer than BATCH_MIN texts
# Zhao et al.'s content-free inputs ("" too, which classify refuses as an empty text).
CONTENT_FREE = ("N/A", "[MASK]")
BATCH_MIN = 8  # fewer texts than this say too little about the prior

_lock = threading.Lock()
_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> OrderedDict(key -> value)
_CACHE_SIZE = 8


def choose_method(model, method: str | None) -> str:
    """The method to use: the one asked, else embedding for an embedding model, else generative."""
    if method is None:
        return "embedding" if model.is_embedding_model else "generative"
    if method not in METHODS:
        raise InvalidArgumentError(f"method must be one of {list(METHODS)}, got {method!r}")
    if method == "generative" and model.is_embedding_model:
        raise ModelCapabilityError(f"{model.name} is an embedding model: it cannot classify by generating a label",
                                   hint="Use method='embedding' (the default for it), or a generative model.")
    return method


def choose_calibration(calibrate, method: str, n_texts: int | None) -> str | None:
    """None (no calibration) or one of CALIBRATIONS; ``n_texts`` None: one text at a time."""
    if calibrate is False or calibrate is None or method == "embedding":
        return None  # embedding probabilities are calibrated by their fitted temperature
    if calibrate is True:
        calibrate = CALIBRATE_DEFAULT if CALIBRATE_DEFAULT != "batch" or (n_texts or 0) >= BATCH_MIN \
            else "content-free"
    if calibrate not in CALIBRATIONS:
        raise InvalidArgumentError(f"calibrate must be true, false or one of {list(CALIBRATIONS)}, got {calibrate!r}")
    if calibrate == "batch" and (n_texts or 0) < BATCH_MIN:
        raise InvalidArgumentError(f"batch calibration needs at least {BATCH_MIN} texts classified together",
                                   hint="Use calibrate='content-free' for fewer texts.")
    return calibrate


def _cached(model, key, make):
    with _lock:
        entries = _cache.setdefault(model, OrderedDict())
        if key in entries:
            entries.move_to_end(key)
            return entries[key]
    value = make()
    with _lock:
        entries[key] = value
        while len(entries) > _CACHE_SIZE:
            entries.popitem(last=False)
    return value


def _key(labels, examples, instruction=None):
    ls = label_set(labels)
    pairs = tuple(check_examples(examples, ls.names)) if examples else ()
    return ls, pairs, instruction


def embedding_classifier(model, labels, examples=None):
    """The EmbeddingClassifier for these labels, fitted on ``examples`` if any (kept per model)."""
    from .embedding import EmbeddingClassifier

    ls, pairs, _ = _key(labels, examples)

    def make():
        clf = EmbeddingClassifier(model, ls)
        return clf.fit(pairs) if pairs else clf
    return _cached(model, ("embedding", ls, pairs), make)


def _generative_args(labels, instruction):
    ls = label_set(labels)
    if instruction is None and ls.described:
        instruction = ls.instruction()
    return ls, list(ls.names), instruction


def content_free_prior(model, labels, *, instruction=None, examples=None):
    """The model's mean label distribution over CONTENT_FREE inputs in the same prompt (kept)."""
    ls, names, instruction = _generative_args(labels, instruction)
    pairs = tuple(check_examples(examples, names)) if examples else ()

    def make():
        rows = [list(model.classify(t, names, instruction=instruction, examples=list(pairs)).probabilities.values())
                for t in CONTENT_FREE]
        return scoring.mean_prior(rows)
    return _cached(model, ("prior", ls, pairs, instruction), make)


def recalibrated(c, prior):
    """Classification ``c`` with its probabilities divided by ``prior`` and renormalised; the
    label is the most probable after that; ``logprobs`` stay the model's own."""
    from ..structured import Classification

    names = list(c.probabilities)
    p = scoring.divide_prior([list(c.probabilities.values())], prior)[0]
    best = max(range(len(names)), key=lambda i: p[i])
    return Classification(label=names[best], probabilities={n: float(v) for n, v in zip(names, p)},
                          logprobs=dict(c.logprobs))


def classify(model, text: str, labels, *, instruction=None, examples=None, method=None, calibrate=False):
    """One text by the chosen method (see the module docstring)."""
    method = choose_method(model, method)
    if method == "embedding":
        choose_calibration(calibrate, method, None)  # checks the value
        return embedding_classifier(model, labels, examples).classify(text)
    how = choose_calibration(calibrate, method, None)
    _, names, instruction = _generative_args(labels, instruction)
    c = model.classify(text, names, instruction=instruction, examples=examples)
    if how is None:
        return c
    return recalibrated(c, content_free_prior(model, labels, instruction=instruction, examples=examples))


def classify_texts(model, texts, labels, *, instruction=None, examples=None, method=None, calibrate=False) -> list:
    """Many texts, in order: embedded together (embedding), or scored one after another or by
    the model's ``classify_many`` where it has one (generative); batch calibration here."""
    if isinstance(texts, str):
        raise InvalidArgumentError("texts must be a list of strings, got one string")
    texts = list(texts)
    method = choose_method(model, method)
    how = choose_calibration(calibrate, method, len(texts))
    if method == "embedding":
        return embedding_classifier(model, labels, examples).predict(texts)
    _, names, instruction = _generative_args(labels, instruction)
    many = getattr(model, "classify_many", None)
    if many is not None:
        out = many(texts, names, instruction=instruction, examples=examples)
    else:
        out = [model.classify(t, names, instruction=instruction, examples=examples) for t in texts]
    if how is None or not out:
        return out
    if how == "batch":
        prior = scoring.mean_prior([list(c.probabilities.values()) for c in out])
    else:
        prior = content_free_prior(model, labels, instruction=instruction, examples=examples)
    return [recalibrated(c, prior) for c in out]
