"""Measuring models: `slmrun eval`.

    perplexity.py  perplexity and KL divergence from a reference over a text, by
                   llama-perplexity's method (runtime/scoring.py decodes and scores)
    stats.py       the summary figures as llama-perplexity prints them (pure)
    classify.py    accuracy, macro-F1, confusion, ECE on the user's labelled data: generative
                   (calibrated or not) and embedding methods, zero- and few-shot
    extract.py     exact match and per-field F1 of constrained extraction
    generate.py    ROUGE-L and BLEU of replies against references
    data.py        the user's JSON-lines data and schema, checked whole first; few-shot groups
    metrics.py     the task figures, pure (the only importer of sacrebleu and rouge_score)
    runs.py        what the tasks share: models resolved first, loaded one at a time,
                   throughput and peak memory per row, requests in flight, rows kept
    results.py     EvalRow (what every task returns: model, method, named figures) and the
                   results store per model file SHA-256 and per task; measured_quality for
                   the planner (KL divergence only: task rows are kept, not ranked by)

Each task is a function ``(models, **options) -> list[EvalRow]`` named in TASKS; the CLI
dispatches on ``--task``. A new task (classify, extract, generate on the user's data) adds
its module, its line in TASKS and its KEY_FIELDS in results.py.
"""

from __future__ import annotations

from .results import EvalRow

TASKS = {
    "perplexity": "slmrun.evaluate.perplexity:evaluate_perplexity",
    "classify": "slmrun.evaluate.classify:evaluate_classify",
    "extract": "slmrun.evaluate.extract:evaluate_extract",
    "generate": "slmrun.evaluate.generate:evaluate_generate",
}


def task_function(name: str):
    """The function that runs task ``name`` (InvalidArgumentError naming the known tasks)."""
    import importlib

    from ..errors import InvalidArgumentError

    target = TASKS.get(str(name).strip().lower())
    if target is None:
        raise InvalidArgumentError(f"unknown evaluation task {name!r}", hint=f"Use one of: {', '.join(TASKS)}.")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def evaluate_perplexity(models, text, **options):
    """Perplexity (and KL divergence from ``reference=``) of ``models`` over ``text``; see
    evaluate.perplexity.evaluate_perplexity."""
    from .perplexity import evaluate_perplexity as run

    return run([models] if isinstance(models, str) else list(models), text, **options)


def evaluate_classify(models, data, **options):
    """Classification of labelled ``data`` by each model (and method); see
    evaluate.classify.evaluate_classify."""
    from .classify import evaluate_classify as run

    return run([models] if isinstance(models, str) else list(models), data, **options)


def evaluate_extract(models, data, *, schema, **options):
    """Extraction of ``schema``'s fields from ``data``; see evaluate.extract.evaluate_extract."""
    from .extract import evaluate_extract as run

    return run([models] if isinstance(models, str) else list(models), data, schema=schema, **options)


def evaluate_generate(models, data, **options):
    """Replies to ``data``'s prompts scored against references; see evaluate.generate.evaluate_generate."""
    from .generate import evaluate_generate as run

    return run([models] if isinstance(models, str) else list(models), data, **options)


__all__ = ["EvalRow", "TASKS", "evaluate_classify", "evaluate_extract", "evaluate_generate", "evaluate_perplexity",
           "task_function"]
