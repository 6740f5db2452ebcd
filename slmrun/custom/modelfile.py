"""Ollama's Modelfile: text in, a checked ``Modelfile`` out, and back to text. Pure: no I/O.

The syntax is Ollama's (parser/parser.go): one instruction per statement, its name in any
case, then its value; ``#`` starts a comment where an instruction could start; a value is
the rest of the line (trimmed), or text between ``"..."`` or ``\"\"\"...\"\"\"`` that may span
lines (nothing is escaped inside). Every problem is a ModelfileError naming its line.

Instructions: FROM (required), PARAMETER, SYSTEM, MESSAGE, ADAPTER, LICENSE, TEMPLATE and
REQUIRES as Ollama reads them, and slmrun's own FORMAT NAME (a named prompt format, the
way to say what an unrecognised TEMPLATE means). Ollama's DRAFT, RENDERER and PARSER are
refused by name: slmrun has nothing that would honour them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ModelfileError
from . import parameters as P

INSTRUCTIONS = ("from", "parameter", "system", "message", "adapter", "license", "template", "format",
                "requires")
_OLLAMA_ONLY = {"draft": "a draft model for speculative decoding", "renderer": "a built-in renderer",
                "parser": "a built-in output parser"}
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Adapter:
    path: str  # as written (relative to the Modelfile's folder unless absolute)
    scale: float = 1.0


@dataclass(frozen=True)
class Modelfile:
    """What a Modelfile says, checked. ``parameters`` holds Ollama's names with typed values
    (``stop``: a tuple); ``messages`` the MESSAGE turns in order."""

    from_: str
    from_line: int = field(default=1, compare=False)
    parameters: dict = field(default_factory=dict)
    system: str | None = None
    messages: tuple[dict, ...] = ()
    adapters: tuple[Adapter, ...] = ()
    license: tuple[str, ...] = ()
    template: str | None = None
    format: str | None = None
    requires: str | None = None
    lines: dict = field(default_factory=dict, compare=False)  # "template", "format", "adapter:N" -> line

    def to_text(self, *, header: str | None = None) -> str:
        """The Modelfile again (``slmrun show --modelfile``); parse(to_text()) gives it back."""
        out = [f"# {line}" for line in (header or "").splitlines()]
        out.append(f"FROM {quote(self.from_)}")
        if self.format:
            out.append(f"FORMAT {self.format}")
        if self.template is not None:
            out.append(f"TEMPLATE {quote(self.template)}")
        if self.system is not None:
            out.append(f"SYSTEM {quote(self.system)}")
        for name, value in self.parameters.items():
            for v in (value if name == "stop" else (value,)):
                text = P.format_value(v)
                out.append(f"PARAMETER {name} {quote(text, always=name == 'stop')}")
        for m in self.messages:
            out.append(f"MESSAGE {m['role']} {quote(m['content'])}")
        for a in self.adapters:
            out.append(f"ADAPTER {quote(a.path if a.scale == 1.0 else f'{a.path}:{a.scale:g}')}")
        for text in self.license:
            out.append(f"LICENSE {quote(text)}")
        if self.requires:
            out.append(f"REQUIRES {quote(self.requires)}")
        return "\n".join(out) + "\n"


def quote(value: str, *, always: bool = False) -> str:
    """Ollama's quoting: plain when the value survives as a bare line, else "..." or \"\"\"...\"\"\"."""
    if '"""' in value:
        raise ModelfileError('a value that contains """ cannot be written in a Modelfile',
                             hint='Remove the triple quote from the text.')
    if not always and value and "\n" not in value and value == value.strip() and not value.startswith('"'):
        return value
    if '"' in value or "\n" in value:
        return f'"""{value}"""'
    return f'"{value}"'


# --- reading ---------------------------------------------------------------------------------

def _statements(text: str):
    """(line, name, key, value) for each instruction, in order (``key``: PARAMETER's name or
    MESSAGE's role, else ""); comments and blank lines skipped."""
    if text.startswith("\ufeff"):
        text = text[1:]
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
            continue
        if c in " \t":
            i += 1
            continue
        if c == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        start_line, j = line, i
        while j < n and text[j] not in " \t\n":
            j += 1
        name = text[i:j]
        kind = name.lower()
        if kind in _OLLAMA_ONLY:
            raise _at(line, f"{name.upper()} ({_OLLAMA_ONLY[kind]}) is Ollama's; slmrun does not support it",
                      hint="Remove that line.")
        if kind not in INSTRUCTIONS:
            raise _at(line, f"unknown instruction {name!r}",
                      hint="Use one of " + ", ".join(i.upper() for i in INSTRUCTIONS) + ".")
        if j >= n or text[j] == "\n":
            raise _at(start_line, f"{name.upper()} needs a value")
        key = ""
        if name.lower() in ("parameter", "message"):
            while j < n and text[j] in " \t":
                j += 1
            k = j
            while j < n and text[j].isascii() and (text[j].isalnum() or text[j] == "_"):
                j += 1
            key = text[k:j]
            if not key or j >= n or text[j] not in " \t":
                what = "a parameter name and a value" if name.lower() == "parameter" else "a role and a text"
                raise _at(start_line, f"{name.upper()} needs {what}")
        value, i, line = _value(text, j, start_line)
        yield start_line, name, key, value


def _value(text: str, i: int, line: int) -> tuple[str, int, int]:
    """The value starting after an instruction's name at ``i``: (value, index after it, line there)."""
    n = len(text)
    while i < n and text[i] in " \t":
        i += 1
    start_line = line
    for q in ('"""', '"'):
        if text.startswith(q, i):
            # Ollama's rule: the value ends at the first line end where it is closed.
            k = i + len(q)
            while True:
                end = text.find(q, k)
                if end < 0:
                    raise _at(start_line, f"the {q} opened here is never closed")
                after = text.find("\n", end + len(q))
                after = n if after < 0 else after
                if text[end + len(q):after].strip(" \t") == "":
                    value = text[i + len(q):end]
                    return value, after, line + text.count("\n", i, after)
                if q == '"""':
                    raise _at(start_line, 'text after the closing """ on its line')
                k = end + 1
    end = text.find("\n", i)
    end = n if end < 0 else end
    return text[i:end].strip(" \t"), end, line


def _at(line: int, message: str, hint: str | None = None) -> ModelfileError:
    return ModelfileError(f"(line {line}): {message}", hint=hint, line=line)


def parse(text: str) -> Modelfile:
    """Read and check a Modelfile (Ollama's syntax and meaning); ModelfileError with the line."""
    if not isinstance(text, str):
        raise ModelfileError("a Modelfile is text")
    from_ = None
    from_line = 0
    params: dict = {}
    messages: list[dict] = []
    adapters: list[Adapter] = []
    licenses: list[str] = []
    template = fmt = system = requires = None
    lines: dict = {}
    for line, name, key, value in _statements(text):
        kind = name.lower()
        if kind == "from":
            if not value:
                raise _at(line, "FROM needs a model name or a .gguf path")
            if from_ is not None:
                raise _at(line, f"a second FROM (the first is on line {from_line})", hint="Keep one FROM.")
            from_, from_line = value, line
        elif kind == "parameter":
            key = key.lower()
            try:
                typed = P.convert(key, value)
            except ModelfileError as exc:
                raise _at(line, exc.message, exc.hint) from None
            if key == "stop":
                params["stop"] = params.get("stop", ()) + (typed,)
            else:
                params[key] = typed
        elif kind == "message":
            if key.lower() not in ROLES:
                raise _at(line, f"MESSAGE role must be one of system, user or assistant, got {key!r}",
                          hint="Write MESSAGE user TEXT or MESSAGE assistant TEXT.")
            messages.append({"role": key.lower(), "content": value})
        elif kind == "adapter":
            if not value:
                raise _at(line, "ADAPTER needs the path of a LoRA adapter (.gguf)")
            path, scale = split_scale(value)
            if scale is None:
                raise _at(line, f"ADAPTER {value}: the scale after ':' must be a number")
            lines[f"adapter:{len(adapters)}"] = line
            adapters.append(Adapter(path, scale))
        elif kind == "license":
            licenses.append(value)
        elif kind == "template":
            template, lines["template"] = value, line
        elif kind == "format":
            fmt, lines["format"] = _format_name(value, line), line
        elif kind == "system":
            system = value
        elif kind == "requires":
            requires = value
    if from_ is None:
        raise ModelfileError("the Modelfile has no FROM line",
                             hint="Add FROM with the base model: a name (FROM smollm2-135m) or a .gguf path.")
    return Modelfile(from_=from_, from_line=from_line, parameters=params, system=system,
                     messages=tuple(messages), adapters=tuple(adapters), license=tuple(licenses),
                     template=template, format=fmt, requires=requires, lines=lines)


def _format_name(value: str, line: int) -> str:
    from ..errors import UnknownPromptFormatError
    from ..prompt_formats import NONE, get_format

    if value.strip().lower() == NONE:
        return NONE
    try:
        return get_format(value).name
    except UnknownPromptFormatError as exc:
        raise _at(line, exc.message, exc.hint) from None


def split_scale(value: str) -> tuple[str, float | None]:
    """``FILE`` or ``FILE:SCALE`` (llama.cpp's --lora-scaled): (path, scale), scale None when the
    text after ':' starts like a number but is none. Anything else after ':' is the path's (C:\\...)."""
    import math
    import re

    path, sep, tail = value.rpartition(":")
    if not sep or not path or not re.match(r"\s*[+-]?[0-9.]", tail):
        return value, 1.0
    try:
        scale = float(tail)
    except ValueError:
        return value, None
    return (path, scale) if math.isfinite(scale) else (value, None)
