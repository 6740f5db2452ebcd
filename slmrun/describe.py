"""`slmrun show` / api.describe: everything known of a model, from the registry, its GGUF,
the store's record and, for a created model, its Modelfile."""

from __future__ import annotations

from . import store
from .api import chat_format_for, created, inspect_file, looks_like_path, resolve
from .errors import InvalidModelFileError, ModelNotFoundError, ModelNotPulledError
from .registry import load_registry, split_ref


def describe_model(ref: str, *, verify: bool = True) -> dict:
    """Everything known of a model: registry facts, GGUF metadata, the stored file."""
    d: dict = {}
    entry = None
    resolved = None
    custom = created(ref)
    if custom is not None:
        from .custom.catalog import describe_created
        return describe_created(custom, describe_model(custom.base, verify=verify))
    if not looks_like_path(ref):
        try:
            entry, _ = load_registry().resolve(ref)
        except ModelNotFoundError:
            if not store.find(*split_ref(ref)):
                raise
    try:
        resolved = resolve(ref)
    except ModelNotPulledError:
        if entry is None:
            raise
    if entry is not None:
        d.update(name=entry.name, description=entry.description, license=entry.license,
                 architecture=entry.architecture, parameters=_params(entry.n_params),
                 context_length=entry.context_length)
        here = {m.quant for m in store.find(entry.name)}
        d["quants"] = {q: q in here for q in entry.quants}
        if entry.embedding_model:
            d.update(_embedding_facts(entry.embedding_length, entry.pooling, entry.context_length))
        elif resolved is None:  # not downloaded: what the registry says
            from .prompt_formats import choose_chat_format
            d["prompt_format"] = ("the GGUF's chat template" if entry.has_chat_template
                                  else choose_chat_format(None, entry, {}, None).describe())
    if resolved is not None:
        info = inspect_file(resolved)
        d.update(name=resolved.name, architecture=info.architecture, parameters=_params(info.n_params),
                 context_length=info.context_length, quant=info.quant,
                 license=d.get("license") or info.license or "unknown",
                 embedding_length=info.embedding_length, block_count=info.block_count,
                 head_count=info.head_count, head_count_kv=info.head_count_kv, vocab_size=info.vocab_size)
        if info.is_embedding_model:
            d.update(_embedding_facts(info.embedding_length, info.pooling, info.context_length))
        else:
            d.update(prompt_format=chat_format_for(resolved, info).describe(), chat_template=info.chat_template or "none")
        d.update(file=str(resolved.path), file_size=info.size)
        if resolved.stored is not None:
            d["source"] = resolved.stored.source
            d["sha256"] = resolved.stored.sha256
            if verify and resolved.stored.sha256:
                actual = store.sha256_file(resolved.path)
                if actual != resolved.stored.sha256:
                    raise InvalidModelFileError(
                        f"{resolved.path.name} is damaged: its SHA-256 is {actual}, "
                        f"stored as {resolved.stored.sha256}",
                        hint=f"Run `slmrun pull {resolved.stored.ref} --force` to fetch it again.")
                d["sha256"] += " (verified)"
        elif verify:
            d["sha256"] = store.sha256_file(resolved.path)
    return d


def _embedding_facts(dimensions: int, pooling: str | None, max_tokens: int) -> dict:
    return {"kind": "embedding", "dimensions": dimensions, "pooling": pooling or "none (the file names none)",
            "max_tokens": max_tokens, "chat": "none: an embedding model (it embeds text, and neither chats nor completes)"}


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"
