"""``slmrun eval --task classify``: accuracy, macro-F1, the confusion matrix and expected
calibration error of classification on the user's labelled data, for several models and
methods in one run, each zero-shot and few-shot on the same items.

Rows, per model and per ``shots``:
- ``generative``: ``Model.classify``'s label probabilities (teacher forcing), examples in the
  prompt; with ``calibrate``, also ``generative-calibrated``: the same scores with the label
  prior divided out (classification.methods): the batch prior is the mean distribution over
  *all* the items (one prior for the run, so few-shot prompts that differ only where an item
  is its own example share it), the content-free prior is asked per prompt. The calibrated
  row reuses the generative row's scores, so its texts/s is that row's (plus the content-free
  inputs' cost).
- ``embedding``: an embedding model given with ``-m``, or any model given with ``via``:
  EmbeddingClassifier, label prototypes zero-shot, nearest centroid with examples.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

from ..errors import InvalidArgumentError
from .data import check_labels, labels_in, parse_shots, read_data, shot_groups
from .results import EvalRow
from .runs import Steps, loaded, new_peak, resolve_targets, save_rows, usage

CHUNK = 32  # texts per call: progress moves, and no batch prior is taken inside a call


def _label_set(labels, data, train):
    from ..classification import label_set, parse_labels

    if labels is None:
        names = labels_in(data, train)
        if len(names) < 2:
            raise InvalidArgumentError(f"the data has only one label ({names[0]!r}): there is nothing to choose between",
                                       hint="Name the others with --labels a,b,c, or add items of other labels.")
        return label_set(names)
    # Labels the data uses and --labels leaves out first: the more useful message for "--labels yes".
    given = [part.partition("=")[0].strip() for part in labels.split(",")] if isinstance(labels, str) \
        else list(getattr(labels, "names", labels))
    check_labels(given, data)
    if train is not None:
        check_labels(given, train, "--train")
    return parse_labels(labels) if isinstance(labels, str) else label_set(labels)


def evaluate_classify(models: Sequence[str], data, *, labels=None, shots=(0,), train=None, via: Sequence[str] = (),
                      calibrate=False, instruction: str | None = None, n_ctx: int | None = None,
                      n_threads: int | None = None, n_parallel: int | None = None, force: bool = False,
                      progress: Callable[[int, int, str], None] | None = None, save: bool = True) -> list[EvalRow]:
    """Classify every item of ``data`` ({"text", "label"} lines, or a list of such dicts) with
    each of ``models`` (and by embeddings with each of ``via``), at each count of ``shots``
    examples per label (from ``train``, else from the data, never an item's own). ``labels``:
    names, {name: description}, or "a,b" / "a=description,..." (default: the data's, in
    order of appearance). ``calibrate``: True, "batch" or "content-free" adds the calibrated
    generative row. Everything is checked before a model loads. One EvalRow per model,
    method and shot count; each kept per model file and task unless ``save=False``."""
    from ..classification import choose_calibration

    d = read_data(data, "classify")
    tr = read_data(train, "classify", "--train") if train is not None else None
    ls = _label_set(labels, d, tr)
    names = list(ls.names)
    pool = (tr or d).items
    source = f"--train {tr.name}" if tr else f"--data {d.name}"
    groups = {n: shot_groups(n, [it.target for it in pool], names, n_items=len(d.items) if tr else None,
                             source=source) for n in parse_shots(shots)}
    # True: the batch prior, or the content-free one for fewer items than a batch prior needs
    how = choose_calibration(calibrate, "generative", len(d.items)) if calibrate else None
    chosen = resolve_targets(list(models)) if models or not via else []
    embedders = resolve_targets(list(via)) if via else []
    plan: dict[str, list[str]] = {}  # name -> methods
    for t, method in [(t, "embedding" if t.encoder else "generative") for t in chosen] + \
                     [(t, "embedding") for t in embedders]:
        methods = plan.setdefault(t.name, [])
        if method not in methods:
            methods.append(method)
    by_name = {t.name: t for t in chosen + embedders}
    labels_arg = dict(zip(ls.names, ls.descriptions)) if ls.described else names
    meta = {"data": d.name, "data_sha256": d.sha256, "train": tr.name if tr else None,
            "train_sha256": tr.sha256 if tr else None, "labels": names, "instruction": instruction,
            "n_items": len(d.items)}
    steps = Steps(progress, sum(len(m) for m in plan.values()) * len(groups) * len(d.items))
    rows: list[EvalRow] = []
    for name, methods in plan.items():
        with loaded(by_name[name], n_ctx=n_ctx, n_threads=n_threads, n_parallel=n_parallel, force=force) as model:
            first = True
            for n, shot_sets in groups.items():
                for method in methods:
                    if not first:
                        new_peak()
                    first = False
                    steps.begin(f"{name} {method} {n}-shot")
                    run = _Run(model, labels_arg, instruction, pool, d, shot_sets, steps)
                    results, seconds = run.predict(method)
                    row_meta = {**meta, "shots": n, "calibration": None}
                    done = [EvalRow(model=name, method=method, task="classify", meta=row_meta,
                                    figures={**_figures(d, results, names), **usage(len(d.items), seconds)})]
                    if method == "generative" and how is not None:
                        calibrated, extra = run.calibrated(results, how)
                        done.append(EvalRow(model=name, method="generative-calibrated", task="classify",
                                            meta={**row_meta, "calibration": how},
                                            figures={**_figures(d, calibrated, names),
                                                     **usage(len(d.items), seconds + extra)}))
                    if save:  # each row kept as it is done
                        save_rows(done, by_name)
                    rows += done
    return rows


class _Run:
    """One model's predictions for every item at one shot count, group by group."""

    def __init__(self, model, labels, instruction, pool, data, groups, steps):
        self.model, self.labels, self.instruction = model, labels, instruction
        self.pool, self.data, self.groups, self.steps = pool, data, groups, steps

    def examples(self, group) -> list[tuple[str, str]] | None:
        return [(self.pool[i].input, self.pool[i].target) for i in group.examples] or None

    def predict(self, method: str):
        from ..classification import classify_texts

        out: list = [None] * len(self.data.items)
        seconds = 0.0
        for group in self.groups:
            examples = self.examples(group)
            for start in range(0, len(group.items), CHUNK):
                index = group.items[start:start + CHUNK]
                t0 = time.perf_counter()
                found = classify_texts(self.model, [self.data.items[i].input for i in index], self.labels,
                                       instruction=self.instruction, examples=examples, method=method)
                seconds += time.perf_counter() - t0
                for i, c in zip(index, found):
                    out[i] = c
                self.steps(len(index))
        return out, seconds

    def calibrated(self, results, how: str):
        """(the results with the label prior divided out, the seconds the prior took)."""
        from ..classification import content_free_prior, recalibrated, scoring

        if how == "batch":
            prior = scoring.mean_prior([list(c.probabilities.values()) for c in results])
            return [recalibrated(c, prior) for c in results], 0.0
        out, seconds = list(results), 0.0
        for group in self.groups:
            t0 = time.perf_counter()
            prior = content_free_prior(self.model, self.labels, instruction=self.instruction,
                                       examples=self.examples(group))
            seconds += time.perf_counter() - t0
            for i in group.items:
                out[i] = recalibrated(results[i], prior)
        return out, seconds


def _figures(d, results, names) -> dict:
    from .metrics import classify_figures

    gold = [it.target for it in d.items]
    predicted = [c.label for c in results]
    return classify_figures(gold, predicted, [c.probabilities[c.label] for c in results], names)
