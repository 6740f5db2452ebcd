"""What to constrain to: JSON Schemas, grammars and "any JSON object", checked and compiled once.

``constraint_spec()`` turns the user's input into a ``ConstraintSpec``: an llguidance grammar
that is known to compile, plus the JSON Schema it came from (for validating the final text).
Everything that can be refused without a model is refused here, before any generation:
text that is not JSON, a schema that fails the JSON Schema metaschema, a feature llguidance
cannot enforce, a grammar that does not parse.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import (InvalidArgumentError, InvalidGrammarError, InvalidSchemaError,
                      UnsupportedSchemaError)

# How generated JSON is laid out. Fixed separators rather than llguidance's default of any
# whitespace: a small model given free whitespace can emit newlines until max_tokens runs
# out, and ", " / ": " (Python's json.dumps style) is the single-line JSON models saw most.
# Tried on SmolLM2-135M with "Alice is 31 and lives in Paris.": free whitespace gave a
# pretty-printed object (25 tokens), compact ","/":" gave the wrong age (23), this gave
# {"name": "Alice", "age": 31, "city": "Paris"} in 19 tokens, 9 of them forced.
# A schema's own "x-guidance" layout options replace these.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

_MESSAGE_LIMIT = 300
# Objects and arrays within objects and arrays, at most: jsonschema checks a schema (and
# validates a value) recursively, and ~190 levels exhaust Python's stack (RecursionError,
# measured with a properties-in-properties schema). Real schemas nest a few levels.
MAX_SCHEMA_DEPTH = 100


@dataclass(frozen=True, eq=False)
class ConstraintSpec:
    """A compiled, checked constraint; cached, immutable, shared by every sequence using it.

    ``grammar`` is what llguidance's matcher takes; ``schema`` the JSON Schema the output is
    validated against (None for a plain grammar); ``key`` identifies the spec in caches.
    """

    kind: str  # "json_schema", "json_object" or "grammar"
    grammar: str
    schema: dict | None
    key: str
    warnings: tuple[str, ...] = ()
    _validator: list = field(default_factory=list, repr=False)  # the jsonschema validator, built once

    @property
    def is_json(self) -> bool:
        return self.schema is not None

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other) -> bool:
        return isinstance(other, ConstraintSpec) and other.key == self.key


def constraint_spec(*, json_schema: Any = None, grammar: str | None = None,
                    json_object: bool = False) -> ConstraintSpec | None:
    """The spec for at most one of: ``json_schema`` (a dict, a JSON string, a bool schema, or a
    pydantic model class), ``grammar`` (llguidance's Lark-like syntax, or llama.cpp GBNF) or
    ``json_object=True`` (any JSON object: Ollama's ``format: "json"``, OpenAI's json_object).
    None when nothing is asked, so callers can pass their keyword arguments straight through.

    Raises InvalidSchemaError, InvalidGrammarError or UnsupportedSchemaError; cached, so the
    same schema costs its compile time once.
    """
    given = [name for name, value in (("json_schema", json_schema is not None), ("grammar", grammar is not None),
                                      ("json_object", bool(json_object))) if value]
    if len(given) > 1:
        raise InvalidArgumentError(f"{' and '.join(given)} were both given; a generation takes one constraint",
                                   hint="Pass only one of json_schema=, grammar= or json_object=True.")
    if json_schema is not None:
        return _json_schema_spec("json_schema", _canonical_schema(json_schema))
    if grammar is not None:
        if not isinstance(grammar, str):
            raise InvalidGrammarError(f"a grammar must be text, got {type(grammar).__name__}")
        return _grammar_spec(grammar)
    if json_object:
        return _json_schema_spec("json_object", '{"type": "object"}')
    return None


def _canonical_schema(value: Any) -> str:
    """The schema as canonical JSON text (the cache key), from whatever the caller gave."""
    if isinstance(value, type) and hasattr(value, "model_json_schema"):  # a pydantic model class
        value = value.model_json_schema()
    elif isinstance(value, (str, bytes, bytearray)):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidSchemaError(f"the JSON Schema is not valid JSON: {exc}") from None
    if isinstance(value, bool):
        value = {} if value else {"not": {}}  # the two boolean schemas, as objects llguidance takes
    if not isinstance(value, dict):
        raise InvalidSchemaError(
            f"a JSON Schema is an object, got {type(value).__name__}",
            hint="Pass a dict, a JSON string of an object, or a pydantic model class.")
    if nesting(value) > MAX_SCHEMA_DEPTH:
        raise UnsupportedSchemaError(f"the JSON Schema nests objects and arrays more than {MAX_SCHEMA_DEPTH} levels deep",
                                     hint="Flatten it, or name repeated parts under $defs and point $ref at them.")
    try:
        # Key order kept: llguidance generates properties in the order the schema lists them.
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidSchemaError(f"the JSON Schema cannot be written as JSON: {exc}") from None


def nesting(value: Any) -> int:
    """How deep objects and arrays nest in ``value`` (0 for a scalar); no recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


@functools.lru_cache(maxsize=128)
def _json_schema_spec(kind: str, text: str) -> ConstraintSpec:
    schema = json.loads(text)
    if schema == {"not": {}}:
        raise UnsupportedSchemaError("the schema is `false`: no value satisfies it, so nothing can be generated",
                                     hint="Use a schema that some value satisfies.")
    _check_metaschema(schema)
    import llguidance

    # A schema that sets any layout option of its own in "x-guidance" gets none of ours
    # (merged, our separators would still be required around its flexible whitespace).
    own = schema.get("x-guidance")
    own_layout = isinstance(own, dict) and any(k in own for k in (*JSON_LAYOUT, "whitespace_pattern"))
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.loads(text),
                                                                defaults=None if own_layout else JSON_LAYOUT)
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. an integer past 64 bits: "not JSON serializable"
        raise UnsupportedSchemaError(f"cannot enforce this JSON Schema: {one_line(str(exc))}") from None
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if failed:
        detail = one_line(messages[0])
        hint = None
        if "oneOf" in detail:
            hint = ("Use anyOf if the branches cannot both match, or add \"x-guidance\": {\"coerce_one_of\": true} "
                    "to the schema to generate as if anyOf (the output is still validated against oneOf).")
        elif "retrieving it failed" in detail:
            hint = ("slmrun does not fetch schemas over the network: put the referenced schema "
                    "under $defs and point the $ref at it (\"#/$defs/NAME\").")
        raise UnsupportedSchemaError(f"cannot enforce this JSON Schema: {detail}", hint=hint)
    return ConstraintSpec(kind=kind, grammar=grammar, schema=schema, key=f"{kind}:{text}",
                          warnings=tuple(one_line(m) for m in messages))


def _check_metaschema(schema: dict) -> None:
    import jsonschema
    from jsonschema.validators import validator_for

    cls = validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidSchemaError(
            f"not a valid JSON Schema ({_draft_name(cls)}) at {exc.json_path}: {one_line(exc.message)}") from None


def _draft_name(cls) -> str:
    draft = cls.__name__.replace("Validator", "").replace("Draft", "")
    return "draft " + {"202012": "2020-12", "201909": "2019-09"}.get(draft, draft)


@functools.lru_cache(maxsize=64)
def _grammar_spec(text: str) -> ConstraintSpec:
    import llguidance
    from llguidance.gbnf_to_lark import any_to_lark, is_lark_syntax

    if not text.strip():
        raise InvalidGrammarError("the grammar is empty")
    try:
        lark = any_to_lark(text)
    except Exception as exc:  # the converter raises plain Exception for some errors
        raise InvalidGrammarError(
            f"the grammar is neither Lark (no `start:` rule) nor valid GBNF: {one_line(str(exc))}") from None
    grammar = llguidance.LLMatcher.grammar_from_lark(lark)
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if failed:
        syntax = "Lark" if is_lark_syntax(text) else "GBNF (converted to Lark)"
        raise InvalidGrammarError(f"the {syntax} grammar does not compile: {one_line(messages[0])}")
    return ConstraintSpec(kind="grammar", grammar=grammar, schema=None, key=f"grammar:{text}",
                          warnings=tuple(one_line(m) for m in messages))


def one_line(message: str) -> str:
    """llguidance's messages can span lines (a regex with a caret under it, a grammar excerpt):
    keep what names the problem, on one line, short."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    if lines[0] == "regex parse error:" and len(lines) >= 2:
        cause = next((ln[len("error:"):].strip() for ln in reversed(lines) if ln.startswith("error:")), lines[-1])
        text = f"the regex {lines[1]}: {cause}"
    else:
        text = lines[0]
    text = re.sub(r"\s+", " ", text)
    return text if len(text) <= _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT - 3] + "..."
