"""Checking what came out: the text of a constrained generation as a validated value.

The grammar already enforces the schema token by token; the final check with the
``jsonschema`` package is a second, independent one, and the only one for text that was not
generated under a constraint (a caller's own, or a model's free answer). It is a runtime
dependency for that reason: ``response.json()`` must never hand back, as a success, a value
that does not validate.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import StructuredOutputError
from .spec import ConstraintSpec, constraint_spec, one_line

_SHOWN = 80  # characters of the output quoted in an error


def parse_json(text: str, schema: Any = None, *, finish_reason: str | None = None) -> Any:
    """The JSON value in ``text``, validated against ``schema`` (a ConstraintSpec, or anything
    ``constraint_spec(json_schema=...)`` takes; None: any JSON).

    ``finish_reason="length"`` means max_tokens ran out: the value is refused even if it parses,
    because a cut can leave valid but wrong JSON (a number 314 cut to 31). A generation whose
    grammar completed reports "stop" (the engine checks ``Constraint.is_stopped()``).
    Raises StructuredOutputError, saying which of the three went wrong.
    """
    if finish_reason == "length":
        raise StructuredOutputError(
            f"the output stopped at max_tokens before the value was complete ({len(text)} characters: "
            f"{_excerpt(text)})")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StructuredOutputError(f"the output is not valid JSON ({exc}): {_excerpt(text)}",
                                    hint="Generate with json_schema= (or format json) so the output "
                                         "is constrained to JSON.") from None
    spec = schema if isinstance(schema, ConstraintSpec) or schema is None else constraint_spec(json_schema=schema)
    if spec is not None and spec.schema is not None:
        validate_value(value, spec)
    return value


def validate_value(value: Any, spec: ConstraintSpec) -> None:
    """Raise StructuredOutputError unless ``value`` validates against the spec's JSON Schema."""
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator(spec).iter_errors(value))
    if error is not None:
        raise StructuredOutputError(
            f"the output does not validate against the schema at {error.json_path}: "
            f"{one_line(error.message)}",
            hint="Generate with this json_schema= so decoding is constrained to it.")


def is_valid(value: Any, spec: ConstraintSpec) -> bool:
    return _validator(spec).is_valid(value)


def _validator(spec: ConstraintSpec):
    if not spec._validator:
        import jsonschema
        from jsonschema.validators import validator_for

        cls = validator_for(spec.schema, default=jsonschema.Draft202012Validator)
        # Formats are checked where jsonschema can (email, date, ipv4...): llguidance enforces them too.
        spec._validator.append(cls(spec.schema, format_checker=cls.FORMAT_CHECKER))
    return spec._validator[0]


def _excerpt(text: str) -> str:
    text = text if len(text) <= _SHOWN else text[:_SHOWN // 2] + " ... " + text[-_SHOWN // 2:]
    return json.dumps(text, ensure_ascii=False)
