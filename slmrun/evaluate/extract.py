"""``slmrun eval --task extract --schema S``: exact match and per-field F1 of ``Model.extract``
(decoding constrained to the schema, greedy) on the user's {"text", "expected"} data, zero-shot
and with examples (earlier turns whose answers are the expected values as JSON).

An output cut at ``max_tokens`` before its value was complete counts as predicting nothing
(``n_invalid`` says how many); slmrun never returns an invalid value, so there is no other
kind of failure to count. The figures are evaluate.metrics.extract_figures.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable, Sequence

from ..errors import InvalidArgumentError, StructuredOutputError
from .data import parse_shots, read_data, read_schema, shot_groups
from .results import EvalRow
from .runs import Steps, each_row, predict_groups, require_generative, resolve_targets, save_rows, usage


def check_max_tokens(max_tokens) -> int:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise InvalidArgumentError(f"max_tokens must be a whole number of 1 or more, got {max_tokens!r}")
    return max_tokens


def few_shot_groups(shots, data, train):
    """{n: [ShotGroup]} for tasks without labels: n examples in all."""
    pool = (train or data).items
    source = f"--train {train.name}" if train else f"--data {data.name}"
    return {n: shot_groups(n, [None] * len(pool), [None], n_items=len(data.items) if train else None,
                           source=source, unit="examples") for n in parse_shots(shots)}


def evaluate_extract(models: Sequence[str], data, *, schema, shots=(0,), train=None, instruction: str | None = None,
                     max_tokens: int = 512, n_ctx: int | None = None, n_threads: int | None = None,
                     n_parallel: int | None = None, force: bool = False,
                     progress: Callable[[int, int, str], None] | None = None, save: bool = True) -> list[EvalRow]:
    """Extract ``schema``'s fields from every item of ``data`` ({"text", "expected"} lines, or
    a list of such dicts) with each model, at each count of ``shots`` examples (from ``train``,
    else from the data, never an item's own). ``schema``: a JSON Schema file, or the schema as
    a dict. Everything, the schema's compilation included, is checked before a model loads.
    One EvalRow per model and shot count (method: "chat" or "completion", as the prompt was
    given); each kept per model file and task unless ``save=False``."""
    from ..structured import constraint_spec, is_valid
    from ..runtime.tasks import extract_request
    from .metrics import MISSING, extract_figures, fields_of

    d = read_data(data, "extract")
    tr = read_data(train, "extract", "--train") if train is not None else None
    schema_value = read_schema(schema)
    spec = constraint_spec(json_schema=schema_value)  # InvalidSchemaError / UnsupportedSchemaError now
    for item in d.items + (tr.items if tr else ()):
        if not is_valid(item.target, spec):  # no output could ever match it
            raise InvalidArgumentError(f'{item.where}: "expected" does not validate against the schema: '
                                       f"{json.dumps(item.target, ensure_ascii=False)[:80]}",
                                       hint="Correct the expected value or the schema; outputs always validate.")
    max_tokens = check_max_tokens(max_tokens)
    groups = few_shot_groups(shots, d, tr)
    targets = resolve_targets(list(models))
    require_generative(targets, "extract")
    expected = [it.target for it in d.items]
    fields = fields_of(schema_value, expected)
    schema_sha = hashlib.sha256(json.dumps(schema_value, sort_keys=True).encode()).hexdigest()
    meta = {"data": d.name, "data_sha256": d.sha256, "train": tr.name if tr else None,
            "train_sha256": tr.sha256 if tr else None, "schema_sha256": schema_sha, "instruction": instruction,
            "max_tokens": max_tokens, "n_items": len(d.items)}

    def start(model, item, examples):
        return extract_request(model, item.input, schema_value, instruction=instruction, max_tokens=max_tokens,
                               examples=examples)

    def finish(response):
        try:
            return response.json()
        except StructuredOutputError:  # cut at max_tokens: predicts nothing
            return MISSING

    steps = Steps(progress, len(targets) * len(groups) * len(d.items))
    rows = []
    by_name = {t.name: t for t in targets}
    for target, model, n, shot_sets in each_row(targets, groups, steps=steps, n_ctx=n_ctx, n_threads=n_threads,
                                                 n_parallel=n_parallel, force=force):
        predicted, seconds = predict_groups(model, shot_sets, (tr or d).items, d.items, start, finish, steps)
        row = EvalRow(model=target.name, method="chat" if model.has_chat_format else "completion", task="extract",
                      figures={**extract_figures(expected, predicted, fields), **usage(len(d.items), seconds)},
                      meta={**meta, "shots": n})
        if save:
            save_rows([row], by_name)
        rows.append(row)
    return rows
