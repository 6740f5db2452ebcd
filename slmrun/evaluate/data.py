"""The user's evaluation data, read and checked whole before any model loads.

    classify   {"text": ..., "label": ...}        one JSON object a line (``--data``, ``--train``)
    extract    {"text": ..., "expected": ...}     ``expected``: any JSON value (usually an object)
    generate   {"prompt": ..., "reference": ...}  ``reference``: a string, or a list of strings

Other keys on a line are ignored (a ``split`` column, an id). A bad line raises
InvalidArgumentError naming the file and the line's number, and nothing is evaluated; so does
a file with no items. A label may be a string or an integer (read as its digits).

Few-shot examples (``shot_groups``): N per label for classify, N in all for the other tasks,
taken in file order from ``--train`` or, without it, from the data itself, where an item is
never its own example: an item that is one of the first N takes the next one of its label in
its place. So every item is evaluated at every N, and zero-shot and few-shot compare on the
same items. Pure functions of lists, tested from tables.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import InvalidArgumentError

TASK_FIELDS = {"classify": ("text", "label"), "extract": ("text", "expected"), "generate": ("prompt", "reference")}
_EXAMPLE = {"classify": '{"text": "Free money!!!", "label": "spam"}',
            "extract": '{"text": "Alice is 31.", "expected": {"name": "Alice", "age": 31}}',
            "generate": '{"prompt": "Say hello in French.", "reference": "Bonjour !"}'}


@dataclass(frozen=True)
class Item:
    """One line of a data file: its fields, and where it came from (for messages)."""

    where: str  # "FILE, line 7" or "item 3"
    input: str  # text or prompt
    target: object  # label (str), expected (JSON value) or references (tuple of str)


@dataclass(frozen=True)
class Data:
    items: tuple[Item, ...]
    name: str  # the file's name, or "items"
    sha256: str  # of the file's bytes, or of the items as JSON


def read_data(source, task: str, option: str = "--data") -> Data:
    """``source`` (a path to a JSON-lines file, or a list of dicts) checked for ``task``."""
    fields = TASK_FIELDS[task]
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        raw = _read_bytes(path, option)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidArgumentError(f"{option} {path.name} is not UTF-8 text (byte {exc.start})",
                                       hint="Save it as UTF-8.") from None
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path.name}, line {number}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidArgumentError(f"{where}: not valid JSON ({exc.msg}, column {exc.colno})",
                                           hint=f"Each line must be one JSON object, like {_EXAMPLE[task]}") from None
            rows.append((where, value))
        name, digest = path.name, hashlib.sha256(raw).hexdigest()
    elif isinstance(source, (list, tuple)):
        rows = [(f"item {i}", value) for i, value in enumerate(source)]
        name = "items"
        digest = hashlib.sha256(json.dumps(list(source), sort_keys=True, default=str).encode()).hexdigest()
    else:
        raise InvalidArgumentError(f"{option} must be a path to a JSON-lines file or a list of objects, "
                                   f"got {type(source).__name__}")
    items = tuple(_item(where, value, task, fields) for where, value in rows)
    if not items:
        raise InvalidArgumentError(f"{option} {name} holds no items",
                                   hint=f"Write one JSON object a line, like {_EXAMPLE[task]}")
    return Data(items, name, digest)


def _read_bytes(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        problem = "no such file" if isinstance(exc, FileNotFoundError) else (exc.strerror or str(exc))
        raise InvalidArgumentError(f"cannot read {option} {path}: {problem}", hint="Check the path.") from None


def _item(where: str, value, task: str, fields: tuple[str, str]) -> Item:
    key_in, key_target = fields
    if not isinstance(value, dict) or key_in not in value or key_target not in value:
        shown = json.dumps(value, ensure_ascii=False)[:60] if not isinstance(value, dict) else \
            f"an object with {', '.join(map(repr, value)) or 'no keys'}"
        raise InvalidArgumentError(f'{where}: expected an object with "{key_in}" and "{key_target}", got {shown}',
                                   hint=f"Each line must be one JSON object, like {_EXAMPLE[task]}")
    text = value[key_in]
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgumentError(f'{where}: "{key_in}" must be a non-empty string, got {text!r}',
                                   hint=f"Give every line some text, like {_EXAMPLE[task]}")
    target = value[key_target]
    if task == "classify":
        if isinstance(target, int) and not isinstance(target, bool):
            target = str(target)
        if not isinstance(target, str) or not target.strip():
            raise InvalidArgumentError(f'{where}: "label" must be a non-empty string, got {target!r}',
                                       hint='Write each label as a string: "label": "spam".')
    elif task == "generate":
        refs = [target] if isinstance(target, str) else target
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r.strip() for r in refs):
            raise InvalidArgumentError(f'{where}: "reference" must be a non-empty string or a list of them, '
                                       f"got {json.dumps(target, ensure_ascii=False)[:60]}",
                                       hint='Write "reference": "the expected reply", or a list of acceptable ones.')
        target = tuple(refs)
    return Item(where, text, target)


def read_schema(source) -> object:
    """``--schema``: a path to a JSON Schema file (or the schema as a dict, JSON text or a
    pydantic model class), parsed; not compiled here (structured.constraint_spec does that)."""
    if isinstance(source, dict):
        return source
    if isinstance(source, type) and hasattr(source, "model_json_schema"):
        return source.model_json_schema()
    if isinstance(source, Path) or (isinstance(source, str) and not source.lstrip().startswith("{")):
        path = Path(source).expanduser()
        text, name = _read_bytes(path, "--schema").decode("utf-8", "replace"), path.name
    else:
        text, name = str(source), "the schema"
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"--schema {name} is not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
                                   hint='Give a JSON Schema file, like {"type": "object", "properties": '
                                        '{"name": {"type": "string"}}}') from None


# --- labels ---------------------------------------------------------------------------------------

def check_labels(names: Sequence[str], data: Data, option: str = "--data") -> None:
    """Every label in ``data`` is one of ``names`` (the user's --labels); else name the missing
    ones and where each first appears."""
    known = set(names)
    missing: dict[str, str] = {}
    for item in data.items:
        if item.target not in known:
            missing.setdefault(item.target, item.where)
    if missing:
        listed = ", ".join(f"{label!r} ({where})" for label, where in missing.items())
        raise InvalidArgumentError(f"{option} has labels that --labels leaves out: {listed}",
                                   hint=f"Add them to --labels ({','.join(list(names) + list(missing))}), or "
                                        "leave --labels out to take the labels from the data.")


def labels_in(*datas: Data) -> list[str]:
    """The labels of the data, in order of first appearance."""
    return list(dict.fromkeys(item.target for d in datas if d is not None for item in d.items))


# --- few-shot examples ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ShotGroup:
    """Items that share one prompt's examples: ``examples`` are indices into the pool (the
    train items, or the data's), in prompt order; ``items`` indices into the data."""

    examples: tuple[int, ...]
    items: tuple[int, ...]


def parse_shots(values) -> list[int]:
    """``--shots 0,3`` (or repeated): distinct counts >= 0 in the order given; default [0]."""
    out: list[int] = []
    for value in values or [0]:
        for part in str(value).split(","):
            try:
                n = int(part.strip())
            except ValueError:
                raise InvalidArgumentError(f"--shots {value!r} is not a whole number (or a list: 0,3)") from None
            if n < 0:
                raise InvalidArgumentError(f"--shots must be 0 or more, got {n}")
            if n not in out:
                out.append(n)
    return out


def shot_groups(n: int, pool_keys: Sequence, key_order: Sequence, *, n_items: int | None = None,
                source: str = "--train", unit: str = "examples of each label") -> list[ShotGroup]:
    """The few-shot prompts for ``n`` examples per key (a label; one key None for tasks
    without labels). ``n_items`` None: the pool *is* the data (examples from the items
    themselves, never an item's own); else the pool is a separate train set. Examples are
    the first ``n`` of each key in pool order, interleaved key by key (a, b, c, a, b, c) so no
    label always comes last. Raises when a key has too few examples."""
    from_data = n_items is None
    total = len(pool_keys) if from_data else n_items
    if n == 0:
        return [ShotGroup((), tuple(range(total)))]
    by_key = {k: [i for i, pk in enumerate(pool_keys) if pk == k] for k in key_order}
    for k in key_order:
        have = len(by_key[k]) - (1 if from_data and by_key[k] else 0)
        if have < n:
            most = min(len(v) - (1 if from_data and v else 0) for v in by_key.values())
            what = "" if k is None else f" of {k!r}"
            raise InvalidArgumentError(
                f"--shots {n} needs {n} {unit}{' besides the item evaluated' if from_data else ''}; "
                f"{source} has {have}{what}",
                hint=(f"Use --shots {max(most, 0)} or fewer" + (", or give more examples with --train FILE."
                                                                 if from_data else ", or add examples to --train.")))
    chosen = {k: by_key[k][:n] for k in key_order}

    def interleave(sets) -> tuple[int, ...]:
        return tuple(sets[k][j] for j in range(n) for k in key_order)

    if not from_data:
        return [ShotGroup(interleave(chosen), tuple(range(total)))]
    groups: dict[tuple[int, ...], list[int]] = {interleave(chosen): []}
    for i in range(total):
        k = pool_keys[i]
        if i in chosen[k]:  # its own example: the next of its label takes its place
            own = list(chosen[k])
            own[own.index(i)] = by_key[k][n]
            key = interleave({**chosen, k: own})
        else:
            key = interleave(chosen)
        groups.setdefault(key, []).append(i)
    return [ShotGroup(ex, tuple(items)) for ex, items in groups.items() if items]
