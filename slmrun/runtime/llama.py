"""The one small place that touches llama.cpp's C API: model and context, tokens, batches, samplers.

Everything above this module (the engine, Model) speaks Python lists and ints. The
context is created for ``n_seq`` parallel sequences, each in its own KV stream by default,
as llama-server's ``-np N`` does: a token attends only to its own sequence's cells, which
made decoding 8 streams ~8% faster than one unified cache on this machine's two cores
(benchmarks/CONCURRENCY.md). llama.cpp then decodes a batch in pieces of consecutive
sequence ids with equal token counts (``split_equal``), so the engine lists a batch by
sequence id. ``kv_unified=True`` (llama.cpp's ``-kvu``) shares one cache instead: any mix
of sequences is then one micro-batch. Either way the engine keeps each sequence within
its ``n_ctx_seq`` cells.

Thread safety: tokenizing reads only the vocabulary and may run on any thread while the
engine decodes (llama-server does the same); everything that touches the context runs on
the engine thread (``Engine.call()`` runs other work there).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import ModelLoadError
from . import binding
from .binding import lib

# llama.cpp logs through a C callback; keeping a reference stops it being collected.
_LOG_CALLBACK = None
_log_enabled = None
_backend_ready = False


def set_llama_log(enabled: bool) -> None:
    """Route llama.cpp's log to stderr (enabled) or nowhere."""
    global _LOG_CALLBACK, _log_enabled
    if _log_enabled == enabled:
        return
    llama_cpp = lib()

    if enabled:
        def _cb(level, text, user_data):
            os.write(2, text or b"")
    else:
        def _cb(level, text, user_data):
            pass
    _LOG_CALLBACK = llama_cpp.llama_log_callback(_cb)
    llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
    _log_enabled = enabled


def preload() -> None:
    """Load llama.cpp's libraries now, on the calling (main) thread. `slmrun serve` does so
    before uvicorn starts: loaded later, from the worker thread of the first model load, a
    generation still streaming when SIGTERM arrived slowed from ~30 tokens/s to one token
    every ~2 s (tests/test_server_real.py's SIGTERM test; seen when the server stopped
    importing the runtime at start-up). Why the loading thread matters is not understood."""
    binding.lib()


def _restore_log() -> None:
    """llama_cpp's package __init__ (run late, see binding.py) set its own log callback: ours again."""
    global _log_enabled
    if _log_enabled is not None:
        enabled, _log_enabled = _log_enabled, None
        set_llama_log(enabled)


binding.after_init.append(_restore_log)


def system_info() -> str:
    """The CPU features this llama.cpp build was compiled to use ("AVX2 = 1 | ...")."""
    llama_cpp = lib()
    return llama_cpp.llama_print_system_info().decode("utf-8", "replace")


def cpu_features(info: str | None = None) -> str:
    """The CPU backend's features from ``system_info()`` ("AVX AVX2 ... REPACK"), sorted: which
    SIMD kernels ran, so which last digits a computation gives (tests compare recordings by it)."""
    import re

    text = system_info() if info is None else info
    cpu = text.split("CPU :", 1)[1] if "CPU :" in text else text
    cpu = re.split(r"\|\s*[A-Za-z0-9_]+ : ", cpu)[0]  # up to the next backend's section, if any
    return " ".join(sorted(set(re.findall(r"([A-Z0-9_]+) = 1\b", cpu))))


def _ensure_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        llama_cpp = lib()
        llama_cpp.llama_backend_init()
        _backend_ready = True


def cache_type_id(name: str | None) -> int | None:
    """ggml's type id for a KV cache type name ("q8_0" -> 8); None keeps llama.cpp's f16."""
    if not name:
        return None
    from ..planner import kv_cache_type

    return kv_cache_type(name).ggml_type  # raises InvalidArgumentError naming the known types


@dataclass(frozen=True)
class ContextSpec:
    """What the context is created with, in llama.cpp's names (n_ctx = all sequences' cells)."""

    n_ctx: int
    n_seq: int
    n_batch: int
    n_ubatch: int
    n_threads: int
    n_threads_batch: int
    flash_attn: bool
    type_k: str | None = None
    type_v: str | None = None
    pooling: str | None = None  # embeddings' pooling (POOLING names); None: the model's own, else "mean"
    kv_unified: bool = False  # one KV cache for all sequences, not a stream per sequence (module docstring)


# llama.cpp's enum llama_pooling_type, by the names the API uses.
POOLING = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}
POOLING_NAMES = {v: k for k, v in POOLING.items()}


class LlamaHandle:
    """A loaded llama_model and its llama_context. ``close()`` frees both, once."""

    def __init__(self, path: Path, spec: ContextSpec, *, use_mmap: bool = True, use_mlock: bool = False,
                 verbose: bool = False, model_params_hook=None, guard=None):
        """``guard``: a model split over RPC servers (runtime.rpc.Placement): every step that waits
        on them runs under its watchdog, so a server that stops answering cannot hang us."""
        llama_cpp = lib()

        self._lib = llama_cpp
        set_llama_log(verbose)
        _ensure_backend()
        type_k, type_v = cache_type_id(spec.type_k), cache_type_id(spec.type_v)
        mparams = llama_cpp.llama_model_default_params()
        # llama.cpp's default (AUTO) need not map the file; say what slmrun promises: mmap unless told.
        mparams.load_mode = {(True, False): llama_cpp.LLAMA_LOAD_MODE_MMAP,
                             (True, True): llama_cpp.LLAMA_LOAD_MODE_MMAP_MLOCK,
                             (False, True): llama_cpp.LLAMA_LOAD_MODE_MLOCK,
                             (False, False): llama_cpp.LLAMA_LOAD_MODE_NONE}[(bool(use_mmap), bool(use_mlock))]
        mparams.n_gpu_layers = 0
        self._keepalive = model_params_hook(mparams) if model_params_hook else None
        self._guard = guard
        if guard is not None:  # sending the weights may take long on a slow link: progress moves the deadline
            dog = guard.watch("loading")
            self._progress = llama_cpp.llama_progress_callback(lambda progress, user_data: (dog.kick(), True)[1])
            mparams.progress_callback = self._progress
        with self.watched("loading"):
            self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise ModelLoadError(f"llama.cpp could not load {Path(path).name}")
        # An encoder (BERT family: non-causal attention, no KV cache) only embeds: its context
        # always outputs embeddings, pooled the model's way. A generative model's context embeds
        # only in the steps that ask (set_embeddings), pooled as the spec says (mean by default).
        arch = self.meta("general.architecture") or ""
        self.encoder_only = self.meta(f"{arch}.attention.causal") == "false"
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = spec.n_ctx
        cparams.n_batch = spec.n_batch
        cparams.n_ubatch = spec.n_ubatch
        cparams.n_seq_max = spec.n_seq
        cparams.n_threads = spec.n_threads
        cparams.n_threads_batch = spec.n_threads_batch
        cparams.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if spec.flash_attn
                                   else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        cparams.kv_unified = spec.kv_unified
        cparams.no_perf = True
        cparams.embeddings = self.encoder_only
        if spec.pooling is not None:
            cparams.pooling_type = POOLING[spec.pooling]
        elif not self.encoder_only:
            cparams.pooling_type = POOLING["mean"]
        if type_k is not None:
            cparams.type_k = type_k
        if type_v is not None:
            cparams.type_v = type_v
        with self.watched("creating the context"):
            self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            self.model = None
            raise ModelLoadError(f"llama.cpp could not create a context of {spec.n_ctx} tokens for "
                                 f"{Path(path).name}", hint="Try a smaller --ctx, or fewer parallel slots.")
        if guard is not None:
            guard.connected()
        self.spec = spec
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.memory = llama_cpp.llama_get_memory(self.ctx)  # None for an encoder: it keeps no cache
        self.pooling = POOLING_NAMES.get(llama_cpp.llama_pooling_type(self.ctx), "none")
        self.n_embd = llama_cpp.llama_model_n_embd_out(self.model)
        self.add_sep = bool(llama_cpp.llama_vocab_get_add_sep(self.vocab))
        self.sep = llama_cpp.llama_vocab_sep(self.vocab)
        self._embeddings_on = self.encoder_only
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.bos = llama_cpp.llama_vocab_bos(self.vocab)
        self.eos = llama_cpp.llama_vocab_eos(self.vocab)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.add_eos = bool(llama_cpp.llama_vocab_get_add_eos(self.vocab))
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        self._piece_buf = ctypes.create_string_buffer(64)
        self.batch = llama_cpp.llama_batch_init(spec.n_batch, 0, 1)
        self._logits_type = ctypes.POINTER(ctypes.c_float * self.n_vocab)
        self._eog: list[int] | None = None

    def close(self) -> None:
        lib = self._lib
        if self.ctx:
            lib.llama_batch_free(self.batch)
            lib.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            lib.llama_model_free(self.model)
            self.model = None

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as llama.cpp reads it (as text), or None."""
        buf = ctypes.create_string_buffer(256)
        n = self._lib.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def watched(self, what: str = "an evaluation step"):
        """The watchdog's deadline around a step that waits on RPC servers; nothing for a local model."""
        return self._guard.watch(what) if self._guard is not None else contextlib.nullcontext()

    # --- tokens --------------------------------------------------------------------
    def tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        data = text.encode("utf-8")
        n_max = len(data) + 8
        buf = (ctypes.c_int32 * n_max)()
        n = self._lib.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_bos, special)
        if n < 0:
            buf = (ctypes.c_int32 * -n)()
            n = self._lib.llama_tokenize(self.vocab, data, len(data), buf, -n, add_bos, special)
        return buf[:n]

    def detokenize(self, tokens: Sequence[int], *, special: bool) -> str:
        arr = (ctypes.c_int32 * len(tokens))(*tokens)
        size = max(64, 8 * len(tokens))
        buf = ctypes.create_string_buffer(size)
        n = self._lib.llama_detokenize(self.vocab, arr, len(tokens), buf, size, False, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_detokenize(self.vocab, arr, len(tokens), buf, -n, False, special)
        return buf.raw[:n].decode("utf-8", "replace")

    def piece(self, token: int, *, special: bool = False) -> bytes:
        # Ask llama.cpp for the real length (llama-cpp-python's wrapper returns its whole
        # buffer, NULs included), with a bigger buffer when a piece needs one.
        buf = self._piece_buf
        n = self._lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:max(n, 0)]

    def vocab_table(self) -> dict:
        """What llguidance builds its tokenizer from: every token's bytes (special tokens as
        their text), its llama_token_attr flags, the vocab, the address of ``llama_tokenize``
        and the EOS token; read here so the structured package needs neither llama_cpp's
        Python package nor ctypes."""
        lib, vocab = self._lib, self.vocab
        every = range(lib.llama_vocab_n_tokens(vocab))
        return {"pieces": [self.piece(t, special=True) for t in every],
                "attrs": [lib.llama_vocab_get_attr(vocab, t) for t in every],
                "vocab_ptr": vocab, "eos": lib.llama_vocab_eos(vocab),
                "tokenize_fptr": ctypes.cast(lib._lib.llama_tokenize, ctypes.c_void_p).value}

    def token_text(self, token: int) -> str:
        return "" if token < 0 else self.piece(token, special=True).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self.vocab, token))

    # --- the context (engine thread only) ---------------------------------------------
    def decode(self, items: Sequence[tuple[int, int, int, bool]]) -> int:
        """Decode (token, position, seq_id, wants_logits) items as one batch; llama.cpp's return code."""
        b = self.batch
        token, pos, n_seq_id, seq_id, logits = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        for i, (t, p, s, out) in enumerate(items):
            token[i] = t
            pos[i] = p
            n_seq_id[i] = 1
            seq_id[i][0] = s
            logits[i] = out
        b.n_tokens = len(items)
        if self._guard is None:
            return self._lib.llama_decode(self.ctx, b)
        with self._guard.watch():  # over RPC the decode is asynchronous: wait for it under the deadline
            rc = self._lib.llama_decode(self.ctx, b)
            self._lib.llama_synchronize(self.ctx)
        return rc

    def logits(self, index: int):
        """The logits row of batch item ``index`` (a ctypes float array over llama.cpp's buffer)."""
        ptr = self._lib.llama_get_logits_ith(self.ctx, index)
        return ctypes.cast(ptr, self._logits_type).contents

    def seq_rm(self, seq_id: int, start: int, end: int = -1) -> bool:
        if not self.memory:  # an encoder keeps nothing between batches
            return True
        return bool(self._lib.llama_memory_seq_rm(self.memory, seq_id, start, end))

    def memory_clear(self) -> None:
        if self.memory:
            self._lib.llama_memory_clear(self.memory, True)

    def set_embeddings(self, on: bool) -> None:
        """Whether the next decodes output pooled embeddings (every token is then an output)
        instead of logits; an encoder always does."""
        if on != self._embeddings_on and not self.encoder_only:
            self._lib.llama_set_embeddings(self.ctx, on)
            self._embeddings_on = on

    def embedding(self, seq_id: int):
        """Sequence ``seq_id``'s pooled embedding after the last decode (a numpy copy), or None."""
        import numpy as np

        ptr = self._lib.llama_get_embeddings_seq(self.ctx, seq_id)
        if not ptr:
            return None
        return np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).copy()

    def synchronize(self) -> None:
        self._lib.llama_synchronize(self.ctx)

    # --- samplers ----------------------------------------------------------------------
    @property
    def eog_tokens(self) -> list[int]:
        """Every end-of-generation token of the vocabulary (EOS, EOT, <|im_end|>, ...)."""
        if self._eog is None:
            is_eog, vocab = self._lib.llama_vocab_is_eog, self.vocab
            self._eog = [t for t in range(self.n_vocab) if is_eog(vocab, t)]
        return self._eog

    def sampler_chain(self, *, temperature: float, top_k: int, top_p: float, min_p: float,
                      repeat_penalty: float, presence_penalty: float, frequency_penalty: float,
                      penalty_last_n: int, seed: int, ignore_eos: bool = False, dry=None, n_ctx: int = 0):
        """A native sampler chain in llama.cpp's own order (penalties, DRY, top-k, top-p, min-p,
        temperature, then a seeded draw; greedy at temperature 0). ``dry``: (multiplier, base,
        allowed_length, penalty_last_n) or None; a penalty_last_n of -1 looks back ``n_ctx``."""
        from .params import penalties_on, penalty_prefilter

        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        add = lib.llama_sampler_chain_add
        if ignore_eos:  # as llama.cpp's --ignore-eos: the end tokens' logits at -inf (llama.cpp copies them)
            eog = self.eog_tokens
            bias = (lib.llama_logit_bias * len(eog))(*[(t, float("-inf")) for t in eog])
            add(chain, lib.llama_sampler_init_logit_bias(self.n_vocab, len(eog), bias))
        keep = penalty_prefilter(temperature=temperature, top_k=top_k, repeat_penalty=repeat_penalty,
                                 presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                                 penalty_last_n=penalty_last_n, dry=dry is not None, n_vocab=self.n_vocab)
        if keep is not None:  # the same draws, without scanning the whole vocabulary (params.py)
            add(chain, lib.llama_sampler_init_top_k(keep))
        if penalties_on(repeat_penalty, presence_penalty, frequency_penalty):
            add(chain, lib.llama_sampler_init_penalties(self.n_vocab, penalty_last_n, repeat_penalty,
                                                        frequency_penalty, presence_penalty))
        if dry is not None:
            from .params import DRY_SEQUENCE_BREAKERS

            multiplier, base, allowed, last_n = dry
            breakers = (ctypes.c_char_p * len(DRY_SEQUENCE_BREAKERS))(*[b.encode() for b in DRY_SEQUENCE_BREAKERS])
            add(chain, lib.llama_sampler_init_dry(self.vocab, multiplier, base, allowed,
                                                  n_ctx if last_n < 0 else last_n, breakers, len(breakers)))
        if temperature <= 0:
            add(chain, lib.llama_sampler_init_greedy())
            return chain
        if top_k > 0:
            add(chain, lib.llama_sampler_init_top_k(top_k))
        if top_p < 1.0:
            add(chain, lib.llama_sampler_init_top_p(top_p, 1))
        if min_p > 0.0:
            add(chain, lib.llama_sampler_init_min_p(min_p, 1))
        add(chain, lib.llama_sampler_init_temp(temperature))
        add(chain, lib.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def sample(self, chain, index: int) -> int:
        return self._lib.llama_sampler_sample(chain, self.ctx, index)

    def sampler_accept(self, chain, token: int) -> None:
        self._lib.llama_sampler_accept(chain, token)

    def accept_prompt(self, chain, tokens: Sequence[int]) -> None:
        """Show the prompt's tokens to the chain's repetition penalties only (as llama.cpp's tools
        count recent prompt tokens), not to DRY: text copied from the prompt (extraction) is no loop."""
        lib = self._lib
        for i in range(lib.llama_sampler_chain_n(chain)):
            sampler = lib.llama_sampler_chain_get(chain, i)
            if lib.llama_sampler_name(sampler) == b"penalties":
                for t in tokens:
                    lib.llama_sampler_accept(sampler, t)

    def sampler_free(self, chain) -> None:
        self._lib.llama_sampler_free(chain)
