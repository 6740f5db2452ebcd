"""Requests of both APIs to the engine's terms, and durations: pure functions, no I/O.

The bodies arrive validated (schema.py declares their types and ranges); what is left here
is what involves several fields or needs translating (OpenAI's response_format, Ollama's
options and keep_alive), refused with schema.RequestError naming the field. Each function
also takes a plain dict, validated first (for tests and Python callers).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from . import schema as S
from .messages import chat_messages
from .schema import RequestError, bad as _bad

FOREVER = math.inf

# The engine's sampling parameters under OpenAI's names (and llama-server's extensions).
OPENAI_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty",
                   "frequency_penalty", "seed", "dry_multiplier", "dry_base", "dry_allowed_length",
                   "dry_penalty_last_n", "speculative")
# Ollama's options that the engine samples with, by Ollama's name.
OLLAMA_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                   "repeat_penalty": "repeat_penalty", "presence_penalty": "presence_penalty",
                   "frequency_penalty": "frequency_penalty", "seed": "seed", "stop": "stop",
                   # not Ollama's: llama-server's DRY options, taken here too (Ollama would ignore them)
                   "dry_multiplier": "dry_multiplier", "dry_base": "dry_base",
                   "dry_allowed_length": "dry_allowed_length", "dry_penalty_last_n": "dry_penalty_last_n",
                   "speculative": "speculative"}  # slmrun's own: prompt-lookup drafts, "auto"/"on"/"off"


@dataclass
class Call:
    """One generation request, in the engine's terms."""

    model: str | None
    messages: list[dict] | None = None  # chat
    prompt: str | list[int] | None = None  # completion (text, or token ids)
    params: dict = field(default_factory=dict)  # for Model.chat / complete / generate
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # None: not asked; else how many alternatives per token
    raw: bool = False  # Ollama generate: no chat template
    echo: bool = False  # OpenAI completions: the prompt before the reply
    keep_alive: float | None = None  # seconds; None: the server's default
    response_format: dict | None = None  # {"type": "json_object" | "json_schema", "schema": ...}
    tools: list[dict] | None = None  # OpenAI-style function tools
    tool_choice: object = None
    context: list[int] | None = None  # Ollama generate's deprecated conversation tokens


# --- durations (Ollama's keep_alive) --------------------------------------------------

_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(value) -> float:
    """Ollama's keep_alive in seconds: a number of seconds, or a Go duration ("5m", "1h30m",
    "300ms", "0"); any negative value means forever (math.inf)."""
    if isinstance(value, bool) or value is None:
        raise _bad("keep_alive", 'a number of seconds or a duration such as "5m"', value)
    if isinstance(value, (int, float)):
        if value != value:
            raise _bad("keep_alive", "a number", value)
        return FOREVER if value < 0 else float(value)
    if not isinstance(value, str):
        raise _bad("keep_alive", 'a number of seconds or a duration such as "5m"', value)
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    try:  # a bare number: seconds (Go itself only takes "0"; Ollama's clients send numbers as text too)
        seconds = float(body)
    except ValueError:
        seconds = None
    if seconds is None:
        pos, seconds = 0, 0.0
        for m in _GO_PART.finditer(body):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _GO_UNITS[m.group(2)]
            pos = m.end()
        if pos != len(body) or not body:
            raise RequestError(f"keep_alive: cannot read {S.shown(value)} as a duration", param="keep_alive",
                               hint='Use seconds (300) or a duration: "5m", "1h30m", "0", "-1" (forever).')
    if seconds != seconds:
        raise _bad("keep_alive", "a number", value)
    return FOREVER if sign < 0 and seconds > 0 else seconds


def format_duration(seconds: float) -> str:
    if seconds == FOREVER:
        return "forever"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


# --- OpenAI -----------------------------------------------------------------------------

def _as(model: type[S.Body], body) -> S.Body:
    return body if isinstance(body, model) else S.validate(model, body)


def _openai_common(req: S.OpenAIRequest, call: Call) -> None:
    if req.n not in (None, 1):
        raise RequestError(f"n must be 1, got {req.n!r}: one choice per request is served", param="n",
                           hint="Send several requests (they are batched together).")
    if req.best_of not in (None, 1):
        raise _bad("best_of", "1", req.best_of)
    call.stream = bool(req.stream)
    call.include_usage = bool(req.stream_options and req.stream_options.include_usage)
    # None: to the end of the context, as OpenAI's default
    call.params["max_tokens"] = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    for name in OPENAI_SAMPLING:
        if getattr(req, name) is not None:
            call.params[name] = getattr(req, name)
    if req.stop is not None:
        call.params["stop"] = req.stop
    if req.logit_bias:
        raise RequestError("logit_bias is not supported", param="logit_bias", hint="Leave it out.")
    if req.suffix:
        raise RequestError("suffix (fill-in-the-middle) is not supported", param="suffix", hint="Leave it out.")


def response_format(value: S.ResponseFormat | None) -> dict | None:
    """OpenAI's response_format -> {"type": "json_object"} or {"type": "json_schema", "schema", "name"}."""
    if value is None or value.type == "text":
        return None
    if value.type == "json_object":
        return {"type": "json_object"}
    spec = value.json_schema
    if spec is None:
        raise _bad("response_format.json_schema", 'an object with "name" and "schema"')
    return {"type": "json_schema", "schema": spec.schema_ or {}, "name": spec.name, "strict": bool(spec.strict)}


def tools_field(tools: list[S.Tool] | None) -> list[dict] | None:
    """OpenAI's (and Ollama's) tools -> [{"name", "description", "parameters"}]."""
    if not tools:
        return None
    out = [{"name": t.function.name, "description": t.function.description or "",
            "parameters": {"type": "object", "properties": {}} if t.function.parameters is None
            else t.function.parameters} for t in tools]
    if len({t["name"] for t in out}) != len(out):
        raise RequestError("tools: two tools have the same name", param="tools")
    return out


def tool_choice_field(choice, tools) -> object:
    """"auto" (default), "none", "required", or {"type": "function", "function": {"name"}} -> a name."""
    if choice is None:
        return "auto" if tools else "none"
    if isinstance(choice, str):
        if choice == "required" and not tools:
            raise RequestError('tool_choice is "required" but no tools were given', param="tool_choice")
        return choice
    name = choice.function.name
    if not tools or name not in {t["name"] for t in tools}:
        raise RequestError(f"tool_choice names {S.shown(name)}, which is not among the tools", param="tool_choice")
    return {"name": name}


def openai_chat(body) -> Call:
    req = _as(S.ChatCompletionRequest, body)
    call = Call(model=req.model or None, messages=chat_messages(req.messages, api="openai"))
    _openai_common(req, call)
    if req.top_logprobs is not None and not req.logprobs:
        raise RequestError("top_logprobs needs logprobs: true", param="top_logprobs")
    if req.logprobs:
        call.logprobs = req.top_logprobs or 0
        call.params.update(logprobs=True, top_logprobs=call.logprobs)
    call.response_format = response_format(req.response_format)
    call.tools = tools_field(req.tools)
    call.tool_choice = tool_choice_field(req.tool_choice, call.tools)
    if call.tool_choice == "none":
        call.tools = None
    if call.tools and call.response_format:
        raise RequestError("tools and response_format cannot be combined in one request", param="response_format")
    return call


def openai_completion(body) -> Call:
    req = _as(S.CompletionRequest, body)
    prompt = req.prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # one prompt in a list (what some clients always send)
    if isinstance(prompt, list) and (not prompt or not all(isinstance(t, int) for t in prompt)):
        raise _bad("prompt", "a string, or a list of token ids (one prompt per request)")
    call = Call(model=req.model or None, prompt=prompt)
    _openai_common(req, call)
    if req.logprobs is not None:
        call.logprobs = req.logprobs
        call.params.update(logprobs=True, top_logprobs=req.logprobs)
    call.echo = bool(req.echo)
    call.response_format = response_format(req.response_format)
    return call


# --- Ollama -------------------------------------------------------------------------------

def ollama_options(options: S.Options | None) -> tuple[dict, list[str]]:
    """Ollama's options -> (engine params, the declared options that are ignored here).
    num_predict < 0: to the end of the context. (Unknown options are logged by schema.parse.)"""
    if options is None:
        return {}, []
    params, ignored = {}, []
    for key in sorted(options.model_fields_set):
        value = getattr(options, key)
        if key == "num_predict":
            if value is not None:
                params["max_tokens"] = None if value < 0 else value
        elif key in OLLAMA_SAMPLING:
            if value is not None:
                params[OLLAMA_SAMPLING[key]] = value
        else:
            ignored.append(key)
    return params, ignored


def ollama_format(value) -> dict | None:
    """Ollama's format: "json", a JSON Schema object, or ""/null for free text."""
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    return {"type": "json_schema", "schema": value, "name": None, "strict": True}


def _ollama_common(req: S.OllamaRequest, call: Call) -> list[str]:
    call.stream = req.stream is not False
    if req.keep_alive is not None:
        call.keep_alive = parse_duration(req.keep_alive)
    call.params["max_tokens"] = None  # Ollama's num_predict default: -1, to the context
    params, ignored = ollama_options(req.options)
    call.params.update(params)
    call.response_format = ollama_format(req.format)
    if req.think not in (None, False):
        raise RequestError(f"think={req.think!r}: the models served here do not think before answering",
                           param="think", hint="Leave think out (or false).")
    return ignored


def ollama_chat(body) -> tuple[Call, list[str]]:
    req = _as(S.OllamaChatRequest, body)
    call = Call(model=req.model or None, messages=chat_messages(req.messages, api="ollama"))
    ignored = _ollama_common(req, call)
    call.tools = tools_field(req.tools)
    call.tool_choice = "auto" if call.tools else "none"
    if call.tools and call.response_format:
        raise RequestError("tools and format cannot be combined in one request", param="format")
    return call, ignored


def ollama_generate(body) -> tuple[Call, list[str]]:
    req = _as(S.GenerateRequest, body)
    prompt = req.prompt or ""
    for key, why in (("suffix", "fill-in-the-middle (suffix) is not supported"),
                     ("images", "images are not supported: the models served here read text only"),
                     ("template", "template overrides are not supported (the model's own chat template is used)")):
        if getattr(req, key):
            raise RequestError(why, param=key,
                               hint="Leave it out; for a prompt you format yourself send raw: true.")
    raw = bool(req.raw)
    call = Call(model=req.model or None, prompt=prompt, raw=raw)
    if not raw:
        call.messages = ([{"role": "system", "content": req.system}] if req.system else []) + \
            ([{"role": "user", "content": prompt}] if prompt else [])
    if req.context:
        call.context = req.context
    ignored = _ollama_common(req, call)
    return call, ignored


def model_ref(name: str) -> str:
    """Ollama's tag ":latest" means the default quant: the name alone."""
    return name[:-len(":latest")] if name.lower().endswith(":latest") else name
