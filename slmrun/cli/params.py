"""Parameter conversion for typer without pydantic, for the plain types slmrun's commands use.

typer (0.2x) converts every parameter's value through a pydantic ``TypeAdapter`` it builds on
first use: importing pydantic and building the adapters of one command took ~90 ms of a
~300 ms `slmrun run` (benchmarks/STARTUP.md), for values that are strings, integers, floats,
booleans and paths. ``install()`` puts a direct conversion in front for exactly those (and their
Optional forms), with click's own error message for a value that does not convert
("'x' is not a valid integer."); anything else (lists, enums, paths with existence checks,
ranges, custom parsers, and any typer that converts differently) goes to typer's own.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from pathlib import Path


def _plain(annotation):
    """(converter, name) for a plain annotation, None otherwise."""
    if typing.get_origin(annotation) in (typing.Union, getattr(types, "UnionType", None)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            return None
        annotation = args[0]
    if annotation is str:
        return (lambda v: v if isinstance(v, str) else str(v)), "string"
    if annotation is int:
        def to_int(v):
            if isinstance(v, bool) or not isinstance(v, (int, str)):
                raise ValueError(v)
            return int(v)
        return to_int, "integer"
    if annotation is float:
        def to_float(v):
            if isinstance(v, bool) or not isinstance(v, (int, float, str)):
                raise ValueError(v)
            return float(v)
        return to_float, "float"
    if annotation is bool:  # a flag not given arrives as None and never gets here; an env var's text might
        def to_bool(v):
            if isinstance(v, bool):
                return v
            text = str(v).strip().lower()
            if text in ("1", "true", "t", "yes", "y", "on"):
                return True
            if text in ("0", "false", "f", "no", "n", "off"):
                return False
            raise ValueError(v)
        return to_bool, "boolean"
    if annotation is Path:
        return (lambda v: v if isinstance(v, Path) else Path(v)), "path"
    return None


def install() -> bool:
    """Route plain parameters around typer's pydantic adapters; True if done (idempotent)."""
    try:
        from typer import _coercion, core
        from typer._click.exceptions import BadParameter
    except ImportError:  # a typer that converts through click: nothing to do
        return False
    original = getattr(core, "build_runtime_param", None)
    base = getattr(_coercion, "RuntimeParam", None)
    if original is None or base is None:
        return False
    if getattr(original, "slmrun_plain", False):
        return True

    @dataclass(frozen=True)
    class PlainParam(base):
        convert: typing.Callable = None
        type_name: str = ""

        def _coerce_value(self, value, param, ctx):
            try:
                return self.convert(value)
            except (TypeError, ValueError):
                raise BadParameter(f"{value!r} is not a valid {self.type_name}.", ctx=ctx, param=param) from None

    def build(descriptor):
        info = descriptor.parameter_info
        plain = None
        if (descriptor.file_annotation is None and getattr(info, "parser", None) is None
                and getattr(info, "click_type", None) is None and getattr(info, "min", None) is None
                and getattr(info, "max", None) is None
                and not any(getattr(info, flag, False) for flag in ("exists", "resolve_path", "writable",
                                                                        "allow_dash"))
                and all(getattr(info, flag, True) for flag in ("file_okay", "dir_okay", "readable"))):
            plain = _plain(descriptor.annotation)
        if plain is None:
            return original(descriptor)
        return PlainParam(parameter_info=info, annotation=descriptor.annotation, convert=plain[0],
                          type_name=plain[1])

    build.slmrun_plain = True
    core.build_runtime_param = build
    return True
