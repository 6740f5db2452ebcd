"""What the task evaluations (classify, extract, generate) share: the models named, resolved and
checked before any loads; one model loaded at a time; each row's throughput and peak memory;
requests kept in flight up to the model's slots; the rows kept in the results store.

Peak memory is the process's peak resident set while the row ran (Linux's VmHWM, reset
before each model loads and before each later row of it): the model's weights and context
plus the work, as `slmrun bench` reports it.
"""

from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..errors import InvalidArgumentError, ModelCapabilityError


@dataclass(frozen=True)
class Target:
    ref: str  # as the user named it
    name: str  # name:quant, or the file's name
    path: Path
    sha256: str | None  # the store's record, when the file is stored
    encoder: bool  # an embedding model (BERT family): embeds, cannot generate

    def file_sha256(self) -> str:
        if self.sha256:
            return self.sha256
        from ..store import sha256_file
        return sha256_file(self.path)  # a file outside the store: hashed when its row is kept


def resolve_targets(refs: Sequence[str]) -> list[Target]:
    """Every model found and its header checked, before any is loaded; a model named twice
    (by the same or another name for the same file) once."""
    from .. import api

    if not refs:
        raise InvalidArgumentError("name at least one model to evaluate",
                                   hint="Example: slmrun eval -m smollm2-135m --task classify --data FILE.jsonl")
    out = []
    for ref in refs:
        resolved = api.resolve(ref)
        info = api.inspect_file(resolved)
        name = f"{resolved.name}:{resolved.quant.lower()}" if resolved.quant else resolved.path.name
        sha = resolved.stored.sha256 if resolved.stored is not None else None
        if any(t.path.resolve() == resolved.path.resolve() for t in out):
            continue
        out.append(Target(ref=ref, name=name, path=resolved.path, sha256=sha, encoder=api.is_encoder(info)))
    return out


def require_generative(targets: Sequence[Target], task: str) -> None:
    """An embedding model cannot generate: refused for ``task`` before anything loads."""
    for t in targets:
        if t.encoder:
            raise ModelCapabilityError(
                f"{t.name} is an embedding model: it cannot generate text, which --task {task} needs",
                hint="Use a generative model (such as smollm2-135m); an embedding model can --task classify.")


def new_peak() -> None:
    """Start measuring a new row's peak memory."""
    from ..hardware import reset_peak_rss
    reset_peak_rss()


def usage(n_items: int, seconds: float) -> dict:
    """A row's throughput and the peak memory since new_peak()."""
    from ..hardware import peak_rss

    return {"texts_per_s": n_items / seconds if seconds > 0 else None, "seconds": round(seconds, 3),
            "peak_rss": peak_rss()}


@contextmanager
def loaded(target: Target, *, n_ctx=None, n_threads=None, n_parallel=None, force=False):
    """The model, loaded (after the peak memory is reset) and closed after."""
    from .. import api

    new_peak()
    model = api.load(target.ref, n_ctx=n_ctx, n_threads=n_threads, n_parallel=n_parallel, force=force)
    with model:
        yield model


def in_flight(start: Callable, finish: Callable, items: Iterable, window: int,
              progress: Callable[[int], None] | None = None) -> list:
    """``finish(start(item))`` for each item, in order, with up to ``window`` started and not
    yet finished (the engine batches them); what is in flight is cancelled on an error."""
    pending: deque = deque()
    out = []
    try:
        for item in items:
            pending.append(start(item))
            if len(pending) >= max(1, window):
                out.append(finish(pending.popleft()))
                if progress:
                    progress(1)
        while pending:
            out.append(finish(pending.popleft()))
            if progress:
                progress(1)
    finally:
        for response in pending:
            response.cancel()
    return out


def save_rows(rows, targets_by_name: dict[str, Target]) -> None:
    from . import results

    for row in rows:
        target = targets_by_name[row.model]
        row.sha256 = row.sha256 or target.file_sha256()
        results.save(row.sha256, row)


class Steps:
    """Progress over a run's items: (done, total, label) to the caller's callback."""

    def __init__(self, progress, total: int):
        self.progress, self.total, self.done, self.label = progress, total, 0, ""

    def begin(self, label: str) -> None:
        self.label = label
        if self.progress:
            self.progress(self.done, self.total, label)

    def __call__(self, n: int = 1) -> None:
        self.done += n
        if self.progress:
            self.progress(min(self.done, self.total), self.total, self.label)


def predict_groups(model, groups, pool, items, start: Callable, finish: Callable, steps: Steps) -> tuple[list, float]:
    """(one result per item, seconds): for each few-shot group, ``start(model, item, examples)``
    -> a Response for each of its items, up to the model's slots in flight, ``finish(response)``
    -> the result. ``examples``: the group's (input, target) pairs from ``pool``."""
    import time

    out: list = [None] * len(items)
    seconds = 0.0
    for group in groups:
        examples = [(pool[i].input, pool[i].target) for i in group.examples]
        t0 = time.perf_counter()
        found = in_flight(lambda i: start(model, items[i], examples), finish, group.items, model.n_parallel, steps)
        seconds += time.perf_counter() - t0
        for i, value in zip(group.items, found):
            out[i] = value
    return out, seconds


def each_row(targets, groups: dict, *, steps: Steps, n_ctx=None, n_threads=None, n_parallel=None, force=False):
    """(target, model, shots, shot groups) for every model and shot count, each model loaded once;
    the peak memory starts anew at each."""
    for target in targets:
        with loaded(target, n_ctx=n_ctx, n_threads=n_threads, n_parallel=n_parallel, force=force) as model:
            for j, (n, shot_sets) in enumerate(groups.items()):
                if j:
                    new_peak()
                steps.begin(f"{target.name} {n}-shot")
                yield target, model, n, shot_sets
