"""The generation half of the engine's step: admitting requests to slots, one batched
``llama_decode`` for every generating sequence's next token and new prompts' chunks, then
sampling (with grammar masks and forced tokens), text assembly and ending requests.

A mixin of ``Engine`` (engine.py), run only on its thread; it reads and writes the
engine's slots, queue and active sequences.
"""

from __future__ import annotations

import time

from ..errors import GenerationError
from .response import Stats, TextAssembler
from .rows import logprob_entry, logsoftmax_row, row_copy
from .slots import Seq, reusable_prefix


class _Broken(Exception):
    """The engine thread's way out after fail_broken."""


class DecodeSteps:
    def _step_group(self) -> list[Seq]:
        """The sequences this step decodes: all of them, or with LoRA adapters loaded, those of
        the set whose turn it is, with that set applied to the context."""
        if self._lora is None:
            return self._active
        key = self._turns.pick([s.req.adapters for s in self._active])
        self._lora.apply(key)
        return [s for s in self._active if s.req.adapters == key]

    def _admit(self) -> None:
        h = self._h
        while self._queue:
            free = [s for s in self._slots if not s.busy]
            if not free:
                return
            if self._embeds and self._embeds[0].t_submit < self._queue[0].t_submit:
                return  # an older embed() call takes the free slots first (embedding.py)
            req = self._queue.popleft()
            tokens = req.tokens
            # The free slot sharing the longest prefix (under the same LoRA set); else the one unused the longest.
            slot = max(free, key=lambda s: (reusable_prefix(s, req), -s.last_used))
            # The last prompt token is always decoded: its logits are the first sample's (or score's).
            last = len(tokens) - 1 if req.score_from is None else req.score_from - 1
            n_keep = min(reusable_prefix(slot, req), last)
            if n_keep < len(slot.tokens) and not h.seq_rm(slot.seq_id, n_keep, -1):
                h.seq_rm(slot.seq_id, 0, -1)  # a model that cannot cut a sequence (recurrent): start over
                n_keep = 0
            slot.tokens = slot.tokens[:n_keep]
            slot.adapters = req.adapters
            p = req.params
            room = self.n_ctx_seq - len(tokens)
            limit = room if p.max_tokens is None else min(p.max_tokens, room)
            last_n = self.n_ctx_seq if p.repeat_last_n < 0 else p.repeat_last_n
            chain = h.sampler_chain(temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, min_p=p.min_p,
                                    repeat_penalty=p.repeat_penalty, presence_penalty=p.presence_penalty,
                                    frequency_penalty=p.frequency_penalty, penalty_last_n=last_n,
                                    seed=p.seed, ignore_eos=p.ignore_eos, dry=p.dry, n_ctx=self.n_ctx_seq)
            # Penalties count the prompt's recent tokens too, as llama.cpp's tools do, for a raw
            # continuation only: a reply copies from its prompt (extract: "Alice is 31" -> 31; chat:
            # "What is 2+2?" -> "2+2 is 4"), which is no loop (params.TASK_DEFAULTS).
            if p.penalized and last_n and p.penalize_prompt and req.constraint is None:
                h.accept_prompt(chain, tokens[-last_n:])
            seq = Seq(req, slot, n_keep, limit, chain,
                       TextAssembler(self._piece_of, req.stops, req.strip_leading))
            seq.spec = self.spec_mode if p.speculative is None else p.speculative
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
        # With LoRA adapters, only the sequences of the adapter set whose turn it is (runtime/lora.py).
        group = self._step_group()
        drafts = self._drafts(budget, group)  # speculative.py: {seq: draft tokens}
        # The budget goes to generating sequences first (one token each, and their drafts), then
        # to prompt chunks in arrival order.
        for seq in sorted(group, key=lambda s: len(s.pending) > 1):
            if budget <= 0:
                break
            n = min(len(seq.pending), budget)
            taken.append((seq, n))
            budget -= n
            if n == len(seq.pending) and seq.req.score_from is None:
                budget -= len(drafts.get(seq, ()))
        # The batch lists them by sequence id: with a KV stream per sequence llama.cpp decodes a
        # batch in pieces of consecutive ids (llama_batch_allocr::split_equal), so id order keeps
        # it to as few pieces as the idle slots allow.
        for seq, n in sorted(taken, key=lambda sn: sn[0].slot.seq_id):
            base, sid = seq.n_past, seq.slot.seq_id
            complete = n == len(seq.pending)
            score_from = seq.req.score_from
            if score_from is None:
                for j in range(n):
                    items.append((seq.pending[j], base + j, sid, complete and j == n - 1))
                if complete:
                    outputs.append((seq, len(items) - 1))
                    for j, t in enumerate(drafts.get(seq, ())):  # a logits row at each
                        items.append((t, base + n + j, sid, True))
            else:  # teacher forcing: a logits row at every position that predicts a scored token
                for j in range(n):
                    keep = base + j >= score_from - 1
                    items.append((seq.pending[j], base + j, sid, keep))
                    if keep:
                        outputs.append((seq, len(items) - 1))
        t0 = time.perf_counter()
        rc = h.decode(items)
        self._check_broken()
        dt = time.perf_counter() - t0
        self.step_costs.record(len(items), dt)
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
            if seq in drafts:
                self._verify(seq, index, drafts[seq])
            elif seq.req.score_from is None:
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
        if seq.lookup is not None:  # the draft index (speculative.py) sees every token of the sequence
            seq.lookup.extend((token,))
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
                     queue_s=seq.t_admit - req.t_submit, slot=seq.slot.seq_id, forced_tokens=seq.n_forced,
                     draft_tokens=seq.n_drafted, accepted_tokens=seq.n_accepted)
