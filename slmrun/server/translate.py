"""Requests of both APIs to the engine's terms, and durations: pure functions, no I/O.

OpenAI's and Ollama's bodies are checked here, before a model is touched, and every
problem is an InvalidArgumentError naming the field (the routes turn it into a 400 in
each API's error shape). Sampling values themselves are checked once, by the runtime's
``make_params``, so both APIs give the same messages for them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..errors import InvalidArgumentError
from .messages import bad as _bad, chat_messages

FOREVER = math.inf

# The engine's sampling parameters under OpenAI's names (and llama-server's extensions).
OPENAI_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty",
                   "frequency_penalty", "seed")
# Ollama's options that the engine samples with, by Ollama's name.
OLLAMA_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                   "repeat_penalty": "repeat_penalty", "presence_penalty": "presence_penalty",
                   "frequency_penalty": "frequency_penalty", "seed": "seed", "stop": "stop",
                   "repeat_last_n": "repeat_last_n"}
# Ollama's options that choose how a model is loaded: here the server's command line does.
OLLAMA_LOAD_TIME = frozenset({"num_ctx", "num_batch", "num_thread", "num_gpu", "main_gpu", "use_mmap", "use_mlock",
                              "numa", "low_vram", "vocab_only", "f16_kv", "num_keep", "logits_all"})


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
    defaulted: set = field(default_factory=set)  # params set by the API's defaults: a created model's win


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
            raise InvalidArgumentError(f"keep_alive: cannot read {value!r} as a duration",
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

def _model_field(body: dict) -> str | None:
    model = body.get("model")
    if model is None or model == "":
        return None  # the server's default model
    if not isinstance(model, str):
        raise _bad("model", "a string", model)
    return model


def _openai_common(body: dict, call: Call) -> None:
    n = body.get("n", 1)
    if n not in (1, None):
        raise InvalidArgumentError(f"n must be 1, got {n!r}: one choice per request is served",
                                   hint="Send several requests (they are batched together).")
    if body.get("best_of") not in (None, 1):
        raise _bad("best_of", "1", body.get("best_of"))
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise _bad("stream", "true or false", stream)
    call.stream = bool(stream)
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise _bad("stream_options", "an object", opts)
        call.include_usage = bool(opts.get("include_usage"))
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        call.params["max_tokens"] = limit
    else:
        call.params["max_tokens"] = None  # to the end of the context, as OpenAI's default
        call.defaulted.add("max_tokens")
    for name in OPENAI_SAMPLING:
        if body.get(name) is not None:
            call.params[name] = body[name]
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, list) and len(stop) > 16:
            raise _bad("stop", "at most 16 strings", len(stop))
        call.params["stop"] = stop
    if body.get("logit_bias"):
        raise InvalidArgumentError("logit_bias is not supported", hint="Leave it out.")
    if body.get("suffix"):
        raise InvalidArgumentError("suffix (fill-in-the-middle) is not supported", hint="Leave it out.")
    lora_field(body, call)


def lora_field(body: dict, call: Call) -> None:
    """llama-server's per-request ``lora``: [{"id": N, "scale": X}] among the model's loaded adapters
    (any not named: scale 0). The model checks the ids."""
    value = body.get("lora")
    if value is None:
        return
    if not isinstance(value, list) or not all(
            isinstance(x, dict) and isinstance(x.get("id"), int) and not isinstance(x.get("id"), bool)
            and isinstance(x.get("scale"), (int, float)) and not isinstance(x.get("scale"), bool)
            for x in value):
        raise _bad("lora", 'a list of {"id": N, "scale": X} (both given)', value)
    call.params["adapters"] = [{"id": x["id"], "scale": float(x["scale"])} for x in value]


def response_format(value) -> dict | None:
    """OpenAI's response_format -> {"type": "json_object"} or {"type": "json_schema", "schema", "name"}."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object", "json_schema"):
        raise _bad("response_format", '{"type": "text" | "json_object" | "json_schema", ...}', value)
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise _bad("response_format.json_schema", 'an object with "name" and "schema"', spec)
    return {"type": "json_schema", "schema": spec.get("schema") or {}, "name": spec.get("name"),
            "strict": bool(spec.get("strict"))}


def tools_field(tools) -> list[dict] | None:
    """OpenAI's (and Ollama's) tools: [{"type": "function", "function": {"name", "description", "parameters"}}]."""
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise _bad("tools", "a list", tools)
    out = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(fn, dict):
            raise _bad(f"tools[{i}]", '{"type": "function", "function": {...}}', t)
        name = fn.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise _bad(f"tools[{i}].function.name", "1-64 letters, digits, _ . or -", name)
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise _bad(f"tools[{i}].function.parameters", "a JSON Schema object", params)
        out.append({"name": name, "description": fn.get("description") or "", "parameters": params})
    if len({t["name"] for t in out}) != len(out):
        raise InvalidArgumentError("tools: two tools have the same name")
    return out


def tool_choice_field(choice, tools) -> object:
    """"auto" (default), "none", "required", or {"type": "function", "function": {"name"}} -> a name."""
    if choice is None:
        return "auto" if tools else "none"
    if choice in ("auto", "none", "required"):
        if choice == "required" and not tools:
            raise InvalidArgumentError('tool_choice is "required" but no tools were given')
        return choice
    fn = choice.get("function") if isinstance(choice, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise _bad("tool_choice", '"auto", "none", "required" or {"type": "function", "function": {"name"}}',
                   choice)
    if not tools or name not in {t["name"] for t in tools}:
        raise InvalidArgumentError(f"tool_choice names {name!r}, which is not among the tools")
    return {"name": name}


def openai_chat(body: dict) -> Call:
    call = Call(model=_model_field(body), messages=chat_messages(body.get("messages"), api="openai"))
    _openai_common(body, call)
    logprobs, top = body.get("logprobs"), body.get("top_logprobs")
    if logprobs not in (None, True, False):
        raise _bad("logprobs", "true or false", logprobs)
    if top is not None and not logprobs:
        raise InvalidArgumentError("top_logprobs needs logprobs: true")
    if logprobs:
        call.logprobs = 0 if top is None else top
        call.params.update(logprobs=True, top_logprobs=call.logprobs)
    call.response_format = response_format(body.get("response_format"))
    call.tools = tools_field(body.get("tools"))
    call.tool_choice = tool_choice_field(body.get("tool_choice"), call.tools)
    if call.tool_choice == "none":
        call.tools = None
    if call.tools and call.response_format:
        raise InvalidArgumentError("tools and response_format cannot be combined in one request")
    return call


def openai_completion(body: dict) -> Call:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # one prompt in a list (what some clients always send)
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise _bad("prompt", "a string, or a list of token ids (one prompt per request)")
    elif not isinstance(prompt, str):
        raise _bad("prompt", "a string (one prompt per request)", prompt)
    call = Call(model=_model_field(body), prompt=prompt)
    _openai_common(body, call)
    logprobs = body.get("logprobs")
    if logprobs is not None:
        if isinstance(logprobs, bool) or not isinstance(logprobs, int) or not 0 <= logprobs <= 5:
            raise _bad("logprobs", "an integer from 0 to 5", logprobs)
        call.logprobs = logprobs
        call.params.update(logprobs=True, top_logprobs=logprobs)
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise _bad("echo", "true or false", echo)
    call.echo = echo
    call.response_format = response_format(body.get("response_format"))
    return call


# --- Ollama -------------------------------------------------------------------------------

def ollama_options(options) -> tuple[dict, list[str]]:
    """Ollama's options -> (engine params, names ignored). num_predict < 0: to the context."""
    if options is None:
        return {}, []
    if not isinstance(options, dict):
        raise _bad("options", "an object", options)
    params, ignored = {}, []
    for key, value in options.items():
        if key == "num_predict":
            if isinstance(value, bool) or not isinstance(value, int):
                raise _bad("options.num_predict", "an integer (-1: to the end of the context)", value)
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
    if isinstance(value, dict):
        return {"type": "json_schema", "schema": value, "name": None, "strict": True}
    raise _bad("format", '"json" or a JSON Schema object', value)


def _ollama_common(body: dict, call: Call) -> list[str]:
    stream = body.get("stream", True)
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream", "true or false", stream)
    call.stream = stream is not False
    if body.get("keep_alive") is not None:
        call.keep_alive = parse_duration(body["keep_alive"])
    call.params["max_tokens"] = None  # Ollama's num_predict default: -1, to the context
    params, ignored = ollama_options(body.get("options"))
    call.params.update(params)
    call.defaulted = {"max_tokens"} - set(params)
    call.response_format = ollama_format(body.get("format"))
    lora_field(body, call)
    think = body.get("think")
    if think not in (None, False):
        raise InvalidArgumentError(f"think={think!r}: the models served here do not think before answering",
                                   hint="Leave think out (or false).")
    return ignored


def ollama_chat(body: dict) -> tuple[Call, list[str]]:
    call = Call(model=_model_field(body), messages=chat_messages(body.get("messages", []), api="ollama"))
    ignored = _ollama_common(body, call)
    call.tools = tools_field(body.get("tools"))
    call.tool_choice = "auto" if call.tools else "none"
    if call.tools and call.response_format:
        raise InvalidArgumentError("tools and format cannot be combined in one request")
    return call, ignored


def ollama_generate(body: dict) -> tuple[Call, list[str]]:
    prompt = body.get("prompt", "")
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise _bad("prompt", "a string", prompt)
    for key, why in (("suffix", "fill-in-the-middle (suffix) is not supported"),
                     ("images", "images are not supported: the models served here read text only"),
                     ("template", "template overrides are not supported (the model's own chat template is used)")):
        if body.get(key):
            raise InvalidArgumentError(why, hint="Leave it out; for a prompt you format yourself send raw: true.")
    raw = body.get("raw", False)
    if not isinstance(raw, bool):
        raise _bad("raw", "true or false", raw)
    call = Call(model=_model_field(body), prompt=prompt, raw=raw)
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        raise _bad("system", "a string", system)
    if not raw:
        call.messages = ([{"role": "system", "content": system}] if system else []) + \
            ([{"role": "user", "content": prompt}] if prompt else [])
    context = body.get("context")
    if context:
        if not isinstance(context, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in context):
            raise _bad("context", "a list of token ids (from a previous answer)", context)
        call.context = context
    ignored = _ollama_common(body, call)
    return call, ignored


def check_name(name: str) -> str:
    """A model name from the network: a registry or store name, never a file path."""
    from ..api import looks_like_path

    if looks_like_path(name):
        raise InvalidArgumentError(f"{name!r} looks like a file path; only model names are accepted here",
                                   hint="Use a name from `slmrun list` (import a file first with `slmrun import`).")
    return name


def model_ref(name: str) -> str:
    """Ollama's tag ":latest" means the default quant: the name alone."""
    return name[:-len(":latest")] if name.lower().endswith(":latest") else name
