"""A created model's FROM chain: creating one (checked before anything is written) and
resolving one to its base and the settings its chain adds up to.

FROM names a registry or store model (with or without a quant), a .gguf file, or another
created model; a created model built on another inherits its parameters (its own win),
SYSTEM, MESSAGEs and prompt format unless it sets its own, and its adapters (added to).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import config, store
from ..errors import (InvalidArgumentError, ModelfileError, ModelNotFoundError, SlmrunError)
from . import manifest
from .manifest import CreatedModel, StoredAdapter
from .modelfile import Modelfile

MAX_DEPTH = 16  # created models built on created models: far past any real use


@dataclass(frozen=True)
class Customization:
    """What a created model adds to its base, merged along its FROM chain."""

    name: str
    base: str  # the first FROM that is no created model: a name[:quant] or an absolute path
    chain: tuple[str, ...]  # created models from this one to the base's
    parameters: dict = field(default_factory=dict)
    system: str | None = None
    messages: tuple[dict, ...] = ()  # few-shot turns (MESSAGE user/assistant)
    adapters: tuple[StoredAdapter, ...] = ()
    format: str | None = None
    license: tuple[str, ...] = ()
    template: str | None = None

    @property
    def num_ctx(self) -> int | None:
        return self.parameters.get("num_ctx")


def name_ref(ref: str) -> str:
    """Ollama's ``name:latest`` is the name alone."""
    ref = ref.strip()
    return ref[:-len(":latest")] if ref.lower().endswith(":latest") else ref


def chain(name: str) -> list[CreatedModel]:
    """The created model ``name`` and the created models under it, nearest first; [] if
    ``name`` is none. A FROM cycle (a manifest edited by hand) is a ModelfileError."""
    out: list[CreatedModel] = []
    seen: set[str] = set()
    ref = name_ref(name).lower()
    while True:
        if ref in seen:
            raise ModelfileError(f"the created models {' -> '.join([m.name for m in out] + [ref])} form a FROM cycle",
                                 hint=f"Create {out[-1].name} again FROM a model that is not built on it.")
        model = manifest.read(ref) if ":" not in ref else None
        if model is None:
            return out
        seen.add(ref)
        out.append(model)
        if len(out) > MAX_DEPTH:
            raise ModelfileError(f"{name} is built on more than {MAX_DEPTH} created models")
        ref = name_ref(model.from_).lower()


def customization(name: str) -> Customization | None:
    """The merged settings of the created model ``name`` (None if it is no created model)."""
    models = chain(name)
    if not models:
        return None
    params: dict = {}
    system = fmt = template = None
    messages: tuple = ()
    adapters: tuple = ()
    licenses: tuple = ()
    for m in reversed(models):  # the base's first, each one's own settings over it
        mf = m.modelfile
        params.update(mf.parameters)
        own_system, own_turns = split_system(mf)
        system = own_system if own_system is not None else system
        messages = own_turns or messages
        adapters = adapters + m.adapters
        licenses = mf.license or licenses
        fmt = m.format or fmt
        template = mf.template if mf.template is not None else template
    return Customization(name=models[0].name, base=models[-1].from_, chain=tuple(m.name for m in models),
                         parameters=params, system=system, messages=messages, adapters=adapters, format=fmt,
                         license=licenses, template=template)


def split_system(mf: Modelfile) -> tuple[str | None, tuple[dict, ...]]:
    """(system prompt, few-shot turns): SYSTEM, else the MESSAGE system lines (Ollama's
    "alternate way of providing the SYSTEM message"); the turns are the other MESSAGEs."""
    turns = tuple(m for m in mf.messages if m["role"] != "system")
    if mf.system is not None:
        return mf.system, turns
    own = [m["content"] for m in mf.messages if m["role"] == "system"]
    return ("\n\n".join(own) if own else None), turns


# --- creating ------------------------------------------------------------------------------

def check_new_name(name: str) -> str:
    """A name a created model may take: the store's rule, and no registry or stored GGUF model's."""
    from ..registry import load_registry

    name = store.check_store_name(name_ref(name))
    try:
        entry = load_registry().get(name)
    except ModelNotFoundError:
        entry = None
    if entry is not None:
        raise InvalidArgumentError(f"{name!r} is the registry's name for {entry.name}",
                                   hint="Choose another name for the model you create.")
    if store.find(name):
        raise InvalidArgumentError(f"{name!r} is a model file in the store",
                                   hint="Choose another name (`slmrun list` shows the names in use).")
    return name


def inside(path: Path, root: Path) -> bool:
    """``path`` names a file under ``root`` once '..' is resolved. Symbolic links in the store
    are the store's own (`slmrun import --link`), so they are not followed."""
    try:
        Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
        return True
    except ValueError:
        return False


def local_path(value: str, *, base_dir: Path | None, allow_paths: bool, what: str, line: int | None = None) -> Path:
    """A path from a Modelfile or a request, absolute. Relative paths are the Modelfile's
    folder's (Ollama's rule), or the store's for a server request; ``allow_paths=False`` (a
    server not started with --allow-paths) refuses anything outside the store."""
    root = config.home()
    raw = Path(value).expanduser()
    path = raw if raw.is_absolute() else (base_dir if base_dir is not None else root) / raw
    path = Path(os.path.abspath(path))
    if not allow_paths and not inside(path, root):
        at = f"(line {line}): " if line else ""
        raise ModelfileError(f"{at}{what} {value!r} is outside the model store; this server only reads files in it",
                             hint="Use a model name, or start the server with `slmrun serve --allow-paths`.",
                             line=line)
    return path


def looks_like_file(value: str, base_dir: Path | None) -> bool:
    from ..api import looks_like_path

    return looks_like_path(value) or (base_dir is not None and (base_dir / value).is_file())


def create(name: str, mf: Modelfile, *, base_dir: Path | None = None, allow_paths: bool = True,
           progress=None) -> CreatedModel:
    """Check everything (name, FROM, TEMPLATE/FORMAT, adapters), then write the manifest.
    ``progress(status)`` hears each step (Ollama's /api/create status lines)."""
    from .. import api
    from ..adapter_info import check_fits, read_adapter
    from ..gguf_info import read_info

    say = progress or (lambda status: None)
    name = check_new_name(name)
    say("parsing modelfile")
    src = mf.from_
    if looks_like_file(src, base_dir):
        path = local_path(src, base_dir=base_dir, allow_paths=allow_paths, what="FROM", line=mf.from_line)
        resolved_from = str(path)
        info = read_info(path)  # a missing file, an adapter or a damaged GGUF fails here
    else:
        resolved_from = name_ref(src).lower()
        if name_ref(resolved_from).split(":")[0] == name or name in [m.name for m in chain(resolved_from)]:
            raise ModelfileError(f"FROM {src}: {name} would be built on itself (a FROM cycle)",
                                 hint="Build it FROM a model that is not built on it.", line=mf.from_line)
        try:
            info = api.inspect_file(api.resolve(resolved_from, allow_path=False))
        except SlmrunError as exc:
            exc.message = f"FROM {src}: {exc.message}"
            exc.args = (exc.message,)
            raise
    say(f"using base {info.path.name} ({info.architecture}, {info.quant})")
    fmt = mf.format
    if fmt is None and mf.template is not None:
        from .templates import recognise
        try:
            fmt = recognise(mf.template)
        except ModelfileError as exc:
            line = mf.lines.get("template")
            raise ModelfileError((f"(line {line}): " if line else "") + exc.message, hint=exc.hint, line=line) from None
        say(f"TEMPLATE is the {fmt} prompt format")
    adapters = []
    for i, a in enumerate(mf.adapters):
        line = mf.lines.get(f"adapter:{i}")
        path = local_path(a.path, base_dir=base_dir, allow_paths=allow_paths, what="ADAPTER", line=line)
        adapter = read_adapter(path)
        check_fits(adapter, info)
        say(f"using adapter {adapter.describe()}")
        adapters.append(StoredAdapter(str(path), a.scale, adapter.size, store.sha256_file(path)))
    if mf.parameters.get("num_ctx") and info.context_length and mf.parameters["num_ctx"] > 4 * info.context_length:
        raise ModelfileError(f"PARAMETER num_ctx {mf.parameters['num_ctx']} is far past the "
                             f"{info.context_length} tokens {info.path.name} was trained on",
                             hint=f"Use at most {info.context_length}.")
    own = Modelfile(from_=resolved_from, parameters=dict(mf.parameters), system=mf.system, messages=mf.messages,
                    adapters=tuple(type(a)(s.path, s.scale) for a, s in zip(mf.adapters, adapters)),
                    license=mf.license, template=mf.template, format=mf.format, requires=mf.requires)
    say("writing manifest")
    with store.lock(name, "created"):
        model = manifest.write(CreatedModel(name=name, modelfile=own, format=fmt, adapters=tuple(adapters)))
    say("success")
    return model


def dependents(name: str, *, quant: str | None = None, paths: tuple[Path, ...] = ()) -> list[str]:
    """Created models that would break if ``name`` (one quant of it, or all) and the files
    ``paths`` were removed: those whose FROM names it and would resolve to nothing, or names
    one of those files."""
    from ..registry import load_registry, split_ref

    registry = load_registry()

    def canonical(ref_name: str) -> str:
        try:
            return registry.get(ref_name).name
        except ModelNotFoundError:
            return ref_name

    gone = {os.path.realpath(p) for p in paths}
    remaining = [m for m in store.find(name) if os.path.realpath(m.path) not in gone] if store.find(name) else []
    out = []
    for model in manifest.list_all():
        src = model.from_
        if os.path.isabs(src):
            hit = os.path.realpath(src) in gone
        else:
            ref_name, ref_quant = split_ref(name_ref(src))
            if canonical(ref_name) != name:
                hit = False
            elif ref_quant is not None and quant is not None:
                hit = ref_quant == quant.upper()
            else:
                hit = not remaining if ref_quant is None else True
        if hit:
            out.append(model.name)
    return out
