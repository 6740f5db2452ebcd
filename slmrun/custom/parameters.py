"""A Modelfile's PARAMETERs (and /api/create's ``parameters``): Ollama's names, types and
ranges, and what each becomes in slmrun. Pure: a table and functions over it.

Sampling parameters become defaults of the created model's requests (a request's own
value wins); ``num_ctx`` is each request's context when the model is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ModelfileError


@dataclass(frozen=True)
class Param:
    kind: type  # int, float or str
    low: float | None = None
    high: float | None = None
    target: str | None = None  # the generation keyword it sets (None: a load option)
    rule: str = ""


PARAMS: dict[str, Param] = {
    "temperature": Param(float, 0.0, None, "temperature", ">= 0 (0: greedy)"),
    "top_p": Param(float, 0.0, 1.0, "top_p", "from 0 to 1"),
    "top_k": Param(int, 0, None, "top_k", ">= 0 (0: off)"),
    "min_p": Param(float, 0.0, 1.0, "min_p", "from 0 to 1"),
    "repeat_penalty": Param(float, 1e-9, None, "repeat_penalty", "> 0 (1: off)"),
    "repeat_last_n": Param(int, -1, None, "repeat_last_n", ">= -1 (0: off, -1: the whole context)"),
    "presence_penalty": Param(float, -2.0, 2.0, "presence_penalty", "from -2 to 2"),
    "frequency_penalty": Param(float, -2.0, 2.0, "frequency_penalty", "from -2 to 2"),
    "seed": Param(int, -1, 2 ** 63 - 1, "seed", "an integer >= -1 (-1: a random seed each request)"),
    "num_ctx": Param(int, 16, 1 << 24, None, "from 16 tokens up"),
    "num_predict": Param(int, -2, None, "max_tokens", ">= -2 (-1 or -2: until the end of the context)"),
    "stop": Param(str, target="stop", rule="a non-empty string"),
}
# Ollama's other options: known there, nothing here honours them.
_OLLAMA_ONLY = ("num_keep", "typical_p", "mirostat", "mirostat_tau", "mirostat_eta", "penalize_newline",
                "num_batch", "num_gpu", "main_gpu", "num_thread", "use_mmap", "use_mlock", "numa", "low_vram",
                "f16_kv", "vocab_only", "logits_all", "tfs_z", "draft_num_predict")


def convert(name: str, raw) -> object:
    """A parameter's value from text (a Modelfile) or JSON (/api/create), typed and checked;
    ModelfileError (no line: the caller adds it) otherwise."""
    spec = PARAMS.get(name)
    if spec is None:
        if name in _OLLAMA_ONLY:
            raise ModelfileError(f"PARAMETER {name} is Ollama's; slmrun does not support it",
                                 hint="Remove it. Supported: " + ", ".join(PARAMS) + ".")
        raise ModelfileError(f"unknown parameter {name!r}", hint="Supported: " + ", ".join(PARAMS) + ".")
    if spec.kind is str:
        if not isinstance(raw, str) or not raw:
            raise ModelfileError(f"PARAMETER {name} must be {spec.rule}, got {raw!r}")
        return raw
    value = _number(name, spec, raw)
    if (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high):
        raise ModelfileError(f"PARAMETER {name} must be {spec.rule}, got {format_value(value)}",
                             hint=f"Write PARAMETER {name} VALUE with VALUE {spec.rule}.")
    return value


def _number(name: str, spec: Param, raw):
    what = "an integer" if spec.kind is int else "a number"
    if isinstance(raw, bool):
        raise ModelfileError(f"PARAMETER {name} must be {what}, got {raw!r}")
    if isinstance(raw, (int, float)):
        if spec.kind is int and (isinstance(raw, float) and not raw.is_integer()):
            raise ModelfileError(f"PARAMETER {name} must be {what}, got {raw!r}")
        value = spec.kind(raw) if not (isinstance(raw, float) and not math.isfinite(raw)) else None
    elif isinstance(raw, str):
        try:
            value = int(raw.strip(), 10) if spec.kind is int else float(raw.strip())
        except ValueError:
            value = None
    else:
        value = None
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        raise ModelfileError(f"PARAMETER {name} must be {what}, got {raw!r}",
                             hint=f"Write PARAMETER {name} VALUE with VALUE {spec.rule}.")
    return value


def format_value(value) -> str:
    if isinstance(value, float):
        return repr(value) if not value.is_integer() else f"{value:g}" if abs(value) < 1e15 else repr(value)
    return str(value)


def sampling_defaults(params: dict) -> dict:
    """The generation keywords (Model.chat's names) a created model's parameters set."""
    out = {}
    for name, value in params.items():
        target = PARAMS[name].target
        if target is None:
            continue
        if name == "num_predict":
            value = None if value < 0 else value  # -1 / -2: until the end of the context
        elif name == "seed" and value == -1:
            continue  # a random seed each request: what no seed means
        elif name == "stop":
            value = list(value)
        out[target] = value
    return out


def describe(params: dict) -> str:
    """Ollama's /api/show ``parameters``: one ``name value`` line each (stop repeated)."""
    lines = []
    for name, value in params.items():
        for v in (value if name == "stop" else (value,)):
            shown = f'"{v}"' if name == "stop" else format_value(v)
            lines.append(f"{name:<30}{shown}")
    return "\n".join(lines)
