"""``slmrun eval MODEL --reference REF --text FILE``: perplexity, and KL divergence from a
reference, by llama-perplexity's method (runtime/scoring.py walks the chunks).

The models are loaded here with what llama-perplexity would create: each a context of
``n_ctx`` tokens per sequence, ``n_batch / n_ctx`` sequences (chunks decoded together) and a
batch of ``n_batch``; the memory check counts each model's logits buffer for a batch's
scored half as well. A reference must share the model's vocabulary (KL divergence compares
two distributions over the same tokens): the GGUFs' token lists are compared before
anything is loaded, and the text must tokenize the same in both.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import InsufficientMemoryError, InvalidArgumentError, VocabularyMismatchError
from ..units import format_bytes
from .results import EvalRow

DEFAULT_CTX = 512  # llama-perplexity's defaults
DEFAULT_BATCH = 2048


@dataclass(frozen=True)
class Loaded:
    ref: str  # as the user named it
    name: str  # name:quant, or the file's name
    path: Path
    info: object  # gguf_info.GGUFInfo
    sha256: str | None  # the store's record, when the file is stored
    model: object = None


def read_text(path: str | Path) -> str:
    """The text as llama-perplexity reads ``-f``: the whole file, less one final newline."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InvalidArgumentError(f"no such text file: {p}", hint="Give the path of a UTF-8 text file (--text FILE).")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"{p.name} is not UTF-8 text (byte {exc.start})",
                                   hint="Convert it to UTF-8 first (iconv -t utf-8).") from None
    return text[:-1] if text.endswith("\n") else text


def _resolve(ref: str) -> Loaded:
    from .. import api

    resolved = api.resolve(ref)
    info = api.inspect_file(resolved)
    name = f"{resolved.name}:{resolved.quant.lower()}" if resolved.quant else resolved.path.name
    sha = resolved.stored.sha256 if resolved.stored is not None else None
    return Loaded(ref=ref, name=name, path=resolved.path, info=info, sha256=sha)


def check_same_vocabulary(model: Loaded, reference: Loaded) -> None:
    """Refuse a reference whose vocabulary is not the model's, before loading either."""
    from ..gguf_contents import vocabulary_digest

    a, b = model.info, reference.info
    if a.vocab_size != b.vocab_size or vocabulary_digest(a.path) != vocabulary_digest(b.path):
        raise VocabularyMismatchError(
            f"{model.name} and the reference {reference.name} have different vocabularies "
            f"({a.vocab_size} and {b.vocab_size} tokens{'' if a.vocab_size != b.vocab_size else ', different texts'}): "
            "KL divergence compares two distributions over one vocabulary",
            hint="Use a reference of the same model (another quant of it, ideally F16 or F32), "
                 "or leave out --reference for perplexity alone.")


def _check_memory(loaded: Sequence[Loaded], options, n_out_rows: int, hw) -> None:
    from ..planner import budget_bytes, estimate_memory, spec_from_gguf

    need = 0
    for item in loaded:
        info = item.info
        need += estimate_memory(spec_from_gguf(info), weights_bytes=info.size, n_ctx=options.n_ctx,
                                n_batch=options.n_batch, n_ubatch=options.n_ubatch, flash_attn=options.flash_attn,
                                n_parallel=options.n_parallel).total
        need += n_out_rows * info.vocab_size * 4  # llama.cpp's logits buffer for a batch's scored half
    budget = budget_bytes(hw)
    if need > budget:
        raise InsufficientMemoryError(
            f"evaluating {len(loaded)} model{'s' if len(loaded) > 1 else ''} together at a context of "
            f"{options.n_ctx} with a batch of {options.n_batch} needs about {format_bytes(need)}; this machine "
            f"has {format_bytes(budget)} available after a safety reserve",
            hint="Use a smaller --batch (as small as --ctx), fewer models at once, or --force to try anyway.")


def _load_all(loaded: Sequence[Loaded], *, n_ctx: int, n_batch: int, n_seq: int, n_threads: int | None,
              force: bool) -> list[Loaded]:
    from dataclasses import replace

    from .. import api, config
    from ..hardware import detect
    from ..runtime import LoadOptions, Model

    hw = detect()
    threads = n_threads or api.default_threads(hw)
    options = LoadOptions(n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=n_batch,
                          n_ubatch=min(512, n_batch), flash_attn=config.flash_attn_default(),
                          verbose=config.debug(), n_parallel=n_seq)
    if not force:
        _check_memory(loaded, options, n_seq * (n_ctx - n_ctx // 2), hw)
    out = []
    try:
        for item in loaded:
            out.append(replace(item, model=Model(item.path, options, name=item.name, info=item.info)))
    except BaseException:
        for item in out:
            item.model.close()
        raise
    return out


def evaluate_perplexity(models: Sequence[str], text: str, *, reference: str | None = None,
                        n_ctx: int = DEFAULT_CTX, n_batch: int = DEFAULT_BATCH, n_threads: int | None = None,
                        force: bool = False, progress: Callable[[int, int, str], None] | None = None,
                        save: bool = True, text_name: str = "text", llama_compat: bool = False) -> list[EvalRow]:
    """Perplexity of each model over ``text`` (and, with ``reference``, the reference's,
    ln(PPL ratio), KL divergence per token and top-1 agreement), by llama-perplexity's
    method at ``n_ctx`` / ``n_batch``. One row per model; each is kept in the results
    store under the model file's SHA-256 (``save=False``: not kept). ``llama_compat``: the
    reference's log-probabilities rounded to 16 bits as llama-perplexity's
    ``--kl-divergence-base`` file keeps them, which reproduces its figures exactly (slmrun
    otherwise compares the two models' logits in float)."""
    from ..runtime.scoring import chunk_plan, score_group
    from .stats import summarize

    if not models:
        raise InvalidArgumentError("name at least one model to evaluate")
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgumentError("the text to evaluate on is empty", hint="Give a text of a few thousand words.")
    # The batch rule first (no model needed): llama-perplexity asserts it.
    chunk_plan(2 * n_ctx, n_ctx, n_batch)
    targets = [_resolve(m) for m in models]
    ref = _resolve(reference) if reference is not None else None
    if ref is not None:
        for t in targets:
            check_same_vocabulary(t, ref)
    n_seq = max(1, n_batch // n_ctx)
    batch = min(n_batch, n_seq * n_ctx)
    everyone = ([ref] if ref is not None else []) + targets
    loaded = _load_all(everyone, n_ctx=n_ctx, n_batch=batch, n_seq=n_seq, n_threads=n_threads, force=force)
    try:
        ref_l = loaded[0] if ref is not None else None
        model_ls = loaded[1:] if ref is not None else loaded
        tokens = model_ls[0].model.tokenize(text, special=False, add_bos=True)
        plan = chunk_plan(len(tokens), n_ctx, n_batch)  # a text shorter than two chunks stops here
        for item in loaded:
            if item is not model_ls[0] and item.model.tokenize(text, special=False, add_bos=True) != tokens:
                raise VocabularyMismatchError(
                    f"{item.name} tokenizes the text differently from {model_ls[0].name}: their tokenizers differ",
                    hint="Compare quants of one model (the same GGUF conversion).")
        parts: list[list] = [[] for _ in model_ls]
        t0 = time.perf_counter()
        done = 0
        label = f"{plan.n_chunk} chunks of {n_ctx} tokens"
        if progress:
            progress(0, plan.n_scored, label)
        for first, count in plan.groups():
            figs = score_group([m.model for m in model_ls], tokens, plan, first, count,
                               reference=ref_l.model if ref_l else None, base16=llama_compat)
            for i, f in enumerate(figs):
                parts[i].append(f)
            done += count * plan.scored_per_chunk
            if progress:
                progress(done, plan.n_scored, label)
        seconds = time.perf_counter() - t0
    finally:
        for item in loaded:
            item.model.close()
    import numpy as np

    text_sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    ref_sha = (ref.sha256 or _sha(ref.path)) if ref else None  # a file outside the store: hashed once
    rows = []
    for item, figs in zip(model_ls, parts):
        def cat(name):
            values = [getattr(f, name) for f in figs]
            return None if values[0] is None else np.concatenate(values)
        figures = summarize(cat("nll"), cat("ref_nll"), cat("kld"), cat("same_top"))
        meta = {"reference": ref.name if ref else None, "reference_quant": ref.info.quant if ref else None,
                "reference_sha256": ref_sha,
                "text": text_name, "text_sha256": text_sha, "n_ctx": n_ctx, "n_batch": batch,
                "n_chunks": plan.n_chunk, "seconds": round(seconds, 3), "quant": item.info.quant,
                **({"llama_compat": True} if llama_compat and ref else {})}
        row = EvalRow(model=item.name, method="perplexity", task="perplexity", figures=figures, meta=meta,
                      sha256=item.sha256)
        rows.append(row)
    if save:
        from . import results
        for item, row in zip(model_ls, rows):
            row.sha256 = row.sha256 or _sha(item.path)  # a file outside the store: hashed here
            results.save(row.sha256, row)
    return rows


def _sha(path: Path) -> str:
    from ..store import sha256_file
    return sha256_file(path)
