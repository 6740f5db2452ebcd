"""Created models next to the store's own: removing (refused while others are built on a
model) and describing one (`slmrun show`)."""

from __future__ import annotations

from .. import store
from ..errors import ModelInUseError, ModelNotFoundError
from . import manifest
from .resolve import dependents, name_ref


def remove_model(ref: str, *, force: bool = False) -> list:
    """Delete a stored model (every quant, or one) or a created model; ModelInUseError while
    created models are built on it, unless ``force``."""
    from ..registry import load_registry, split_ref

    name, quant = split_ref(name_ref(ref))
    made = manifest.read(name) if quant is None and store.is_model_name(name) else None
    try:
        name = load_registry().get(name).name
    except ModelNotFoundError:
        pass
    victims = [] if made is not None else store.find(name, quant)
    users = dependents(name, quant=quant, paths=tuple(m.path for m in victims)) if made or victims else []
    if users and not force:
        what = f"{name}:{quant.lower()}" if quant else name
        raise ModelInUseError(f"{what} is the base of {', '.join(users)}",
                              hint=f"Remove {'them' if len(users) > 1 else 'it'} first (`slmrun rm {users[0]}`), "
                                   f"or pass --force to remove {what} anyway.")
    if made is not None:
        with store.lock(name, "created"):
            manifest.remove(name)
        return [made]
    return store.remove(name, quant)


def describe_created(custom, base: dict) -> dict:
    """`slmrun show` of a created model: its own settings over what ``base`` (the base's
    api.describe) says."""
    from .parameters import describe as describe_params

    chain = custom.chain[1:] + (custom.base,)
    d = {"name": custom.name, "from": " -> ".join(chain)}
    d.update((k, v) for k, v in base.items() if k != "name")
    if custom.license:
        d["license"] = "\n".join(custom.license)
    if custom.format:
        d["prompt_format"] = f"{custom.format} (from the Modelfile)"
    if custom.system is not None:
        d["system"] = custom.system
    if custom.messages:
        d["messages"] = f"{len(custom.messages)} few-shot turns"
    if custom.parameters:
        d["model_parameters"] = describe_params(custom.parameters).replace("\n", "; ")
    if custom.adapters:
        d["adapters"] = ", ".join(a.path + (f" (scale {a.scale:g})" if a.scale != 1 else "") for a in custom.adapters)
    return d


def create(name: str, modelfile, *, base_dir=None, allow_paths: bool = True, progress=None):
    """Create (or replace) the model ``name`` from a Modelfile (its text, or a parsed
    modelfile.Modelfile). Relative paths in it are ``base_dir``'s (the Modelfile's folder);
    ``allow_paths=False`` refuses files outside the store. Nothing is written unless every
    check passes. Returns the manifest.CreatedModel."""
    from pathlib import Path

    from .modelfile import Modelfile, parse
    from .resolve import create as create_model

    mf = modelfile if isinstance(modelfile, Modelfile) else parse(modelfile)
    return create_model(name, mf, base_dir=Path(base_dir) if base_dir is not None else None,
                        allow_paths=allow_paths, progress=progress)


def copy(src: str, dst: str):
    """``dst`` as a copy of ``src`` (Ollama's cp): a created model's manifest is copied (the two
    are independent after); any other model becomes a created model FROM it (no file is copied)."""
    from dataclasses import replace

    from .modelfile import Modelfile
    from .resolve import check_new_name, create as create_model

    made = manifest.read(name_ref(src).lower())
    if made is None:
        from ..api import resolve
        return create_model(dst, Modelfile(from_=resolve(src, allow_path=False).key))
    dst = check_new_name(dst)
    with store.lock(dst, "created"):
        return manifest.write(replace(made, name=dst))


def list_rows() -> list[dict]:
    """Every created model for `slmrun list`: name, what it is built on, its base's quant and
    file size where the store or the file says so without resolving (no planner, no GGUF read)."""
    import os

    from ..registry import split_ref

    rows = []
    for m in manifest.list_all():
        quant, size = "", 0
        if os.path.isabs(m.from_):
            size = os.path.getsize(m.from_) if os.path.isfile(m.from_) else 0
        else:
            base = manifest.read(split_ref(m.from_)[0]) if ":" not in m.from_ else None
            found = [] if base is not None else store.find(*split_ref(m.from_))
            if len(found) == 1:
                quant, size = found[0].quant, found[0].size
        rows.append({"name": m.name, "from": m.from_, "quant": quant, "size": size, "modified": m.modified,
                     "created": True, "adapters": [a.path for a in m.adapters]})
    return rows


def modelfile_text(ref: str) -> str:
    """`slmrun show --modelfile`: a created model's own Modelfile; for any other model, one
    that builds on it."""
    from .modelfile import quote

    made = manifest.read(name_ref(ref).lower()) if store.is_model_name(name_ref(ref).lower()) else None
    if made is not None:
        return made.modelfile_text()
    from ..api import resolve

    r = resolve(ref)
    return f"# Modelfile for a model built on {r.key}\nFROM {quote(str(r.path) if r.stored is None and r.entry is None else r.key)}\n"
