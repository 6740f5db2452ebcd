"""Per-token figures over a text, by llama-perplexity's method: the logits of each chunk's
second half, turned into negative log-likelihoods, KL divergences and top-1 agreement with
numpy as each decode returns them.

llama-perplexity (tools/perplexity/perplexity.cpp, ``perplexity`` and ``kl_divergence``):
the text is tokenized once (BOS first when the vocabulary wants one) and cut into chunks
of ``n_ctx`` tokens; each chunk is evaluated from an empty KV cache with its first token
replaced by BOS, and the tokens of its second half are scored (the logits at positions
``n_ctx/2 .. n_ctx-2`` predict positions ``n_ctx/2+1 .. n_ctx-1``: ``n_ctx - 1 - n_ctx/2``
tokens a chunk). With ``n_batch >= n_ctx``, ``n_batch / n_ctx`` chunks go in one
``llama_decode`` as separate sequences; with ``n_batch < n_ctx`` a chunk takes several
decodes. Here every model (the one scored and its reference) holds the same chunks in the
same sequences, decoded in lockstep: after each decode the rows of all of them are in
their own llama.cpp buffers and are compared there, a few rows at a time, so memory stays
at one batch's logits per model (llama.cpp's own buffer) plus a few blocks of rows.

All the models' engines are held for one group of chunks at a time (``Engine.call``
nested: each engine thread waits in our function, so no request touches its context),
and every decode runs on one of those threads: one OpenMP team, as on the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import GenerationError, InvalidArgumentError

ROWS_PER_BLOCK = 32  # rows of logits turned into figures at once: 32 x 49152 floats is 6 MiB


@dataclass(frozen=True)
class ChunkPlan:
    """How llama-perplexity walks a text of ``n_tokens`` tokens at ``n_ctx`` / ``n_batch``."""

    n_ctx: int
    n_batch: int  # tokens per decode: min(n_batch, n_seq x n_ctx)
    n_seq: int  # chunks decoded together, each in its own sequence
    n_chunk: int
    first: int  # the first position whose logits are scored

    @property
    def decodes_per_chunk(self) -> int:
        return -(-self.n_ctx // self.n_batch)

    @property
    def scored_per_chunk(self) -> int:
        return self.n_ctx - 1 - self.first

    @property
    def n_scored(self) -> int:
        return self.n_chunk * self.scored_per_chunk

    def groups(self):
        """(first chunk, chunks) of each group decoded together."""
        for i in range(0, self.n_chunk, self.n_seq):
            yield i, min(self.n_seq, self.n_chunk - i)


def chunk_plan(n_tokens: int, n_ctx: int, n_batch: int) -> ChunkPlan:
    """llama-perplexity's chunking; InvalidArgumentError for what it refuses (it needs
    2 x n_ctx tokens; n_batch below n_ctx or a multiple of it)."""
    if n_ctx < 8 or n_ctx % 2:
        raise InvalidArgumentError(f"the context must be an even number of at least 8 tokens, got {n_ctx}")
    if n_batch < 1:
        raise InvalidArgumentError(f"the batch must be at least 1 token, got {n_batch}")
    if n_batch >= n_ctx and n_batch % n_ctx:
        raise InvalidArgumentError(f"a batch of {n_batch} tokens is neither below the context ({n_ctx}) nor a "
                                   "multiple of it", hint=f"Use --batch {n_ctx * max(1, n_batch // n_ctx)} "
                                                          f"or a batch below {n_ctx}.")
    n_seq = max(1, n_batch // n_ctx)
    if n_tokens < 2 * n_ctx:
        raise InvalidArgumentError(
            f"the text is {n_tokens} tokens; perplexity at a context of {n_ctx} needs at least {2 * n_ctx} "
            f"(llama-perplexity's rule: two chunks of {n_ctx} tokens)",
            hint=f"Give a longer text, or a smaller context (--ctx {max(8, n_tokens // 2 // 2 * 2)} fits).")
    return ChunkPlan(n_ctx=n_ctx, n_batch=min(n_batch, n_seq * n_ctx), n_seq=n_seq, n_chunk=n_tokens // n_ctx,
                     first=n_ctx // 2)


@dataclass
class Figures:
    """Per scored token, in text order: the model's negative log-likelihood of the token that
    follows; with a reference, the reference's, the KL divergence KL(reference || model) and
    whether both put the same token first."""

    nll: "object"  # numpy float64 arrays (and bool for same_top)
    ref_nll: "object | None" = None
    kld: "object | None" = None
    same_top: "object | None" = None


def _scratch(work: dict | None, key: str, shape):
    """A float32 buffer of ``shape`` kept in ``work`` between blocks: a fresh 6 MiB array a
    block would be mapped, faulted in and unmapped every time."""
    import numpy as np

    if work is None:
        return np.empty(shape, np.float32)
    buf = work.get(key)
    if buf is None or buf.shape[1] != shape[1] or buf.shape[0] < shape[0]:
        buf = work[key] = np.empty(shape, np.float32)
    return buf[:shape[0]]


def _normaliser(rows, out):
    """Each row's argmax, max, sum of exp(x - max) (float32, pairwise) into ``out`` = the exponentials."""
    import numpy as np

    idx = np.arange(rows.shape[0])
    top_i = rows.argmax(axis=1)
    top = rows[idx, top_i]
    np.subtract(rows, top[:, None], out=out)
    np.exp(out, out=out)
    return top_i, top, out.sum(axis=1, dtype=np.float32)


def row_figures(rows, targets, ref_rows=None, work: dict | None = None) -> Figures:
    """Figures for logits ``rows`` (n x vocab, float32) that predict ``targets`` (n token ids),
    against the reference's ``ref_rows`` when given. As llama-perplexity: nll = max + log
    sum(exp(x - max)) - x[target]; KL = sum_i p_i (log p_i - log q_i) with p the reference's
    distribution and q the model's; "same top" compares the two argmaxes. ``work`` keeps
    scratch buffers between calls. Passes over the rows are few and float32: this runs for
    every scored token of every model."""
    import numpy as np

    targets = np.asarray(targets, dtype=np.intp)
    idx = np.arange(len(targets))
    buf = _scratch(work, "model", rows.shape)
    top_i, top, total = _normaliser(rows, buf)
    lse = np.log(total.astype(np.float64))
    out = Figures(nll=top + lse - rows[idx, targets])
    if ref_rows is None:
        return out
    p = _scratch(work, "reference", ref_rows.shape)
    rtop_i, rtop, rtotal = _normaliser(ref_rows, p)  # p = exp(r - max): the reference's odds, unnormalised
    rlse = np.log(rtotal.astype(np.float64))
    out.ref_nll = rtop + rlse - ref_rows[idx, targets]
    # log p - log q = (r - m) - (c_r - c_m), c = max + lse: the row constant first, so each
    # term stays small when the two agree and float32 loses nothing that matters.
    shift = (rtop + rlse - top - lse).astype(np.float32)
    np.subtract(ref_rows, rows, out=buf)
    buf -= shift[:, None]
    out.kld = np.einsum("ij,ij->i", p, buf) / rtotal.astype(np.float64)
    out.same_top = top_i == rtop_i
    return out


def row_figures_16bit(rows, targets, ref_rows) -> Figures:
    """As row_figures, but with the reference's log-probabilities stored as llama-perplexity's
    ``--kl-divergence-base`` file stores them (``log_softmax`` into uint16: a scale and an
    offset per row over [max - 16, max], rounded to nearest; lower values at the floor, and
    dropped from the KL sum) and its float arithmetic, so its figures come out exactly.
    The rounding moves each token's KL divergence by up to ~5e-5 nats (the mean hardly)."""
    import numpy as np

    f32 = np.float32
    targets = np.asarray(targets, dtype=np.intp)
    idx = np.arange(len(targets))
    # The reference, as written by log_softmax(n_vocab, logits, log_prob, tok).
    rmax = ref_rows.max(axis=1)
    rmin = np.maximum(ref_rows.min(axis=1), rmax - f32(16))
    rlse = np.log(np.exp(ref_rows - rmax[:, None]).sum(axis=1, dtype=np.float64)).astype(f32)
    min_lp = (rmin - rmax) - rlse
    scale = (rmax - rmin) / f32(65535)
    inv = np.divide(f32(1), scale, out=np.zeros_like(scale), where=scale != 0)
    q = np.rint(inv[:, None] * (ref_rows - rmin[:, None]))
    q[~(ref_rows > rmin[:, None])] = 0
    plb = scale[:, None] * q + min_lp[:, None]  # float32, as the reader rebuilds them
    ref_nll = -(scale * q[idx, targets] + min_lp)
    # The model, as read back in log_softmax(n_vocab, logits, base_log_prob, tok, kld).
    mmax = rows.max(axis=1)
    mlse = np.log(np.exp(rows - mmax[:, None]).sum(axis=1, dtype=np.float64)).astype(f32)
    nll = (mmax + mlse) - rows[idx, targets]
    shift = mmax + mlse
    terms = np.exp(plb) * ((plb - rows) + shift[:, None])
    terms[~(plb > f32(-16))] = 0
    return Figures(nll=nll.astype(np.float64), ref_nll=ref_nll.astype(np.float64),
                   kld=terms.sum(axis=1, dtype=np.float64),
                   same_top=rows.argmax(axis=1) == plb.argmax(axis=1))


def _concat(parts: list[Figures]) -> Figures:
    import numpy as np

    def cat(name):
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else np.concatenate(values)
    return Figures(nll=cat("nll"), ref_nll=cat("ref_nll"), kld=cat("kld"), same_top=cat("same_top"))


def _outputs(h, n_out: int):
    """The decode's output rows in batch order (llama_get_logits reorders them), over llama.cpp's buffer."""
    import numpy as np

    ptr = h._lib.llama_get_logits(h.ctx)
    return np.ctypeslib.as_array(ptr, shape=(n_out, h.n_vocab))


def _hold(models: Sequence, fn):
    """``fn([handle, ...])`` on the last model's engine thread while every other engine waits
    inside the call: all the contexts are ours until it returns."""
    def nest(i, handles):
        if i == len(models):
            return fn(handles)
        return models[i]._engine.call(lambda h: nest(i + 1, handles + [h]))
    return nest(0, [])


def score_group(models: Sequence, tokens: Sequence[int], plan: ChunkPlan, first_chunk: int, n_chunks: int,
                *, reference=None, base16: bool = False) -> list[Figures]:
    """Decode chunks ``first_chunk .. first_chunk + n_chunks - 1`` (n_chunks <= plan.n_seq) of
    ``tokens`` in every model (and the reference) and return each model's Figures for their
    scored tokens, in text order. Each model must be loaded with at least ``n_chunks``
    sequences (n_parallel) of ``plan.n_ctx`` tokens and a batch of ``plan.n_batch``.
    ``base16``: the reference's log-probabilities as llama-perplexity stores them
    (row_figures_16bit), to reproduce its figures exactly."""
    models = list(models)
    everyone = ([reference] if reference is not None else []) + models
    if len({id(m) for m in everyone}) != len(everyone):
        raise InvalidArgumentError("a model cannot be compared with itself in one run",
                                   hint="Load the reference separately (a second load of the same file works).")
    for m in everyone:
        m._check_open()
        if m.n_ctx < plan.n_ctx or m.n_parallel < n_chunks or m.options.n_batch < plan.n_batch:
            raise InvalidArgumentError(f"{m.name} is loaded with n_ctx {m.n_ctx}, {m.n_parallel} sequences and "
                                       f"n_batch {m.options.n_batch}; scoring needs {plan.n_ctx}, {n_chunks} "
                                       f"and {plan.n_batch}")

    def work(handles):
        try:
            return walk(handles)
        finally:  # an empty cache, and no slot that believes it holds a prompt
            for m in everyone:
                m._engine.forget_cache()

    def walk(handles):
        for m in everyone:
            m._engine.forget_cache()
        ref_h = handles[0] if reference is not None else None
        model_hs = handles[1:] if reference is not None else handles
        bos = handles[0].bos if handles[0].add_bos else None  # one vocabulary (checked by the caller)
        parts: list[list[Figures]] = [[] for _ in models]
        work: dict = {}
        n_ctx, n_batch, first = plan.n_ctx, plan.n_batch, plan.first
        start = first_chunk * n_ctx
        # Several chunks in a decode (n_batch >= n_ctx) or several decodes a chunk, never
        # both: the parts below come out in text order either way.
        for j in range(plan.decodes_per_chunk):
            lo_pos = j * n_batch
            size = min(n_ctx - lo_pos, n_batch)
            items, spans = [], []  # spans: (seq, first position with logits, how many)
            for seq in range(n_chunks):
                base = start + seq * n_ctx
                for k in range(size):
                    pos = lo_pos + k
                    t = bos if pos == 0 and bos is not None else tokens[base + pos]  # each chunk starts with BOS
                    items.append((t, pos, seq, pos >= first))
                out_lo = max(first, lo_pos)
                if out_lo < lo_pos + size:
                    spans.append((seq, out_lo, lo_pos + size - out_lo))
            for h in handles:
                if h.decode(items) != 0:
                    raise GenerationError(f"llama.cpp failed to decode a batch of {len(items)} tokens")
            n_out = sum(n for _, _, n in spans)
            if not n_out:
                continue
            ref_rows = _outputs(ref_h, n_out) if ref_h is not None else None
            rows_of = [_outputs(h, n_out) for h in model_hs]
            row = 0
            for seq, pos0, n in spans:
                base = start + seq * n_ctx
                scored = min(n, n_ctx - 1 - pos0)  # the chunk's last position predicts nothing in it
                for b in range(0, scored, ROWS_PER_BLOCK):
                    e = min(scored, b + ROWS_PER_BLOCK)
                    targets = tokens[base + pos0 + b + 1: base + pos0 + e + 1]
                    ref_block = ref_rows[row + b: row + e] if ref_rows is not None else None
                    for mi, rows in enumerate(rows_of):
                        block = rows[row + b: row + e]
                        parts[mi].append(row_figures_16bit(block, targets, ref_block) if base16 and ref_block
                                         is not None else row_figures(block, targets, ref_block, work))
                row += n
        return [_concat(p) for p in parts]

    return _hold(everyone, work)
