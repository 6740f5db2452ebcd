"""Embeddings on the engine: many inputs decode together as sequences of one batch, each
pooled by llama.cpp (``llama_get_embeddings_seq``).

An encoder (BERT family: non-causal attention, no KV cache) only embeds: every step is
an embedding step over up to ``n_parallel`` sequence ids. A generative model embeds in
steps of their own (llama.cpp applies ``embeddings`` to the whole context, as llama-server
never mixes them either), taking turns with generation steps; each input takes a free
slot, whose cache it replaces. Pooling needs every token of a sequence in one micro-batch,
so an input is never split across steps: ``Model.embed`` cuts (or refuses) an input longer
than ``embed_limit`` before it is queued.

``EmbedSteps`` is a mixin of ``Engine`` (engine.py); its ``_embed_*`` methods run only on
the engine's thread.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from ..errors import GenerationError


@dataclass(eq=False)
class EmbedJob:
    """One ``Model.embed`` call: its inputs' tokens; the engine fills ``rows`` in input order
    and completes ``future`` with them."""

    tokens: list[list[int]]
    rows: list = field(default_factory=list)
    next: int = 0  # the first input not yet in a step
    left: int = 0  # inputs whose embedding has not come back yet
    future: Future = field(default_factory=Future)
    t_submit: float = field(default_factory=time.perf_counter)

    def __post_init__(self):
        self.rows = [None] * len(self.tokens)
        self.left = len(self.tokens)


def pack(jobs, n_seqs: int, budget: int) -> list[tuple[EmbedJob, int]]:
    """The inputs of the next embedding step: first come first served, whole inputs only,
    at most ``n_seqs`` sequences and ``budget`` tokens. Pure: callers advance ``job.next``."""
    picks: list[tuple[EmbedJob, int]] = []
    for job in jobs:
        for i in range(job.next, len(job.tokens)):
            n = len(job.tokens[i])
            if len(picks) >= n_seqs or n > budget:
                return picks
            picks.append((job, i))
            budget -= n
    return picks


@dataclass
class Embeddings:
    """What ``Model.embed`` returns: one row per input, in input order.

    ``vectors`` is a float32 numpy array of shape (inputs, dimensions) (``np.asarray(e)``
    gives it too); ``tolist()`` gives lists of floats. ``n_tokens`` counts each input's
    tokens as embedded, after any truncation, which ``truncated`` flags."""

    vectors: object  # numpy.ndarray
    n_tokens: list[int]
    truncated: list[bool]
    pooling: str
    model: str = ""
    normalized: bool = True

    def tolist(self) -> list[list[float]]:
        return self.vectors.tolist()

    @property
    def dimensions(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.vectors)

    def __getitem__(self, i):
        return self.vectors[i]

    def __iter__(self):
        return iter(self.vectors)

    def __array__(self, dtype=None, copy=None):
        return self.vectors if dtype is None else self.vectors.astype(dtype)


class EmbedSteps:
    """The embedding half of the engine (engine.py owns the loop, the locks and the queue)."""

    def submit_embed(self, job: EmbedJob) -> None:
        with self._cond:
            self._check_accepting()
            self._embeds.append(job)
            self.counters["embed_inputs"] += len(job.tokens)
            self._cond.notify_all()

    def _embed_seq_ids(self) -> list[int]:
        if self._h.encoder_only:  # no cache: every sequence id is free at every step
            return list(range(self.n_parallel))
        return [s.seq_id for s in self._slots if not s.busy]

    def _take_embeds(self):
        """(picks, seq ids) for an embedding step now, or None: generation's turn, or no room.
        Called with the condition held. A generative model alternates the two kinds of step
        while both have work."""
        if not self._embeds or (self._active and not self._embed_turn):
            return None
        seq_ids = self._embed_seq_ids()
        # Pooling needs each input whole in one micro-batch; with a KV stream per sequence
        # llama.cpp splits a batch of unequal inputs across several: one input per step then.
        room = len(seq_ids) if self._h.encoder_only or self._h.spec.kv_unified else min(1, len(seq_ids))
        picks = pack(self._embeds, room, self._embed_budget)
        if not picks:
            return None
        for job, i in picks:
            job.next = i + 1
        while self._embeds and self._embeds[0].next >= len(self._embeds[0].tokens):
            self._embeds.popleft()
        return picks, seq_ids[:len(picks)]

    @property
    def _embed_budget(self) -> int:
        return self._h.spec.n_ubatch if self._h.encoder_only else min(self.n_batch, self._h.spec.n_ubatch)

    def _embed_step(self, picks, seq_ids) -> None:
        h = self._h
        by_id = {s.seq_id: s for s in self._slots}
        items: list[tuple[int, int, int, bool]] = []
        for (job, i), sid in zip(picks, seq_ids):
            if not h.encoder_only:  # pooling needs the whole input in this batch: no cached prefix
                h.seq_rm(sid, 0, -1)
                by_id[sid].tokens = []
            items.extend((t, pos, sid, True) for pos, t in enumerate(job.tokens[i]))
        h.set_embeddings(True)
        try:
            rc = h.decode(items)
            self._check_broken()
            self.counters["steps"] += 1
            self.counters["embed_tokens"] += len(items)
            rows = [h.embedding(sid) if rc == 0 else None for sid in seq_ids]
        finally:
            h.set_embeddings(False)
        self._embed_turn = False
        now = time.perf_counter()
        for (job, i), sid, row in zip(picks, seq_ids, rows):
            if job.future.done():
                continue  # an earlier input of this job failed
            if row is None:
                what = {1: "no room left in the KV cache", 2: "aborted"}.get(rc, f"error {rc}") if rc else \
                    f"it gave no pooled embedding (pooling {h.pooling})"
                self.counters["errors"] += 1
                job.future.set_exception(GenerationError(
                    f"llama.cpp failed to embed a batch of {len(items)} tokens ({what})"))
                continue
            if not h.encoder_only:  # the cells hold this input now: a valid prefix cache
                slot = by_id[sid]
                slot.tokens, slot.last_used = list(job.tokens[i]), now
            job.rows[i] = row
            job.left -= 1
            if job.left == 0:
                job.future.set_result(job.rows)

    def _fail_embeds(self, error) -> None:
        with self._cond:
            jobs, self._embeds = list(self._embeds) + list(self._embed_inflight), type(self._embeds)()
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(error)


# --- the caller's side (Model.embed): pure helpers --------------------------------------------

def split_inputs(inputs) -> list:
    """``inputs`` as a list of items, each a non-empty string or a non-empty list of token ids:
    a string, a list of strings, a list of ints (one input as token ids, OpenAI's shape) or a
    list of lists of ints. An empty list is no inputs."""
    from ..errors import InvalidArgumentError

    if isinstance(inputs, str):
        inputs = [inputs]
    elif isinstance(inputs, (list, tuple)) and inputs and all(_is_id(t) for t in inputs):
        inputs = [list(inputs)]
    elif not isinstance(inputs, (list, tuple)):
        raise InvalidArgumentError(f"the input must be a string or a list of strings, got {type(inputs).__name__}")
    out = []
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            if not item:
                raise InvalidArgumentError(f"input {i} is an empty string", hint="Leave empty inputs out.")
        elif isinstance(item, (list, tuple)) and item and all(_is_id(t) for t in item):
            item = list(item)
        elif isinstance(item, (list, tuple)) and not item:
            raise InvalidArgumentError(f"input {i} is an empty list of token ids", hint="Leave empty inputs out.")
        else:
            raise InvalidArgumentError(f"input {i} must be a string or a list of token ids, "
                                       f"got {type(item).__name__}")
        out.append(item)
    return out


def _is_id(t) -> bool:
    return isinstance(t, int) and not isinstance(t, bool)


def fit_tokens(tokens: list[int], limit: int, *, end: int | None) -> tuple[list[int], bool]:
    """Cut ``tokens`` to ``limit``, keeping a closing ``end`` token (BERT's [SEP]) last, as
    a Hugging Face tokenizer truncates; (tokens, whether they were cut)."""
    if len(tokens) <= limit:
        return tokens, False
    if end is not None and tokens[-1] == end and limit > 1:
        return tokens[:limit - 1] + [end], True
    return tokens[:limit], True


def input_tokens(items: list, tokenize, *, n_vocab: int, limit: int, end: int | None, truncate: bool,
                 name: str) -> tuple[list[list[int]], list[bool]]:
    """Each input's tokens (a string tokenized, token ids checked against the vocabulary), fit
    to ``limit``: (tokens, whether each was cut). Raises before anything reaches the engine."""
    from ..errors import ContextOverflowError, InvalidArgumentError

    tokens, cut = [], []
    for i, item in enumerate(items):
        if isinstance(item, str):
            toks = tokenize(item)
        else:
            if not all(0 <= t < n_vocab for t in item):
                raise InvalidArgumentError(f"input {i} has a token id outside the vocabulary (0 to {n_vocab - 1})")
            toks = item
        if len(toks) > limit and not truncate:
            raise ContextOverflowError(f"input {i} is {len(toks)} tokens; {name} embeds at most {limit}",
                                       hint="Shorten it, or pass truncate=True to embed its first tokens.")
        toks, was_cut = fit_tokens(toks, limit, end=end)
        tokens.append(toks)
        cut.append(was_cut)
    return tokens, cut


def stack_rows(rows: list, n_embd: int, *, normalize: bool):
    """The rows as a float32 (n, n_embd) array, L2-normalised if asked (as sentence-transformers'
    Normalize and llama-server's default: a zero vector stays zero)."""
    import numpy as np

    if not rows:
        return np.zeros((0, n_embd), dtype=np.float32)
    vectors = np.vstack(rows).astype(np.float32, copy=False)
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    return vectors
