"""Model names to files: what ``tinyllama``, ``tinyllama:q5_k_m``, an imported or created
model's name, or a ``.gguf`` path refer to, the planner's quant when none is named, and
the checked GGUF header of the file found. No llama.cpp here: ``api.load`` builds on it.

Names resolve like Ollama's: ``tinyllama`` (the quant chosen for this machine),
``tinyllama:q5_k_m`` (case-insensitive), an alias, a name given to ``import``, or a
path to a ``.gguf`` file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from . import store
from .errors import (InvalidArgumentError, InvalidModelFileError, ModelFileNotFoundError,
                     ModelNotFoundError, ModelNotPulledError, SlmrunError, UnknownQuantError)
from .registry import ModelEntry, load_registry, split_ref


def is_encoder(info) -> bool:
    """A GGUF of an encoder (BERT family: non-causal attention): it embeds, it does not generate."""
    return not info.causal


@dataclass(frozen=True)
class Resolved:
    path: Path
    name: str
    quant: str | None
    entry: ModelEntry | None = None
    stored: store.StoredModel | None = None
    custom: object | None = None  # custom.resolve.Customization: a created model's settings

    @property
    def key(self) -> str:
        """The canonical name: ``name:quant`` for a stored file, the name alone for a created model or a path."""
        return self.name if self.custom is not None or not self.quant else f"{self.name}:{self.quant.lower()}"


def looks_like_path(ref: str) -> bool:
    return ("/" in ref or os.sep in ref or ref.lower().endswith(".gguf") or ref.startswith("~")
            or ref.startswith("."))


def _is_file(ref: str) -> bool:
    """A bare word naming a file here (``-m model``); False for what cannot be looked up."""
    try:
        return Path(ref).is_file()
    except (OSError, ValueError):
        return False


def _model_path(ref: str) -> Path:
    """A path the user gave, which must exist; never an OSError (too long, unreadable)."""
    try:
        path = Path(ref).expanduser()
        if path.exists():
            return path
        problem = "no such model file"
    except (OSError, RuntimeError, ValueError) as exc:  # RuntimeError: "~user" with no such user
        path, problem = Path(ref), f"cannot use this path ({getattr(exc, 'strerror', None) or exc})"
    raise ModelFileNotFoundError(f"{problem}: {store.shorten(str(path))}")


def choose_quant(entry: ModelEntry) -> str:
    """The quant to use when the user names none: the planner's pick for this machine."""
    try:
        from .planner import pick_for_this_machine
    except ImportError:  # planner not available: Ollama's habit
        return entry.default_quant
    from .evaluate.results import measured_kld
    return pick_for_this_machine(entry, measured=measured_kld(entry))


def _best_local(entry: ModelEntry | None, local: list[store.StoredModel]) -> store.StoredModel:
    """Of the local quants, what the planner picks on this machine (the best that fits)."""
    if len(local) == 1:
        return local[0]
    try:
        from .hardware import detect
        from .planner import plan, spec_from_entry
        target = (spec_from_entry(entry), {m.quant: m.size for m in local}) if entry else local_target(local)
        from .evaluate.results import measured_kld
        quant = plan(target, detect(), force=True, measured=measured_kld(entry or local[0].name)).quant
        return next(m for m in local if m.quant == quant)
    except Exception:  # planning must never stop a load: then the best quality here
        from .planner import quality_rank
        return min(local, key=lambda m: quality_rank(m.quant))


def resolve(ref: str, *, allow_path: bool = True) -> Resolved:
    """Find the local file for a model reference; raise with the next step if it is not here.

    ``allow_path=False`` (names from the network): only registry and store names, never a file.
    """
    if not isinstance(ref, (str, os.PathLike)) or not str(ref).strip():
        raise InvalidArgumentError("a model name or path is required", hint="Example: slmrun run -m tinyllama 'Hi'")
    ref = os.fspath(ref).strip()
    if not allow_path:
        if looks_like_path(ref):
            raise InvalidArgumentError(f"{store.shown(ref)} looks like a file path; only model names are accepted here",
                                       hint="Use a name from `slmrun list` (import a file first with `slmrun import`).")
    elif looks_like_path(ref) or _is_file(ref):
        path = _model_path(ref)
        return Resolved(path=path, name=path.stem, quant=None)
    created = _created(ref)
    if created is not None:
        return created
    name, quant = split_ref(ref)
    local = store.find(name, quant)
    try:
        entry, quant = load_registry().resolve(ref)
        name = entry.name
        local = store.find(name, quant)
    except UnknownQuantError:  # a quant the registry does not list, made here (slmrun quantize) or imported
        entry = load_registry().get(name)
        local = store.find(entry.name, quant)
        if not local:
            raise
        return Resolved(path=local[0].path, name=entry.name, quant=local[0].quant, entry=entry, stored=local[0])
    except ModelNotFoundError:
        if local:  # an imported model the registry does not know
            pick = _best_local(None, local)
            return Resolved(path=pick.path, name=name, quant=pick.quant, stored=pick)
        raise
    if quant is None:
        if not local:
            raise ModelNotPulledError(f"{entry.name} is not downloaded yet",
                                      hint=f"Run `slmrun pull {entry.name}` first (or `slmrun import PATH`).")
        # One quant here: it is the answer whatever the planner would pick (and planning costs
        # ~30 ms of imports and detection on every `slmrun run`).
        wanted = choose_quant(entry) if len(local) > 1 else local[0].quant
        pick = next((m for m in local if m.quant == wanted), None)
        if pick is None:  # the planner's pick is not here: the best of what is here that fits
            pick = _best_local(entry, local)
        return Resolved(path=pick.path, name=entry.name, quant=pick.quant, entry=entry, stored=pick)
    if not local:
        raise ModelNotPulledError(f"{entry.name}:{quant.lower()} is not downloaded yet",
                                  hint=f"Run `slmrun pull {entry.name}:{quant.lower()}` first.")
    return Resolved(path=local[0].path, name=entry.name, quant=quant, entry=entry, stored=local[0])


def created(ref) -> object | None:
    """The settings of the created model ``ref`` (custom.resolve.Customization), or None when
    ``ref`` names none (a registry or store name, a path)."""
    from .custom.resolve import customization, name_ref

    if not isinstance(ref, str) or looks_like_path(ref):
        return None
    name = name_ref(ref).lower()
    return customization(name) if ":" not in name and store.is_model_name(name) else None


def _created(ref: str) -> Resolved | None:
    """A created model (`slmrun create`): its base's file with the settings of its FROM chain.
    Its base may be a file anywhere: the path was checked when the model was created."""
    custom = created(ref)
    if custom is None:
        return None
    try:
        base = resolve(custom.base, allow_path=True)
    except SlmrunError as exc:
        exc.message = f"{custom.name} is built on {custom.base}: {exc.message}"
        exc.args = (exc.message,)
        exc.hint = f"{exc.hint} Or remove it: `slmrun rm {custom.name}`.".strip()
        raise
    return replace(base, name=custom.name, custom=custom)


def local_target(local: list[store.StoredModel]):
    """What the planner plans an imported model from: its GGUFs' own metadata, its local quants."""
    from .gguf_info import read_info
    from .planner import LocalModel, spec_from_gguf

    info = read_info(local[0].path)
    return LocalModel(name=local[0].name, spec=spec_from_gguf(info), files={m.quant: m.size for m in local})


def plan_target(ref: str):
    """What ``slmrun plan REF`` plans: a registry entry (its published quants), an imported
    model (its local files) or a .gguf path (that file), each from the best facts there are.
    Returns (target, quant named in REF or None)."""
    from .gguf_info import read_info
    from .planner import LocalModel, spec_from_gguf

    ref = os.fspath(ref).strip()
    if looks_like_path(ref) or _is_file(ref):
        path = _model_path(ref)
        info = read_info(path)
        return LocalModel(name=path.name, spec=spec_from_gguf(info), files={info.quant: info.size}), None
    custom = created(ref)
    if custom is not None:  # its base's quants (a created model's own context: created(ref).num_ctx)
        return plan_target(custom.base)
    name, quant = split_ref(ref)
    try:
        entry, quant = load_registry().resolve(ref)
        return entry, quant
    except ModelNotFoundError:
        local = store.find(name)
        if not local:
            raise
    if quant is not None and quant not in {m.quant for m in local}:
        raise UnknownQuantError(f"{name} has no local quant {quant}",
                                hint=f"Local quants: {', '.join(m.quant for m in local)}.")
    return local_target(local), quant


def inspect_file(resolved: Resolved):
    """Validate the GGUF (and, for stored models, that it is the file we stored)."""
    from .gguf_info import read_info

    stored = resolved.stored
    try:
        info = read_info(resolved.path)
    except InvalidModelFileError as exc:
        if stored is not None:
            exc.hint = f"The stored file is damaged. Run `slmrun pull {stored.ref} --force` to fetch it again."
        raise
    if stored is not None:
        meta = store.read_sidecar(stored.path)
        if meta.get("size") not in (None, stored.size):
            raise InvalidModelFileError(
                f"{stored.path.name} is {stored.size} bytes but was stored as {meta['size']}: the file is damaged",
                hint=f"Run `slmrun pull {stored.ref} --force` to fetch it again.")
    return info


def chat_format_for(resolved: Resolved, info, override: str | None = None):
    """What the model chats with (prompt_formats.choose_chat_format) and why."""
    from .prompt_formats import choose_chat_format

    meta = store.read_sidecar(resolved.stored.path) if resolved.stored is not None else {}
    made = resolved.custom.format if resolved.custom is not None else None
    return choose_chat_format(info, resolved.entry, meta, override, modelfile=made)
