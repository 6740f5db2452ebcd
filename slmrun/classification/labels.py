"""Labels and labelled examples as users give them: checked here, before any model runs.

Labels come as names (``["spam", "ham"]``, the CLI's ``--labels spam,ham``) or with a
description each (``{"spam": "unsolicited advertising", "ham": "a normal message"}``, the CLI's
``--labels 'spam=unsolicited advertising,ham=a normal message'`` or a labels file). The
embedding method embeds the description (else the name) as the label's prototype; the
generative method lists the descriptions in its instruction.

Examples are ``(text, label)`` pairs, ``{"text", "label"}`` dicts, or a JSON-lines file of
such dicts (``--train FILE.jsonl``). A file is read whole and checked before anything is
embedded: a malformed line is reported with its number and nothing is evaluated.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import InvalidArgumentError


@dataclass(frozen=True)
class LabelSet:
    """Label names in the order given, and a description for each (None: the name alone)."""

    names: tuple[str, ...]
    descriptions: tuple[str | None, ...]

    def prototype_text(self, i: int) -> str:
        """What the embedding method embeds for label ``i`` with no examples."""
        return self.descriptions[i] or self.names[i]

    @property
    def described(self) -> bool:
        return any(self.descriptions)

    def instruction(self) -> str:
        """The generative method's instruction when the labels carry descriptions."""
        parts = [f"{n} ({d})" if d else n for n, d in zip(self.names, self.descriptions)]
        return ("Classify the text. Answer with exactly one of these labels and nothing else: "
                + ", ".join(parts) + ".")


def label_set(labels) -> LabelSet:
    """``labels`` (a list of names, a {name: description} mapping, or a LabelSet) checked: at
    least two, no empty or repeated name, descriptions strings or None."""
    from ..structured import check_labels

    if isinstance(labels, LabelSet):
        return labels
    if isinstance(labels, Mapping):
        names = check_labels(list(labels))
        descriptions = []
        for name in names:
            d = labels[name]
            if d is not None and not isinstance(d, str):
                raise InvalidArgumentError(f"the description of label {name!r} must be a string, got {d!r}")
            descriptions.append(d.strip() or None if d else None)
        return LabelSet(tuple(names), tuple(descriptions))
    names = check_labels(labels)
    return LabelSet(tuple(names), (None,) * len(names))


def parse_labels(spec: str) -> LabelSet:
    """The CLI's ``--labels``: ``a,b,c`` or ``a=description,b=description`` (a description
    may not hold a comma: use a labels file for those)."""
    out: dict[str, str | None] = {}
    for item in spec.split(","):
        name, sep, description = item.partition("=")
        name = name.strip()
        if name in out:
            raise InvalidArgumentError(f"the label {name!r} is given twice", hint="List each label once.")
        out[name] = description.strip() if sep else None
    return label_set(out)


def read_labels_file(path: Path) -> LabelSet:
    """A labels file: JSON (a list of names, or an object {name: description}), or text with
    one label a line, ``name`` or ``name=description`` (``#`` starts a comment line)."""
    text = _read(path, "--labels-file")
    if path.suffix.lower() == ".json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidArgumentError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})",
                                       hint='Write a list ["a", "b"] or an object {"a": "description"}.') from None
        if not isinstance(value, (list, dict)):
            raise InvalidArgumentError(f"{path}: expected a list of labels or an object of descriptions")
        return label_set(value)
    out: dict[str, str | None] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, description = line.partition("=")
        name = name.strip()
        if not name:
            raise InvalidArgumentError(f"{path}, line {number}: no label name before '='")
        if name in out:
            raise InvalidArgumentError(f"{path}, line {number}: the label {name!r} is given twice")
        out[name] = description.strip() if sep else None
    return label_set(out)


def check_examples(examples: Iterable, labels: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """``examples`` as (text, label) pairs: each a pair or a {"text", "label"} dict, with a
    non-empty text and, when ``labels`` are given, one of them."""
    pairs = []
    for i, item in enumerate(examples if not isinstance(examples, Mapping) else examples.items()):
        if isinstance(item, Mapping):
            text, label = item.get("text"), item.get("label")
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            text, label = item
        else:
            raise InvalidArgumentError(f"example {i} must be a (text, label) pair or a {{'text', 'label'}} dict, "
                                       f"got {item!r}")
        _check_pair(text, label, labels, f"example {i}")
        pairs.append((text, label))
    return pairs


def read_examples(path: Path, labels: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """A JSON-lines file of {"text", "label"} objects, read whole and checked: the first bad
    line raises with its number (nothing is returned half)."""
    pairs = []
    for number, line in enumerate(_read(path, "--train").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidArgumentError(f"{where}: not valid JSON ({exc.msg})",
                                       hint='Each line must be one object: {"text": "...", "label": "..."}') from None
        if not isinstance(item, dict) or "text" not in item or "label" not in item:
            raise InvalidArgumentError(f"{where}: expected an object with \"text\" and \"label\", got {line.strip()[:60]}",
                                       hint='Each line must be one object: {"text": "...", "label": "..."}')
        _check_pair(item["text"], item["label"], labels, where)
        pairs.append((item["text"], item["label"]))
    if not pairs:
        raise InvalidArgumentError(f"{path} holds no examples", hint='Write one {"text", "label"} object a line.')
    return pairs


def _check_pair(text, label, labels, where: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgumentError(f"{where}: the text must be a non-empty string, got {text!r}")
    if not isinstance(label, str) or not label.strip():
        raise InvalidArgumentError(f"{where}: the label must be a non-empty string, got {label!r}")
    if labels is not None and label not in labels:
        raise InvalidArgumentError(f"{where}: the label {label!r} is not one of the labels {list(labels)}",
                                   hint="Add it to the labels, or leave out the examples of labels you do not want.")


def _read(path: Path, option: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read {option} {path}: {exc.strerror}", hint="Check the path.") from None
    except UnicodeDecodeError:
        raise InvalidArgumentError(f"{option} {path} is not UTF-8 text", hint="Save it as UTF-8.") from None
