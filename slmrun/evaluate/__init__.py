"""Measuring models: `slmrun eval`.

    perplexity.py  perplexity and KL divergence from a reference over a text, by
                   llama-perplexity's method (runtime/scoring.py decodes and scores)
    stats.py       the summary figures as llama-perplexity prints them (pure)
    results.py     EvalRow (what every task returns: model, method, named figures) and the
                   results store per model file SHA-256 and per task; measured_quality for
                   the planner

Each task is a function ``(models, **options) -> list[EvalRow]`` named in TASKS; the CLI
dispatches on ``--task``. A new task (classify, extract, generate on the user's data) adds
its module, its line in TASKS and its KEY_FIELDS in results.py.
"""

from __future__ import annotations

from .results import EvalRow

TASKS = {
    "perplexity": "slmrun.evaluate.perplexity:evaluate_perplexity",
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


__all__ = ["EvalRow", "TASKS", "evaluate_perplexity", "task_function"]
