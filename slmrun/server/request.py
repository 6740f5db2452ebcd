"""Reading a request's body: ``parse(request, Model)``, and the 400 that says what is wrong.

The body is read once and validated against a schema.py declaration with pydantic's own
JSON parser (which refuses invalid UTF-8, lone surrogates and nesting past 200 levels as
not JSON); the first of pydantic's errors becomes a ``RequestError``: the field's dotted
path as OpenAI's ``param`` and a sentence in the words the field's ``rule`` gives, or
pydantic's, shortened. Unknown fields are collected from the validated body (nested ones
too) and logged once per request.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, ValidationError, WrapValidator

from ..errors import InvalidArgumentError

log = logging.getLogger("slmrun.server")


class RequestError(InvalidArgumentError):
    """A request the API refuses as it stands: ``param`` names the field (OpenAI's
    ``error.param``), ``code`` is OpenAI's error code."""

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_value",
                 hint: str | None = None):
        super().__init__(message, hint=hint)
        self.param, self.code = param, code


def bad(param: str, rule: str, value=None) -> RequestError:
    """``param must be RULE, got VALUE`` (value shortened)."""
    return RequestError(f"{param} must be {rule}" + ("" if value is None else f", got {shown(value)}"), param=param)


def shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:64]}... ({len(text)} characters)"


class Said(ValueError):
    """Raised inside validation with the words to use: a field's rule (``as_rule``: "param
    must be TEXT, got ..."), or a whole message (a model name's refusal, with its hint)."""

    def __init__(self, text: str, *, hint: str | None = None, as_rule: bool = True):
        super().__init__(text)
        self.text, self.hint, self.as_rule = text, hint, as_rule


def rule(text: str, *, deep: bool = False):
    """The field's rule in words: replaces pydantic's errors for the field itself (all of
    them for a union, which would otherwise list one error per member); with ``deep``,
    errors inside the value (an item of a list) still name their own place."""
    def check(value, handler):
        try:
            return handler(value)
        except ValidationError as exc:
            if deep and all(e["loc"] for e in exc.errors()):
                raise
            raise Said(text) from None
    return WrapValidator(check)


_WORDS = {"bool_type": "true or false", "bool_parsing": "true or false", "int_type": "an integer",
          "int_parsing": "an integer", "int_from_float": "an integer", "float_type": "a number",
          "float_parsing": "a number", "finite_number": "a finite number", "string_type": "a string",
          "string_unicode": "a string", "list_type": "a list", "dict_type": "an object", "model_type": "an object",
          "model_attributes_type": "an object", "literal_error": "one of {expected}",
          "greater_than_equal": ">= {ge}", "greater_than": "> {gt}", "less_than_equal": "<= {le}",
          "less_than": "< {lt}", "too_short": "at least {min_length} item(s) long", "too_long": "at most {max_length} "
          "items long", "string_too_short": "at least {min_length} characters", "string_too_long": "at most "
          "{max_length} characters"}
_TYPE_ERRORS = {"bool_type", "int_type", "float_type", "string_type", "list_type", "dict_type", "model_type",
                "model_attributes_type", "bool_parsing", "int_parsing", "float_parsing", "int_from_float"}


def param_of(loc: tuple) -> str:
    """('messages', 0, 'content') -> "messages[0].content"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def request_error(exc: ValidationError) -> Exception:
    """The first of pydantic's errors, said as the API says it."""
    from .http import HTTPError

    e = exc.errors(include_url=False)[0]
    kind, ctx, loc = e["type"], e.get("ctx") or {}, e["loc"]
    if kind == "json_invalid":
        return HTTPError(400, f"the request body is not valid JSON: {ctx.get('error', e['msg'])}", code="invalid_json")
    if not loc:
        return HTTPError(400, "the request body must be a JSON object", code="invalid_json")
    param = param_of(loc)
    if kind == "missing":
        return RequestError(f"{param} is required", param=param, code="missing_required_parameter")
    said = ctx.get("error") if kind == "value_error" else None
    if isinstance(said, Said) and not said.as_rule:
        return RequestError(f"{param}: {said.text}", param=param, hint=said.hint)
    if isinstance(said, Said):
        rule_text = said.text
    elif kind in _WORDS:
        rule_text = _WORDS[kind].format(**ctx)
    else:  # pydantic's own sentence, as a rule
        rule_text = e["msg"][:1].lower() + e["msg"][1:]
    return RequestError(f"{param} must be {rule_text}, got {shown(e.get('input'))}", param=param,
                        code="invalid_type" if kind in _TYPE_ERRORS else "invalid_value")


def extras(body: BaseModel, prefix: str = "") -> list[str]:
    """The dotted names of every unknown field in ``body``, nested ones included."""
    out = [f"{prefix}{k}" for k in (body.model_extra or {})]
    for name, info in type(body).model_fields.items():
        value = getattr(body, name)
        key = f"{prefix}{info.alias or name}"
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, BaseModel):
                out += extras(item, f"{key}[{i}]." if isinstance(value, list) else f"{key}.")
    return out


def validate(model: type[BaseModel], data):
    """``data`` (JSON text or bytes, or already-parsed Python values) as ``model``."""
    try:
        if isinstance(data, (bytes, bytearray, str)):
            return model.model_validate_json(data)
        return model.model_validate(data)
    except ValidationError as exc:
        raise request_error(exc) from None


async def parse(request, model: type[BaseModel]):
    """The request's body as ``model``, or the 400 that says what is wrong with it."""
    from .http import HTTPError

    raw = await request.body()
    if not raw.strip():
        raise HTTPError(400, "the request body is empty: send a JSON object", code="invalid_json")
    body = validate(model, raw)
    unknown = extras(body)
    if unknown:
        log.info("%s %s: ignoring unknown field(s) %s", request.method, request.url.path,
                 ", ".join(n if len(n) <= 64 else n[:64] + "..." for n in unknown[:20]))
    return body
