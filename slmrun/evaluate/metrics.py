"""The figures of the task evaluations, as pure functions of what was predicted and what was
expected (tested from tables). The only importer of sacrebleu and rouge_score.

classify (accuracy, macro-F1 and ECE are classification.scoring's, shared with the benchmarks)
- ``confusion_matrix(gold, predicted, labels)``: rows the true label, columns the predicted.
- ``classify_figures``: accuracy, macro_f1, ece (10 equal-width bins of the predicted label's
  probability), the confusion matrix and each label's F1.

extract
- ``same_value(a, b)``: JSON equality, strictly typed (``true`` is not ``1``; ``1`` is ``1.0``).
- ``extract_figures``: ``exact_match`` (the whole value equal to the expected one) and, when the
  values are objects, ``field_f1``: per top-level field, F1 = 2·correct / (predicted + expected),
  where a field counts as predicted (expected) when present and not null, and correct when
  both are there and equal (nested values compare whole). An output that never became a valid
  value (cut at max_tokens) predicts nothing. ``mean_field_f1`` is their unweighted mean.

generate
- ``rouge_l``: the mean over items of ROUGE-L's F-measure (rouge-score, no stemming, as
  Hugging Face ``evaluate`` computes it; the best over an item's references). rouge-score's
  tokenizer keeps only a-z and 0-9, which would score any text in another script as empty:
  when the texts hold other letters, a Unicode tokenizer is used instead (words, and CJK
  characters one by one) and the row says so.
- ``bleu``: sacrebleu's corpus BLEU (0-100, its default 13a tokenizer and exponential
  smoothing), with its signature so a figure can be reproduced.
"""

from __future__ import annotations

import re
from typing import Sequence

from ..classification import scoring

MISSING = object()  # an extraction that produced no valid value


def confusion_matrix(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    """``m[i][j]``: items whose true label is labels[i] that were given labels[j]."""
    index = {label: i for i, label in enumerate(labels)}
    m = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, predicted, strict=True):
        m[index[g]][index[p]] += 1
    return m


def per_label_f1(matrix: list[list[int]], labels: Sequence[str]) -> dict[str, float | None]:
    """Each label's F1 from the confusion matrix (None for a label neither true nor predicted)."""
    out = {}
    for i, label in enumerate(labels):
        tp = matrix[i][i]
        fn = sum(matrix[i]) - tp
        fp = sum(row[i] for row in matrix) - tp
        out[label] = None if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    return out


def classify_figures(gold: Sequence[str], predicted: Sequence[str], confidences: Sequence[float],
                     labels: Sequence[str]) -> dict:
    """accuracy, macro_f1, ece, confusion ({"labels", "matrix"}), f1 per label, n_items."""
    matrix = confusion_matrix(gold, predicted, labels)
    return {"accuracy": scoring.accuracy(gold, predicted),
            "macro_f1": scoring.macro_f1(gold, predicted, labels),
            "ece": scoring.expected_calibration_error(confidences, [g == p for g, p in zip(gold, predicted)]),
            "confusion": {"labels": list(labels), "matrix": matrix},
            "label_f1": per_label_f1(matrix, labels), "n_items": len(gold)}


# --- extract --------------------------------------------------------------------------------------

def same_value(a, b) -> bool:
    """JSON equality with JSON's types: a boolean equals only a boolean, numbers compare by
    value (31 == 31.0), objects by keys and values, arrays in order."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def fields_of(schema, expected: Sequence) -> list[str]:
    """The top-level fields to score: the schema's properties in order, then any other key the
    expected values use."""
    names = list((schema.get("properties") or {}) if isinstance(schema, dict) else {})
    for value in expected:
        if isinstance(value, dict):
            names += [k for k in value if k not in names]
    return names


def extract_figures(expected: Sequence, predicted: Sequence, fields: Sequence[str]) -> dict:
    """exact_match, field_f1 {field: F1 or None}, mean_field_f1, n_invalid, n_items (see the
    module docstring). ``predicted``: values, or MISSING for an output that failed."""
    if len(expected) != len(predicted) or not expected:
        raise ValueError("need one prediction per expected value, and at least one")
    exact = sum(p is not MISSING and same_value(e, p) for e, p in zip(expected, predicted)) / len(expected)
    field_f1: dict[str, float | None] = {}
    for name in fields:
        n_pred = n_gold = correct = 0
        for e, p in zip(expected, predicted):
            ev = e.get(name) if isinstance(e, dict) else None
            pv = p.get(name) if isinstance(p, dict) else None
            n_gold += ev is not None
            n_pred += pv is not None
            correct += ev is not None and pv is not None and same_value(ev, pv)
        field_f1[name] = None if n_pred + n_gold == 0 else 2 * correct / (n_pred + n_gold)
    scored = [v for v in field_f1.values() if v is not None]
    return {"exact_match": exact, "field_f1": field_f1,
            "mean_field_f1": sum(scored) / len(scored) if scored else None,
            "n_invalid": sum(p is MISSING for p in predicted), "n_items": len(expected)}


# --- generate -------------------------------------------------------------------------------------

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_UNICODE_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")


class UnicodeTokenizer:
    """rouge-score's tokenizer interface: lower-cased words of any script, CJK characters one
    by one (they are not separated by spaces)."""

    def tokenize(self, text: str) -> list[str]:
        return _UNICODE_TOKEN.findall(text.lower())


def needs_unicode(texts) -> bool:
    """Whether rouge-score's ASCII tokenizer would drop letters of these texts."""
    return any(not ch.isascii() and ch.isalnum() for t in texts for ch in t)


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, str]:
    """(mean ROUGE-L F-measure over items, the tokenizer used: "rouge-score" or "unicode")."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references) or not predictions:
        raise ValueError("need one prediction per item, and at least one")
    unicode = needs_unicode(list(predictions) + [r for refs in references for r in refs])
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False,
                                      tokenizer=UnicodeTokenizer() if unicode else None)
    total = sum(scorer.score_multi(list(refs), pred)["rougeL"].fmeasure
                for pred, refs in zip(predictions, references))
    return total / len(predictions), ("unicode" if unicode else "rouge-score")


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, str]:
    """(corpus BLEU 0-100, sacrebleu's signature). Items may have different numbers of
    references (sacrebleu takes None for a missing one)."""
    from sacrebleu.metrics import BLEU

    if len(predictions) != len(references) or not predictions:
        raise ValueError("need one prediction per item, and at least one")
    width = max(len(refs) for refs in references)
    streams = [[refs[j] if j < len(refs) else None for refs in references] for j in range(width)]
    metric = BLEU()
    score = metric.corpus_score(list(predictions), streams)
    return float(score.score), str(metric.get_signature())


def generate_figures(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """rouge_l, bleu, n_items, and the tokenizer/signature that say how they were computed."""
    r, tokenizer = rouge_l(predictions, references)
    b, signature = bleu(predictions, references)
    return {"rouge_l": r, "bleu": b, "n_items": len(predictions), "rouge_tokenizer": tokenizer,
            "bleu_signature": signature}
