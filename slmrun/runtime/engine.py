"""The engine: one loaded model, any number of callers, continuous batching.

One thread owns the llama.cpp context. Callers (any thread, or asyncio through the
Response) submit requests to a first-come-first-served queue; the engine gives each
admitted request a slot (a llama.cpp sequence id) and, every step, decodes in one
``llama_decode`` the next token of every generating sequence plus prompt chunks of
newly admitted ones, up to ``n_batch`` tokens. Each sequence samples on its own native
sampler chain (its own parameters and seed).

Slots keep what their last request left in the KV cache as a prompt cache, as
llama-server's slots do: a new request takes the free slot whose cached tokens share the
longest prefix with its prompt, the cells past that prefix are removed at once
(``llama_memory_seq_rm``), and only the rest of the prompt is evaluated. That is what
makes a chat's follow-up turn cost only its new tokens. A cancelled request's cells are
removed at once. Each slot holds at most ``n_ctx_seq`` cells (its own KV stream, or its
share of a unified cache of ``n_parallel x n_ctx_seq``), so a cache left behind never
denies another slot room.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import deque
from concurrent.futures import Future

from ..errors import GenerationError, ModelClosedError, QueueFullError
from .decoding import DecodeSteps, _Broken
from .embedding import EmbedJob, EmbedSteps
from .lora import Turns
from .response import Stats, closed_error
from .slots import Request, Seq, Slot
from .speculative import SpecSteps


class Engine(DecodeSteps, EmbedSteps, SpecSteps):
    def __init__(self, handle, *, n_parallel: int, n_ctx_seq: int, n_batch: int, name: str,
                 load_s: float = 0.0, max_queue: int | None = None, piece_of=None, on_exit=None,
                 speculative: str = "auto", spec_slope: float | None = None, lora=None):
        self._h = handle
        self._lora = lora  # runtime.lora.LoadedAdapters, or None: no adapters, no grouping
        self._turns = Turns()
        self._on_exit = on_exit  # frees llama.cpp: run by this thread, after its last use of the context
        self.n_parallel = n_parallel
        self.n_ctx_seq = n_ctx_seq
        self.n_batch = n_batch
        self.name = name
        self.load_s = load_s
        self.max_queue = max_queue
        self._piece_of = piece_of or (lambda t: handle.piece(t))
        self._slots = [Slot(i) for i in range(n_parallel)]
        self._queue: deque[Request] = deque()
        self._active: list[Seq] = []
        self._cond = threading.Condition()
        self._step_lock = threading.Lock()
        self._tasks: deque[tuple[object, Future]] = deque()  # call()s waiting for the thread
        self._embeds: deque[EmbedJob] = deque()  # embed() calls with inputs not yet in a step
        self._embed_turn = False  # a generative model alternates embedding and generation steps
        self._embed_inflight: list[EmbedJob] = []
        self._closing = False
        self._broken: BaseException | None = None  # an RPC server this model is split over failed
        self._stopped = threading.Event()
        self.counters = {"requests": 0, "prompt_tokens": 0, "prompt_eval_tokens": 0, "generated_tokens": 0,
                         "cancelled": 0, "errors": 0, "steps": 0, "embed_inputs": 0, "embed_tokens": 0,
                         "draft_tokens": 0, "accepted_tokens": 0}
        self._spec_init(speculative, spec_slope)  # speculative.py: the mode and the step costs
        self._thread = threading.Thread(target=self._run, name=f"slmrun-engine[{name}]", daemon=True)
        self._thread.start()

    # --- any thread ------------------------------------------------------------------
    def _check_accepting(self) -> None:
        """With the condition held: raise unless new work may be queued."""
        if self._broken is not None:
            raise copy.copy(self._broken)
        if self._closing:
            raise ModelClosedError(f"{self.name} is closed")

    def submit(self, req: Request) -> None:
        with self._cond:
            self._check_accepting()
            if self.max_queue is not None:
                free = sum(not s.busy for s in self._slots)
                if len(self._queue) >= self.max_queue + free:
                    raise QueueFullError(f"{self.name}: all {self.n_parallel} slots are busy and "
                                         f"{len(self._queue)} requests are waiting")
            self._queue.append(req)
            self.counters["requests"] += 1
            self._cond.notify_all()

    def cancel(self, req: Request) -> None:
        with self._cond:
            req.cancelled = True
            self._cond.notify_all()

    def close(self) -> None:
        """Fail what is running or waiting with ModelClosedError, stop the thread, free llama.cpp.
        Called on the engine's own thread (a done-callback that closes the model), it returns at
        once and the thread frees everything when the step it is in ends."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            broken = self._broken is not None
        if threading.current_thread() is not self._thread and not broken:
            self._thread.join()

    @property
    def broken(self) -> BaseException | None:
        return self._broken

    def fail_broken(self, error: BaseException) -> None:
        """From any thread, when an RPC server the model is split over has failed: the engine
        thread is stuck inside llama.cpp (or will find its context unusable), so every request
        ends here with ``error``, without a call into llama.cpp, and new ones are refused. The
        thread and the model's memory are lost: freeing them would talk to the dead server."""
        with self._cond:
            if self._broken is not None:
                return
            self._broken, self._closing = error, True
            queued, self._queue = list(self._queue), deque()
            tasks, self._tasks = list(self._tasks), deque()
            active = list(self._active)
            self._cond.notify_all()
        for _, done in tasks:
            done.set_exception(error)
        self._fail_embeds(error)
        for req in [seq.req for seq in active] + queued:
            req.state.finish(None, error=error)

    def snapshot(self) -> dict:
        """Slots busy, queue depth, cached tokens per slot, counters (for /metrics and `ps`)."""
        with self._cond:
            return {"n_parallel": self.n_parallel, "n_ctx_seq": self.n_ctx_seq,
                    "slots_busy": sum(s.busy for s in self._slots), "queue_depth": len(self._queue),
                    "embed_queue": sum(len(j.tokens) - j.next for j in self._embeds),
                    "cached_tokens": [len(s.tokens) for s in self._slots], **self.counters}

    def call(self, fn):
        """``fn(handle)`` run on the engine thread with the context to itself (it waits for running
        sequences to end and holds new ones back meanwhile); its result, or its exception.

        On the engine's thread because llama.cpp's CPU backend keeps an OpenMP thread team per
        calling thread: decoding from a second thread makes two teams that contend for the
        cores (tg measured 0.66x in benchmarks/SINGLE_STREAM.md before this)."""
        if threading.current_thread() is self._thread:
            return fn(self._h)
        done: Future = Future()
        with self._cond:
            self._check_accepting()
            self._tasks.append((fn, done))
            self._cond.notify_all()
        return done.result()

    def forget_cache(self) -> None:
        """Clear the KV cache and every slot's record of it (in a call())."""
        self._h.memory_clear()
        for slot in self._slots:
            slot.tokens = []

    def forget_cache_records(self) -> None:
        """After raw decodes on sequence 0 (measure.py): its cells hold no prompt, so the next
        request there must clear them first; a record that matches no prompt makes it do so."""
        self._slots[0].tokens = [-1]

    # --- the engine thread -------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (self._closing or self._active or self._queue or self._tasks or self._embeds):
                        self._cond.wait()
                    if self._closing:
                        break
                    self._reap_cancelled()
                    if not self._tasks:  # a call() waits for the running sequences and goes first
                        self._admit()
                    task = self._tasks.popleft() if self._tasks and not self._active else None
                    embed = self._take_embeds() if task is None and not self._tasks else None
                    if task is None and embed is None and not self._active:
                        if self._embeds and not self._tasks:  # no free sequence yet: wait for one
                            self._cond.wait(0.05)
                        continue
                with self._step_lock:
                    if self._lora is not None and (task is not None or embed is not None):
                        self._lora.apply(self._lora.default)  # raw decodes and embeddings: the loaded set
                    if task is not None:
                        fn, done = task
                        try:
                            done.set_result(fn(self._h))
                        except BaseException as exc:  # noqa: BLE001 — the caller's to handle
                            done.set_exception(exc)
                    elif embed is not None:
                        self._embed_inflight = [job for job, _ in embed[0]]
                        self._embed_step(*embed)
                        self._embed_inflight = []
                    else:
                        self._step()
                        self._embed_turn = True
        except _Broken:
            return  # fail_broken has ended every request; llama.cpp's context must not be touched again
        except BaseException as exc:  # a bug of ours: fail every request rather than hang them
            error = GenerationError(f"the engine of {self.name} stopped: {type(exc).__name__}: {exc}")
            with self._cond:
                self._closing = True
            self._fail_all(error)
            raise
        finally:
            if self._broken is None:  # else nothing of llama.cpp's may be touched: see fail_broken
                self._fail_all(closed_error())
                for slot_seq in list(self._active):  # a failure inside _end: free what is left
                    self._h.sampler_free(slot_seq.chain)
                self._active.clear()
                if self._on_exit is not None:
                    self._on_exit()
            self._stopped.set()

    def _fail_all(self, error) -> None:
        with self._cond:
            queued, self._queue = list(self._queue), deque()
            tasks, self._tasks = list(self._tasks), deque()
            self._cond.notify_all()
        for _, done in tasks:
            done.set_exception(error)
        self._fail_embeds(error)
        for seq in list(self._active):
            self._end(seq, None, error=error)
        for req in queued:
            req.state.finish(None, error=error)

    def _reap_cancelled(self) -> None:
        if any(r.cancelled for r in self._queue):
            keep = deque()
            for req in self._queue:
                if req.cancelled:
                    self.counters["cancelled"] += 1
                    req.state.finish("cancelled", self._queued_stats(req))
                else:
                    keep.append(req)
            self._queue = keep

    def _check_broken(self) -> None:
        """After a decode: an RPC server failed meanwhile (fail_broken has ended every request)."""
        if self._broken is not None:
            raise _Broken()

    def _queued_stats(self, req: Request) -> Stats:
        waited = time.perf_counter() - req.t_submit
        return Stats(prompt_tokens=len(req.tokens), load_s=self.load_s, queue_s=waited, total_s=waited)
