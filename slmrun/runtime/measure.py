"""Raw decode timings for ``slmrun.bench``: llama-bench's method, next to the engine, not in its API.

No sampling and no text, so slmrun's numbers compare 1:1 with llama.cpp's llama-bench
(tools/llama-bench: test_prompt / test_gen). Each call takes the context for itself
(``Engine.call()``: on the engine's thread, once running requests end, new ones held
back meanwhile) and works on sequence 0, continuing from where the last call left it; ``clear_kv`` starts
over at position 0.
"""

from __future__ import annotations

import random
import time

from ..errors import ContextOverflowError, GenerationError, InvalidArgumentError


def clear_kv(model) -> None:
    """Empty the KV cache (every slot's prompt cache too): the next decode starts at position 0."""
    model._check_open()

    def clear(h):
        model._engine.forget_cache()
        model._bench_pos = 0
    model._engine.call(clear)


def _position(model, h, n_tokens: int) -> int:
    if n_tokens < 1:
        raise InvalidArgumentError(f"the number of tokens must be >= 1, got {n_tokens}")
    used = getattr(model, "_bench_pos", 0)
    if used + n_tokens > model.n_ctx:
        raise ContextOverflowError(
            f"{n_tokens} tokens after {used} cached do not fit the context of {model.n_ctx}",
            hint="Use fewer tokens, clear the cache (clear_kv), or load with a larger context (--ctx).")
    if used == 0:  # sequence 0 may hold a request's prompt cache: start it empty
        h.seq_rm(0, 0, -1)
    return used


def _random_tokens(h, n: int, seed: int) -> list[int]:
    # Random tokens as llama-bench draws them; BOS first when the model wants one.
    rng = random.Random(seed)
    tokens = [rng.randrange(h.n_vocab) for _ in range(n)]
    if tokens and h.add_bos:
        tokens[0] = h.bos
    return tokens


def bench_pp(model, n_tokens: int, *, n_batch: int | None = None, seed: int = 0) -> float:
    """Seconds to decode ``n_tokens`` random tokens in batches of ``n_batch`` (default: the
    loaded n_batch), logits for each batch's last token only: prompt processing as
    llama-bench measures it. Continues the KV cache; call clear_kv() first."""
    model._check_open()
    n_batch = min(n_batch or model.options.n_batch, model.options.n_batch)
    if n_batch < 1:
        raise InvalidArgumentError(f"n_batch must be >= 1, got {n_batch}")

    def run(h) -> float:
        pos = _position(model, h, n_tokens)
        tokens = _random_tokens(h, n_tokens, seed)
        t0 = time.perf_counter()
        for start in range(0, n_tokens, n_batch):
            chunk = tokens[start:start + n_batch]
            items = [(t, pos + start + j, 0, j == len(chunk) - 1) for j, t in enumerate(chunk)]
            if h.decode(items) != 0:
                raise GenerationError(f"llama.cpp failed to decode a batch of {len(chunk)} tokens")
        h.synchronize()
        elapsed = time.perf_counter() - t0
        model._bench_pos = pos + n_tokens
        model._engine.forget_cache_records()
        return elapsed
    return model._engine.call(run)


def bench_tg(model, n_tokens: int, *, seed: int = 0) -> float:
    """Seconds to decode ``n_tokens`` tokens one at a time with no sampling: token
    generation as llama-bench measures it. Continues the KV cache."""
    model._check_open()

    def run(h) -> float:
        pos = _position(model, h, n_tokens)
        tokens = _random_tokens(h, n_tokens, seed)
        lib, ctx, b = h._lib, h.ctx, h.batch
        decode, sync = lib.llama_decode, lib.llama_synchronize
        b.n_seq_id[0], b.seq_id[0][0], b.logits[0], b.n_tokens = 1, 0, True, 1
        t0 = time.perf_counter()
        with h.watched():  # a model split over RPC servers: no step may hang on them
            for i, token in enumerate(tokens):
                # The one-token batch written in place: two ctypes stores a token.
                b.token[0], b.pos[0] = token, pos + i
                if decode(ctx, b) != 0:
                    raise GenerationError("llama.cpp failed to decode a token")
                sync(ctx)
        elapsed = time.perf_counter() - t0
        model._bench_pos = pos + n_tokens
        model._engine.forget_cache_records()
        return elapsed
    return model._engine.call(run)
