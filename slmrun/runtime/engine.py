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
removed at once. Each slot holds at most ``n_ctx_seq`` cells of a unified cache of
``n_parallel x n_ctx_seq``, so a cache left behind never denies another slot room.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import deque
from concurrent.futures import Future

from ..errors import GenerationError, ModelClosedError, QueueFullError
from .params import PENALTY_LAST_N
from .response import Stats, TextAssembler, closed_error
from .rows import logprob_entry, logsoftmax_row, row_copy
from .slots import Request, Seq, Slot, common_prefix


class _Broken(Exception):
    """The engine thread's way out after fail_broken."""


class Engine:
    def __init__(self, handle, *, n_parallel: int, n_ctx_seq: int, n_batch: int, name: str,
                 load_s: float = 0.0, max_queue: int | None = None, piece_of=None, on_exit=None):
        self._h = handle
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
        self._closing = False
        self._broken: BaseException | None = None  # an RPC server this model is split over failed
        self._stopped = threading.Event()
        self.counters = {"requests": 0, "prompt_tokens": 0, "prompt_eval_tokens": 0, "generated_tokens": 0,
                         "cancelled": 0, "errors": 0, "steps": 0}
        self._thread = threading.Thread(target=self._run, name=f"slmrun-engine[{name}]", daemon=True)
        self._thread.start()

    # --- any thread ------------------------------------------------------------------
    def submit(self, req: Request) -> None:
        with self._cond:
            if self._broken is not None:
                raise copy.copy(self._broken)
            if self._closing:
                raise ModelClosedError(f"{self.name} is closed")
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
        for req in [seq.req for seq in active] + queued:
            req.state.finish(None, error=error)

    def snapshot(self) -> dict:
        """Slots busy, queue depth, cached tokens per slot, counters (for /metrics and `ps`)."""
        with self._cond:
            return {"n_parallel": self.n_parallel, "n_ctx_seq": self.n_ctx_seq,
                    "slots_busy": sum(s.busy for s in self._slots), "queue_depth": len(self._queue),
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
            if self._broken is not None:
                raise copy.copy(self._broken)
            if self._closing:
                raise ModelClosedError(f"{self.name} is closed")
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
                    while not (self._closing or self._active or self._queue or self._tasks):
                        self._cond.wait()
                    if self._closing:
                        break
                    self._reap_cancelled()
                    if not self._tasks:  # a call() waits for the running sequences and goes first
                        self._admit()
                    task = self._tasks.popleft() if self._tasks and not self._active else None
                    if task is None and not self._active:
                        continue
                with self._step_lock:
                    if task is not None:
                        fn, done = task
                        try:
                            done.set_result(fn(self._h))
                        except BaseException as exc:  # noqa: BLE001 — the caller's to handle
                            done.set_exception(exc)
                    else:
                        self._step()
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

    def _queued_stats(self, req: Request) -> Stats:
        waited = time.perf_counter() - req.t_submit
        return Stats(prompt_tokens=len(req.tokens), load_s=self.load_s, queue_s=waited, total_s=waited)

    def _admit(self) -> None:
        h = self._h
        while self._queue:
            free = [s for s in self._slots if not s.busy]
            if not free:
                return
            req = self._queue.popleft()
            tokens = req.tokens
            # The free slot sharing the longest prefix; else the one unused the longest.
            slot = max(free, key=lambda s: (common_prefix(s.tokens, tokens), -s.last_used))
            # The last prompt token is always decoded: its logits are the first sample's (or score's).
            last = len(tokens) - 1 if req.score_from is None else req.score_from - 1
            n_keep = min(common_prefix(slot.tokens, tokens), last)
            if n_keep < len(slot.tokens) and not h.seq_rm(slot.seq_id, n_keep, -1):
                h.seq_rm(slot.seq_id, 0, -1)  # a model that cannot cut a sequence (recurrent): start over
                n_keep = 0
            slot.tokens = slot.tokens[:n_keep]
            p = req.params
            room = self.n_ctx_seq - len(tokens)
            limit = room if p.max_tokens is None else min(p.max_tokens, room)
            chain = h.sampler_chain(temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, min_p=p.min_p,
                                    repeat_penalty=p.repeat_penalty, presence_penalty=p.presence_penalty,
                                    frequency_penalty=p.frequency_penalty, penalty_last_n=PENALTY_LAST_N,
                                    seed=p.seed, ignore_eos=p.ignore_eos)
            if p.penalized:  # penalties count the prompt's recent tokens too, as llama.cpp's tools do
                for t in tokens[-PENALTY_LAST_N:]:
                    h.sampler_accept(chain, t)
            seq = Seq(req, slot, n_keep, limit, chain,
                       TextAssembler(self._piece_of, req.stops, req.strip_leading))
            slot.busy = True
            self._active.append(seq)
            self.counters["prompt_tokens"] += len(tokens)
            self.counters["prompt_eval_tokens"] += len(tokens) - n_keep
            if req.score_from is not None:
                continue
            if limit <= 0:
                self._end(seq, "length")
            elif req.constraint is not None:
                self._fast_forward(seq)  # a schema often fixes the first tokens: no sampling for those

    def _step(self) -> None:
        h = self._h
        for seq in [s for s in self._active if s.req.cancelled]:
            self._end(seq, "cancelled")
        if not self._active:
            return
        items: list[tuple[int, int, int, bool]] = []
        outputs: list[tuple[Seq, int]] = []
        taken: list[tuple[Seq, int]] = []
        budget = self.n_batch
        # Generating sequences first (one token each), then prompt chunks in arrival order.
        for seq in sorted(self._active, key=lambda s: len(s.pending) > 1):
            if budget <= 0:
                break
            n = min(len(seq.pending), budget)
            base, sid = seq.n_past, seq.slot.seq_id
            complete = n == len(seq.pending)
            score_from = seq.req.score_from
            if score_from is None:
                for j in range(n):
                    items.append((seq.pending[j], base + j, sid, complete and j == n - 1))
                if complete:
                    outputs.append((seq, len(items) - 1))
            else:  # teacher forcing: a logits row at every position that predicts a scored token
                for j in range(n):
                    keep = base + j >= score_from - 1
                    items.append((seq.pending[j], base + j, sid, keep))
                    if keep:
                        outputs.append((seq, len(items) - 1))
            taken.append((seq, n))
            budget -= n
        t0 = time.perf_counter()
        rc = h.decode(items)
        if self._broken is not None:
            raise _Broken()
        dt = time.perf_counter() - t0
        self.counters["steps"] += 1
        if rc != 0:
            what = {1: "no room left in the KV cache", 2: "aborted"}.get(rc, f"error {rc}")
            for seq, _ in taken:
                self._end(seq, None, error=GenerationError(
                    f"llama.cpp failed to decode a batch of {len(items)} tokens ({what})"))
            return
        for seq, n in taken:
            if seq.in_prompt:
                seq.prompt_s += dt
            seq.slot.tokens.extend(seq.pending[:n])
            seq.n_past += n
            del seq.pending[:n]
        for seq, index in outputs:
            if seq.req.score_from is None:
                self._sample(seq, index)
            else:
                seq.req.state.score_rows.append(row_copy(h.logits(index)))
        for seq, _ in taken:
            if seq.req.score_from is not None and not seq.pending and seq in self._active:
                self._end(seq, "stop")

    def _sample(self, seq: Seq, index: int) -> None:
        h, req = self._h, seq.req
        if req.cancelled:
            self._end(seq, "cancelled")
            return
        seq.in_prompt = False
        constraint, want_logprobs = req.constraint, req.params.logprobs
        if want_logprobs or constraint is not None:
            logits = h.logits(index)
            if want_logprobs:
                row, logz = logsoftmax_row(logits)
            if constraint is not None:
                constraint.apply(logits)
        token = h.sample(seq.chain, index)
        if constraint is not None and not constraint.commit(token):
            self._end(seq, None, error=GenerationError(f"the grammar refused token {token}: {constraint.error}"))
            return
        if h.is_eog(token):
            self._end(seq, "stop")
            return
        if want_logprobs:
            if req.state.logprobs is None:
                req.state.logprobs = []
            req.state.logprobs.append(logprob_entry(row, logz, token, req.params.top_logprobs))
        if self._emit(seq, token):
            return
        seq.pending.append(token)
        if constraint is not None:
            self._fast_forward(seq)

    def _emit(self, seq: Seq, token: int, *, more: bool = False) -> bool:
        """A generated token's text to the reader; True when that ended the request. ``more``:
        further tokens the grammar has already taken follow (its state is past this one)."""
        req = seq.req
        seq.n_gen += 1
        req.state.tokens.append(token)
        piece, stopped = seq.text.feed(token)
        if piece:
            if seq.t_first is None:
                seq.t_first = time.perf_counter()
            req.state.push(piece)
        if stopped:
            seq.stopped = True
            self._end(seq, "stop")
        elif not more and req.constraint is not None and req.constraint.is_stopped():
            self._end(seq, "stop")  # the value is complete: nothing but the end can follow
        elif seq.n_gen >= seq.limit:
            self._end(seq, "length")
        else:
            return False
        return True

    def _fast_forward(self, seq: Seq) -> None:
        """Append the tokens the grammar forces next, unsampled; they are decoded in one batch."""
        c = seq.req.constraint
        forced = c.forced_tokens()[:max(0, seq.limit - seq.n_gen)]
        if not forced:
            if c.is_stopped():
                self._end(seq, "stop")
            return
        if not c.commit_tokens(forced):
            self._end(seq, None, error=GenerationError(f"the grammar refused its own tokens: {c.error}"))
            return
        for i, t in enumerate(forced):
            self._h.sampler_accept(seq.chain, t)  # penalties see them, as if sampled
            seq.n_forced += 1
            if self._emit(seq, t, more=i < len(forced) - 1):
                return
            seq.pending.append(t)

    def _end(self, seq: Seq, reason: str | None, *, error: BaseException | None = None) -> None:
        h, req, slot = self._h, seq.req, seq.slot
        if reason in ("stop", "length") and not seq.stopped:
            tail = seq.text.finish()
            if tail:
                if seq.t_first is None:
                    seq.t_first = time.perf_counter()
                req.state.push(tail)
        if reason == "cancelled" or error is not None:
            h.seq_rm(slot.seq_id, 0, -1)  # free its cells now; a half-written sequence is no cache
            slot.tokens = []
            self.counters["cancelled" if error is None else "errors"] += 1
        h.sampler_free(seq.chain)
        slot.busy = False
        slot.last_used = time.perf_counter()
        self._active.remove(seq)
        self.counters["generated_tokens"] += seq.n_gen
        req.state.finish(reason, self._stats(seq), error=error)
        with self._cond:
            self._cond.notify_all()

    def _stats(self, seq: Seq) -> Stats:
        end = time.perf_counter()
        req = seq.req
        first = seq.t_first or end
        gen_s = end - first
        evaluated = len(req.tokens) - seq.cached
        return Stats(prompt_tokens=len(req.tokens), generated_tokens=seq.n_gen, load_s=self.load_s,
                     prompt_tps=evaluated / seq.prompt_s if seq.prompt_s > 0 else 0.0,
                     gen_tps=(seq.n_gen - 1) / gen_s if seq.n_gen > 1 and gen_s > 0 else 0.0,
                     ttft_s=first - req.t_submit, prompt_eval_tokens=evaluated, cached_tokens=seq.cached,
                     prompt_s=seq.prompt_s, gen_s=gen_s, total_s=end - req.t_submit,
                     queue_s=seq.t_admit - req.t_submit, slot=seq.slot.seq_id, forced_tokens=seq.n_forced)
