"""Greedy generation through llama.cpp's low-level API, local or split across RPC servers.

What the tests and benchmarks/rpc.py use to prove slmrun.runtime.rpc's placement works
the way a loader will use it (apply() on llama_model_params, watch() around each
decode, connected() after the context exists). Also a script, so a test can run a
client in its own process and see how it ends:

    python tests/rpc_client.py MODEL [--rpc H:P,H:P] [-n 32] [--prompt TEXT] [--no-local]

prints each piece as it is generated, flushed, then "\\n[done]".
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class Generator:
    """One model + context; ``placement`` None runs everything on the local CPU."""

    def __init__(self, model_path: str | Path, placement=None, *, n_ctx: int = 512, n_threads: int = 1,
                 quiet: bool = True, flash_attn: bool = True):
        import llama_cpp

        if quiet:
            from slmrun.runtime import set_llama_log
            set_llama_log(False)
        self.ll, self.placement = llama_cpp, placement
        mp = llama_cpp.llama_model_default_params()
        mp.n_gpu_layers = 0
        if placement is not None:
            placement.apply(mp)
        with self._watch("loading"):
            self.model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {model_path}")
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, n_ctx, n_ctx
        cp.n_threads = cp.n_threads_batch = n_threads
        cp.flash_attn_type = 1 if flash_attn else 0  # slmrun's default (on), llama-bench -fa 1
        with self._watch("creating the context"):
            self.ctx = llama_cpp.llama_init_from_model(self.model, cp)
        if placement is not None:
            placement.connected()
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.sampler = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        llama_cpp.llama_sampler_chain_add(self.sampler, llama_cpp.llama_sampler_init_greedy())

    def _watch(self, what: str = "an evaluation step"):
        import contextlib
        return self.placement.watch(what) if self.placement is not None else contextlib.nullcontext()

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        size = len(data) + 8
        while True:
            buf = (self.ll.llama_token * size)()
            n = self.ll.llama_tokenize(self.vocab, data, len(data), buf, len(buf), True, False)
            if n >= 0:
                return list(buf[:n])
            size = -n  # too small: llama.cpp says how many it needs

    def piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self.ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def decode(self, tokens: list[int]) -> None:
        arr = (self.ll.llama_token * len(tokens))(*tokens)
        with self._watch():
            rc = self.ll.llama_decode(self.ctx, self.ll.llama_batch_get_one(arr, len(tokens)))
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def generate(self, prompt: str, n: int, on_piece=None) -> tuple[str, list[float]]:
        """Greedy text of up to n tokens, and the time of each generated token's decode."""
        self.ll.llama_memory_clear(self.ll.llama_get_memory(self.ctx), True)
        self.ll.llama_sampler_reset(self.sampler)
        self.decode(self.tokenize(prompt))
        out, times = b"", []
        for _ in range(n):
            with self._watch():  # decode is asynchronous over RPC: reading the logits waits for it
                tok = self.ll.llama_sampler_sample(self.sampler, self.ctx, -1)
            if self.ll.llama_vocab_is_eog(self.vocab, tok):
                break
            piece = self.piece(tok)
            out += piece
            if on_piece:
                on_piece(piece)
            t0 = time.perf_counter()
            self.decode([tok])
            times.append(time.perf_counter() - t0)
        return out.decode("utf-8", "replace"), times

    def _sample(self) -> int:
        with self._watch():
            return self.ll.llama_sampler_sample(self.sampler, self.ctx, -1)

    def bench(self, n_prompt: int, n_gen: int) -> tuple[float, float]:
        """(prompt tokens/s, generation tokens/s) as llama-bench measures them: a prompt of
        n_prompt tokens in one batch, then n_gen single-token decodes from an empty cache,
        each followed by the (greedy) sampling that waits for its result."""
        mem = self.ll.llama_get_memory(self.ctx)
        text = " ".join(["the quick brown fox jumps over the lazy dog"] * (n_prompt // 4 + 1))
        prompt = self.tokenize(text)[:n_prompt]
        self.ll.llama_memory_clear(mem, True)
        t0 = time.perf_counter()
        self.decode(prompt)
        self._sample()
        pp = len(prompt) / (time.perf_counter() - t0)
        self.ll.llama_memory_clear(mem, True)
        tok = prompt[0]
        t0 = time.perf_counter()
        for _ in range(n_gen):
            self.decode([tok])
            tok = self._sample()
        return pp, n_gen / (time.perf_counter() - t0)

    def close(self) -> None:
        self.ll.llama_sampler_free(self.sampler)
        self.ll.llama_free(self.ctx)
        self.ll.llama_model_free(self.model)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--rpc", default="")
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--no-local", action="store_true")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds to sleep after each token")
    a = ap.parse_args(argv)
    from slmrun.cli.rpc import exit_on_rpc_failure
    from slmrun.runtime import rpc

    exit_on_rpc_failure()
    placement = None
    if a.rpc:
        try:
            placement = rpc.place(a.model, a.rpc, use_local=not a.no_local)
        except Exception as exc:  # the library's one-line error and exit code, as the CLI would give them
            from slmrun.cli import exit_code_for
            print(f"Error: {exc}", file=sys.stderr)
            return exit_code_for(exc)
    gen = Generator(a.model, placement)

    def show(piece: bytes) -> None:
        sys.stdout.write(piece.decode("utf-8", "replace"))
        sys.stdout.flush()
        if a.delay:
            time.sleep(a.delay)

    gen.generate(a.prompt, a.n, show)
    print("\n[done]", flush=True)
    gen.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
