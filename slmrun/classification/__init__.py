"""Text classification beyond the generative scoring of structured/classify.py.

- ``EmbeddingClassifier(model, labels).fit(examples).predict(texts)``: labels from a model's
  embeddings, zero-shot (label names or descriptions as prototypes) or few-shot (nearest
  centroid), probabilities calibrated by a fitted temperature (embedding.py).
- ``classify`` / ``classify_texts``: either method for one text or many, and the generative
  method's calibration against the label prior (methods.py); ``Model.classify(...,
  method=, calibrate=)`` comes here.
- ``label_set``, ``parse_labels``, ``read_labels_file``, ``check_examples``, ``read_examples``:
  labels with descriptions and labelled examples, checked before any model runs (labels.py).
- ``scoring``: the pure math (centroids, temperature fit, prior division, metrics).

Imports nothing heavy at import time; numpy when scoring runs. Never imports llama_cpp.
"""

from .embedding import ZERO_SHOT_TEMPERATURE, EmbeddingClassification, EmbeddingClassifier
from .labels import LabelSet, check_examples, label_set, parse_labels, read_examples, read_labels_file
from .methods import (CALIBRATE_DEFAULT, CALIBRATIONS, CONTENT_FREE, METHODS, choose_calibration, choose_method,
                      classify, classify_texts, content_free_prior, embedding_classifier, recalibrated)

__all__ = [
    "CALIBRATE_DEFAULT", "CALIBRATIONS", "CONTENT_FREE", "EmbeddingClassification", "EmbeddingClassifier", "LabelSet",
    "METHODS", "ZERO_SHOT_TEMPERATURE", "check_examples", "choose_calibration", "choose_method", "classify",
    "classify_texts", "content_free_prior", "embedding_classifier", "label_set", "parse_labels", "read_examples",
    "read_labels_file", "recalibrated",
]
