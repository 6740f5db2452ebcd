"""The runtime: the only module that imports llama_cpp.

``Model`` wraps ``llama_cpp.Llama`` with defaults that are fast on a small CPU
(threads = physical/performance cores, flash attention on, mmap on, context from the
model), a streaming token loop whose per-token Python work is kept small, and
``Stats`` read from llama.cpp's own perf counters.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import ContextOverflowError, InvalidArgumentError, ModelLoadError
from ..planner.quants import KV_CACHE_TYPE_IDS as _CACHE_TYPES

# llama.cpp logs through a C callback; keeping a reference stops it being collected.
_LOG_CALLBACK = None
_log_enabled = None


def set_llama_log(enabled: bool) -> None:
    """Route llama.cpp's log to stderr (enabled) or nowhere."""
    global _LOG_CALLBACK, _log_enabled
    if _log_enabled == enabled:
        return
    import llama_cpp

    if enabled:
        def _cb(level, text, user_data):
            os.write(2, text or b"")
    else:
        def _cb(level, text, user_data):
            pass
    _LOG_CALLBACK = llama_cpp.llama_log_callback(_cb)
    llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
    _log_enabled = enabled


def system_info() -> str:
    """The CPU features this llama.cpp build was compiled to use ("AVX2 = 1 | ...")."""
    import llama_cpp
    return llama_cpp.llama_print_system_info().decode("utf-8", "replace")


@dataclass
class Stats:
    prompt_tokens: int = 0  # tokens in the prompt
    generated_tokens: int = 0  # tokens produced (end-of-generation token not counted)
    load_s: float = 0.0  # time to load the model (same for every call on one Model)
    prompt_tps: float = 0.0  # prompt evaluation rate, from llama.cpp's counters
    gen_tps: float = 0.0  # end-to-end generation rate: sampling, detokenising, streaming
    ttft_s: float = 0.0  # call start to first piece of text
    prompt_eval_tokens: int = 0  # prompt tokens actually evaluated (the rest came from the KV cache)
    cached_tokens: int = 0  # prompt tokens reused from the previous call's KV cache
    prompt_s: float = 0.0
    gen_s: float = 0.0
    total_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (end of generation or a stop string) or "length"
    stats: Stats = field(default_factory=Stats)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class LoadOptions:
    """What the model is loaded with, in llama.cpp's names."""

    n_ctx: int
    n_threads: int
    n_threads_batch: int
    n_batch: int = 512
    n_ubatch: int = 512
    flash_attn: bool = True
    use_mmap: bool = True
    use_mlock: bool = False
    type_k: str | None = None  # KV cache type: "f16" (default), "q8_0", "q4_0"
    type_v: str | None = None
    seed: int | None = None
    verbose: bool = False


class Model:
    """A loaded model. Use as a context manager, or call ``close()``."""

    def __init__(self, path: Path, options: LoadOptions, *, prompt_format=None,
                 chat_template: str | None = None, name: str | None = None, info=None, plan=None):
        import llama_cpp

        self.path = Path(path)
        self.name = name or self.path.stem
        self.options = options
        self.info = info  # gguf_info.GGUFInfo
        self.plan = plan
        self.prompt_format = prompt_format
        self.chat_template = chat_template
        set_llama_log(options.verbose)
        kv = {}
        for key in ("type_k", "type_v"):
            value = getattr(options, key)
            if value:
                if value.lower() not in _CACHE_TYPES:
                    raise InvalidArgumentError(f"unknown KV cache type {value!r}",
                                               hint=f"Use one of {', '.join(_CACHE_TYPES)}.")
                kv[key] = _CACHE_TYPES[value.lower()]
        t0 = time.perf_counter()
        try:
            self._llama = llama_cpp.Llama(
                model_path=str(self.path), n_ctx=options.n_ctx, n_threads=options.n_threads,
                n_threads_batch=options.n_threads_batch, n_batch=options.n_batch,
                n_ubatch=options.n_ubatch, flash_attn=options.flash_attn, use_mmap=options.use_mmap,
                use_mlock=options.use_mlock, seed=options.seed if options.seed is not None else 0xFFFFFFFF,
                verbose=options.verbose, chat_format="chatml" if chat_template is None else None, **kv)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"llama.cpp could not load {self.path.name}: {exc}") from exc
        self.load_s = time.perf_counter() - t0
        self._ctx = self._llama._ctx.ctx
        self._vocab = self._llama._model.vocab
        self._is_eog = llama_cpp.llama_vocab_is_eog
        self._perf = llama_cpp.llama_perf_context
        self._perf_reset = llama_cpp.llama_perf_context_reset
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(64)
        self._closed = False

    # --- lifecycle -----------------------------------------------------------------
    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._llama.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # a safety net; close() is the contract
        try:
            self.close()
        except Exception:
            pass

    @property
    def n_ctx(self) -> int:
        """The usable context: llama.cpp may round its own up, but the token record
        llama-cpp-python keeps has the size that was asked for."""
        self._check_open()
        return min(self._llama.n_ctx(), len(self._llama.input_ids))

    @property
    def has_chat_format(self) -> bool:
        """A chat template in the GGUF or a prompt format from the registry: chat() works."""
        return self.chat_template is not None or self.prompt_format is not None

    @property
    def n_tokens_cached(self) -> int:
        """Tokens currently held in the KV cache (what the next call can reuse)."""
        return self._llama.n_tokens

    # --- tokens ----------------------------------------------------------------------
    def _check_open(self) -> None:
        # llama.cpp's pointers are freed by close(); touching them would crash the process.
        if self._closed:
            raise InvalidArgumentError("this model was closed", hint="Load it again with slmrun.load().")

    def tokenize(self, text: str, *, special: bool = True, add_bos: bool = True) -> list[int]:
        self._check_open()
        return self._llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def detokenize(self, tokens: Sequence[int], *, special: bool = True) -> str:
        self._check_open()
        return self._llama.detokenize(list(tokens), special=special).decode("utf-8", "replace")

    # --- generation ------------------------------------------------------------------
    def complete(self, prompt: str, **kwargs) -> Completion:
        """Generate a completion of ``prompt`` (plain text, no chat template)."""
        return self._run(self.tokenize(prompt, special=False), stream=False, **kwargs)

    def stream(self, prompt: str, **kwargs) -> Iterator[str]:
        """Yield text pieces of the completion as they are generated."""
        return self._run(self.tokenize(prompt, special=False), stream=True, **kwargs)

    def chat(self, messages: list[dict], *, stream: bool = False, **kwargs):
        """Apply the model's chat format to ``messages`` and generate the reply."""
        tokens, stops = self._chat_prompt(messages)
        stop = list(kwargs.pop("stop", None) or []) + list(stops)
        return self._run(tokens, stream=stream, stop=stop, strip_leading=True, **kwargs)

    def chat_tokens(self, messages: list[dict]) -> list[int]:
        """The prompt tokens ``chat(messages)`` would evaluate."""
        return self._chat_prompt(messages)[0]

    def _chat_prompt(self, messages: list[dict]) -> tuple[list[int], tuple[str, ...]]:
        from ..chat import render_prompt

        bos = self._token_text(self._llama.token_bos())
        prompt, stops = render_prompt(messages, template=self.chat_template, fmt=self.prompt_format,
                                      bos=bos, eos=self._token_text(self._llama.token_eos()))
        # A template that writes the BOS text itself must not get a second one.
        add_bos = not (bos and prompt.startswith(bos))
        return self.tokenize(prompt, special=True, add_bos=add_bos), stops

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._piece_bytes(token, special=True).decode("utf-8", "replace")

    def _piece_bytes(self, token: int, special: bool = False) -> bytes:
        # llama-cpp-python's LlamaModel.token_to_piece returns its whole 32-byte buffer,
        # NULs included; ask llama.cpp for the real length (and a bigger buffer if needed).
        import llama_cpp

        buf = self._piece_buf
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:max(n, 0)]

    def _piece(self, token: int) -> bytes:
        """The text bytes of a generated token, cached: the token loop's only lookup."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._piece_bytes(token)
        return piece

    def _run(self, tokens, *, stream, **kwargs):
        gen = self._generate(tokens, **kwargs)
        if stream:
            return gen
        pieces = []
        try:
            while True:
                pieces.append(next(gen))
        except StopIteration as stop:
            completion = stop.value
        completion.text = "".join(pieces)
        return completion

    def _generate(self, tokens: list[int], *, max_tokens: int | None = 256, temperature: float = 0.8,
                  top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05, repeat_penalty: float = 1.0,
                  seed: int | None = None, stop: Sequence[str] | str | None = None,
                  strip_leading: bool = False):
        """The token loop. A generator of text pieces whose return value is the Completion."""
        self._check_open()
        llama = self._llama
        n_ctx = self.n_ctx
        if not tokens:
            raise InvalidArgumentError("the prompt is empty", hint="Give a prompt with some text.")
        if len(tokens) >= n_ctx:
            raise ContextOverflowError(
                f"the prompt is {len(tokens)} tokens but the context holds {n_ctx}",
                hint="Shorten the prompt or raise the context with --ctx (up to the model's "
                     f"{self.info.context_length if self.info else 'trained'} tokens).")
        if max_tokens is not None and max_tokens < 0:
            raise InvalidArgumentError(f"max_tokens must be >= 0, got {max_tokens}")
        if temperature < 0:
            raise InvalidArgumentError(f"temperature must be >= 0, got {temperature}")
        budget = n_ctx - len(tokens)
        limit = budget if max_tokens is None else min(max_tokens, budget)
        stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
        hold = max((len(s) for s in stops), default=1) - 1  # chars kept back that may start a stop

        if seed is not None:
            llama.set_seed(seed)
        cached_before = llama.n_tokens
        common = 0
        for a, b in zip(llama._input_ids[:cached_before], tokens):
            if a != b:
                break
            common += 1
        self._perf_reset(self._ctx)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        pieces = self._pieces
        piece_of = self._piece
        is_eog, vocab = self._is_eog, self._vocab
        text, emitted, n_gen, finish, cut_by_stop = "", 0, 0, "length", False
        t_start = time.perf_counter()
        t_first = None
        if limit > 0:
            gen = llama.generate(tokens, top_k=top_k, top_p=top_p, min_p=min_p, temp=temperature,
                                 repeat_penalty=repeat_penalty, reset=True)
            for token in gen:
                if is_eog(vocab, token):
                    finish = "stop"
                    break
                n_gen += 1
                piece = pieces.get(token)
                text += decoder.decode(piece if piece is not None else piece_of(token))
                if strip_leading and emitted == 0:
                    text = text.lstrip()
                if stops:
                    cut = min((i for i in (text.find(s, max(0, emitted - hold)) for s in stops) if i >= 0),
                              default=-1)
                    if cut >= 0:
                        text = text[:cut]
                        finish, cut_by_stop = "stop", True
                        break
                    ready = len(text) - hold
                else:
                    ready = len(text)
                if ready > emitted:
                    if t_first is None:
                        t_first = time.perf_counter()
                    yield text[emitted:ready]
                    emitted = ready
                if n_gen >= limit:
                    break
            gen.close()
        if not cut_by_stop:
            text += decoder.decode(b"", final=True)
        if len(text) > emitted:
            if t_first is None:
                t_first = time.perf_counter()
            yield text[emitted:]
        t_end = time.perf_counter()
        perf = self._perf(self._ctx)
        # llama.cpp counts a multi-token decode as prompt evaluation; the prompt's
        # tokens not counted there came from the KV cache.
        n_p = perf.n_p_eval
        prompt_s = perf.t_p_eval_ms / 1000.0
        ttft = (t_first or t_end) - t_start
        gen_s = t_end - (t_first or t_end)
        stats = Stats(
            prompt_tokens=len(tokens), generated_tokens=n_gen, load_s=self.load_s,
            prompt_tps=n_p / prompt_s if prompt_s > 0 else 0.0,
            gen_tps=(n_gen - 1) / gen_s if n_gen > 1 and gen_s > 0 else 0.0,
            ttft_s=ttft, prompt_eval_tokens=n_p, cached_tokens=max(0, min(common, len(tokens) - n_p)),
            prompt_s=prompt_s, gen_s=gen_s, total_s=t_end - t_start)
        return Completion(text=text, finish_reason=finish, stats=stats)

    # --- benchmarking: llama-bench's method, for slmrun.bench -------------------------
    # Raw decode with no sampling, so slmrun's numbers compare 1:1 with llama.cpp's
    # llama-bench (tools/llama-bench: test_prompt / test_gen). Added for slmrun.bench;
    # the generation path above does not use these.
    def clear_kv(self) -> None:
        """Empty the KV cache and forget the cached prompt: the next decode starts at position 0."""
        import llama_cpp

        self._check_open()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)
        self._llama.reset()  # n_tokens = 0, so the next generate() re-evaluates its whole prompt

    def _bench_tokens(self, n: int, rng) -> list[int]:
        # Random tokens as llama-bench draws them; BOS first when the model wants one.
        import llama_cpp

        n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        tokens = [rng.randrange(n_vocab) for _ in range(n)]
        if tokens and self._llama._model.add_bos_token():
            tokens[0] = self._llama.token_bos()
        return tokens

    def _bench_check(self, n_tokens: int) -> None:
        self._check_open()
        if n_tokens < 1:
            raise InvalidArgumentError(f"the number of tokens must be >= 1, got {n_tokens}")
        used = self._llama.n_tokens
        n_ctx = self.n_ctx
        if used + n_tokens > n_ctx:
            raise ContextOverflowError(
                f"{n_tokens} tokens after {used} cached do not fit the context of {n_ctx}",
                hint="Use fewer tokens, clear the cache (clear_kv), or load with a larger context (--ctx).")

    def bench_pp(self, n_tokens: int, *, n_batch: int | None = None, seed: int = 0) -> float:
        """Seconds to decode ``n_tokens`` random tokens in batches of ``n_batch`` (default:
        the loaded n_batch), logits for each batch's last token only: prompt processing
        as llama-bench measures it. Continues the KV cache; call clear_kv() first."""
        import random

        import llama_cpp

        self._bench_check(n_tokens)
        n_batch = min(n_batch or self.options.n_batch, self.options.n_batch)
        if n_batch < 1:
            raise InvalidArgumentError(f"n_batch must be >= 1, got {n_batch}")
        tokens = self._bench_tokens(n_tokens, random.Random(seed))
        llama, ctx, decode = self._llama, self._ctx, llama_cpp.llama_decode
        batch = llama._batch  # sized for the loaded n_batch
        t0 = time.perf_counter()
        for start in range(0, n_tokens, n_batch):
            chunk = tokens[start:start + n_batch]
            batch.set_batch(chunk, n_past=llama.n_tokens, logits_all=False)
            if decode(ctx, batch.batch) != 0:
                raise ModelLoadError(f"llama.cpp failed to decode a batch of {len(chunk)} tokens")
            llama.n_tokens += len(chunk)
        llama_cpp.llama_synchronize(ctx)
        elapsed = time.perf_counter() - t0
        llama.input_ids[llama.n_tokens - n_tokens:llama.n_tokens] = tokens  # keeps prefix reuse honest
        return elapsed

    def bench_tg(self, n_tokens: int, *, seed: int = 0) -> float:
        """Seconds to decode ``n_tokens`` tokens one at a time with no sampling: token
        generation as llama-bench measures it. Continues the KV cache."""
        import random

        import llama_cpp

        self._bench_check(n_tokens)
        tokens = self._bench_tokens(n_tokens, random.Random(seed))
        llama, ctx, decode, sync = self._llama, self._ctx, llama_cpp.llama_decode, llama_cpp.llama_synchronize
        batch = llama._batch
        b = batch.batch
        t0 = time.perf_counter()
        for token in tokens:
            # The one-token batch written in place: 5 ctypes stores, ~2 us of Python per token.
            b.n_tokens, b.token[0], b.pos[0], b.n_seq_id[0], b.logits[0] = 1, token, llama.n_tokens, 1, True
            b.seq_id[0][0] = 0
            if decode(ctx, b) != 0:
                raise ModelLoadError("llama.cpp failed to decode a token")
            sync(ctx)
            llama.n_tokens += 1
        elapsed = time.perf_counter() - t0
        llama.input_ids[llama.n_tokens - n_tokens:llama.n_tokens] = tokens
        return elapsed
