"""Prompt-lookup (n-gram) speculative decoding: drafts from a request's own tokens, verified in
the engine's batch.

What a small model does on a device (extraction, answers from a given passage, code edits)
copies spans of its input into its output. When the last few tokens of a sequence (its prompt
and what it generated) occurred before, the tokens that followed them then are a good guess
of what follows now: a *draft*, found by a dictionary lookup (``Lookup``), no draft model.
The engine decodes the sequence's next token and the draft in the same ``llama_decode`` as
every other sequence's tokens, with a logits row at each, and keeps the longest prefix the
model agrees with (``SpecSteps._verify``): at each row it samples from the model's own
distribution, exactly as without drafts (the same sampler chain, grammar mask, penalties,
seeded draws), and goes on to the next row only while the sampled token is the drafted one.
So every token is drawn from the target distribution given the true prefix (greedy: the
argmax), as llama.cpp's verification does (``common_sampler_sample_and_accept_n``); the
first token that differs is the step's last, and the cells of the drafts after it are
removed (``llama_memory_seq_rm``). A draft token the grammar forbids ends the draft before
it is decoded; forced tokens are decoded first, the draft after them.

Whether a draft pays depends on the device: on a memory-bound one (a Raspberry Pi) a batch
of k+1 tokens costs about one step, on this machine's two x86 cores each extra token costs a
good part of one. ``StepCosts`` keeps what this engine's own ``llama_decode`` calls cost by
batch size; in "auto" mode (the default) a sequence drafts k tokens only when it is the one
sequence the step decodes (``drafts_allowed``) and the expected tokens per second, (tokens
the step yields + the expected accepted drafts) / cost(batch + k), beat the step without them
(``choose_k``), with the acceptance rate learnt per sequence. "on" drafts whenever there is a
match; "off" never.

Why only alone: benchmarks/SPECULATIVE.md measured drafts beside other sequences losing on
this CPU for slmrun and for llama-server's ngram-simple alike (0.69-0.95 of the speed without),
and with a KV stream per sequence llama.cpp splits a batch into ubatches of equal tokens per
sequence, so one sequence's draft rows cost a ubatch of their own, which the per-size costs
do not see.
"""

from __future__ import annotations

from ..errors import GenerationError, InvalidArgumentError

MODES = ("auto", "on", "off")
N_MAX, N_MIN = 4, 2  # lookup n-gram sizes, the longest that matches wins
K_MAX = 8  # most draft tokens a sequence decodes in one step
K_ON = 4  # what "on" drafts when the cost model would draft nothing
MARGIN = 0.05  # "auto" drafts only for a predicted gain of more than 5%
PRIOR_SLOPE = 0.5  # extra cost of a token in a batch, as a fraction of a step, until measured
_EMA = 0.2


def check_mode(value) -> str:
    """A speculative setting ("auto", "on", "off", or True/False/None) as one of MODES."""
    if value is None:
        return "auto"
    if value is True:
        return "on"
    if value is False:
        return "off"
    if isinstance(value, str) and value.strip().lower() in MODES:
        return value.strip().lower()
    raise InvalidArgumentError(f"speculative must be one of auto, on, off (or true/false), got {value!r}")


class Lookup:
    """A sequence's tokens indexed by their n-grams: for each n-gram, where the token that
    followed its latest occurrence is. An n-gram enters the index once a token follows it,
    so the sequence's own last n tokens find an earlier occurrence, never themselves."""

    __slots__ = ("tokens", "index")

    def __init__(self, tokens=()):
        self.tokens: list[int] = []
        self.index: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, tokens) -> None:
        toks, index = self.tokens, self.index
        for t in tokens:
            i = len(toks)
            for n in range(N_MIN, min(N_MAX, i) + 1):
                index[tuple(toks[i - n:i])] = i
            toks.append(t)

    def draft(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the latest earlier occurrence of the longest suffix
        (N_MAX down to N_MIN tokens) that occurred before; [] when none did."""
        toks = self.tokens
        size = len(toks)
        for n in range(min(N_MAX, size), N_MIN - 1, -1):
            at = self.index.get(tuple(toks[size - n:]))
            if at is not None:
                return toks[at:at + k]
        return []


class StepCosts:
    """What a ``llama_decode`` of b tokens costs on this engine (seconds, an EMA per b), and
    the cost of a size not measured yet, interpolated between the nearest measured sizes
    (prompt chunks give large ones, generation the small ones) or extrapolated with
    ``slope`` (the extra cost of one token as a fraction of a one-token step)."""

    def __init__(self, slope: float = PRIOR_SLOPE, max_b: int = 512):
        self.slope = slope
        self.max_b = max_b
        self.ema: dict[int, float] = {}

    def record(self, b: int, seconds: float) -> None:
        if 0 < b <= self.max_b and seconds > 0:
            old = self.ema.get(b)
            self.ema[b] = seconds if old is None else old + _EMA * (seconds - old)

    def cost(self, b: int) -> float | None:
        """Seconds for b tokens; None before anything was measured."""
        ema = self.ema
        if b in ema:
            return ema[b]
        if not ema:
            return None
        below = max((x for x in ema if x < b), default=None)
        above = min((x for x in ema if x > b), default=None)
        if below is not None and above is not None:
            lo, hi = ema[below], ema[above]
            return lo + (hi - lo) * (b - below) / (above - below)
        one = ema.get(1) or ema[min(ema)] / (1 + self.slope * (min(ema) - 1))
        if below is not None:
            return ema[below] + one * self.slope * (b - below)
        return max(one * (1 + self.slope * (b - 1)), 1e-9) if above is None else ema[above] * b / above


def drafts_allowed(mode: str, n_active: int) -> bool:
    """Whether a sequence in ``mode`` may draft in a step that decodes ``n_active`` sequences."""
    return mode == "on" or (mode == "auto" and n_active == 1)


def choose_k(p: float, costs: StepCosts, batch: int, yielded: float, available: int, mode: str) -> int:
    """Draft tokens for one sequence: the k (<= available) that maximises expected tokens per
    second of the step, (yielded + p + p^2 + ... + p^k) / cost(batch + k), in "auto" only if
    that beats the step without drafts by MARGIN; "on" drafts at least min(available, K_ON)."""
    if available <= 0 or mode == "off":
        return 0
    base = costs.cost(batch)
    if base is None:
        return min(available, K_ON) if mode == "on" else 0
    best_k, best = 0, yielded / base
    expected, pk = 0.0, 1.0
    for k in range(1, min(available, K_MAX) + 1):
        pk *= p
        expected += pk
        rate = (yielded + expected) / costs.cost(batch + k)
        if rate > best:
            best_k, best = k, rate
    if mode == "on":
        return best_k or min(available, K_ON)
    return best_k if best > yielded / base * (1 + MARGIN) else 0


class SpecSteps:
    """The engine's speculative hooks (a mixin of Engine, engine thread only)."""

    def _spec_init(self, mode: str, slope: float | None) -> None:
        self.spec_mode = check_mode(mode)
        self.step_costs = StepCosts(PRIOR_SLOPE if slope is None else slope)
        self._spec_totals = [0, 0]  # accepted, rejected drafts (the prior for a new sequence)

    def _drafts(self, budget: int, group=None) -> dict:
        """{seq: draft tokens} for this step's generating sequences (``group``: those this step
        decodes, when LoRA adapter sets take turns; default all)."""
        active = self._active if group is None else group
        gen = [s for s in active if s.req.score_from is None and not s.in_prompt and s.pending
               and drafts_allowed(s.spec, len(active))]
        if not gen:
            return {}
        batch = min(budget, sum(len(s.pending) for s in active))
        yielded = float(len(gen))
        acc, rej = self._spec_totals
        prior = (acc + 1) / (acc + rej + 2)
        out = {}
        for seq in gen:
            room = min(seq.limit - seq.n_gen - 1, self.n_ctx_seq - seq.n_past - len(seq.pending),
                       budget - batch, K_MAX)
            if room <= 0:
                continue
            if seq.lookup is None:
                seq.lookup = Lookup(seq.req.tokens)
                seq.lookup.extend(seq.req.state.tokens)
            draft = seq.lookup.draft(room)
            if draft and seq.req.constraint is not None:
                draft = draft[:seq.req.constraint.valid_prefix(draft)]  # a forbidden token ends it
            if not draft:
                continue
            p = (seq.spec_acc + 2 * prior) / (seq.spec_acc + seq.spec_rej + 2)
            k = choose_k(p, self.step_costs, batch, yielded, len(draft), seq.spec)
            if k:
                out[seq] = draft[:k]
                batch += k
                yielded += p * (1 - p ** k) / (1 - p) if p < 1 else k
        return out

    def _verify(self, seq, index: int, draft: list[int]) -> None:
        """Sample the rows from ``index`` (the sequence's last known token) on, keeping each
        drafted token while the sample equals it; then keep the accepted cells, remove the
        rest, and emit what was sampled."""
        from .rows import logprob_entry, logsoftmax_row

        h, req = self._h, seq.req
        if req.cancelled:
            self._end(seq, "cancelled")
            return
        seq.in_prompt = False
        constraint, want_logprobs = req.constraint, req.params.logprobs
        sampled: list[int] = []
        entries: list[dict] = []
        end, error = None, None
        for i in range(len(draft) + 1):
            if want_logprobs or constraint is not None:
                logits = h.logits(index + i)
                if want_logprobs:
                    row, logz = logsoftmax_row(logits)
                if constraint is not None:
                    constraint.apply(logits)
            token = h.sample(seq.chain, index + i)
            if constraint is not None and not constraint.commit(token):
                error = GenerationError(f"the grammar refused token {token}: {constraint.error}")
                break
            if h.is_eog(token):
                end = "stop"
                break
            if want_logprobs:
                entries.append(logprob_entry(row, logz, token, req.params.top_logprobs))
            sampled.append(token)
            if i == len(draft) or token != draft[i]:
                break
        accepted = 0
        while accepted < min(len(sampled), len(draft)) and sampled[accepted] == draft[accepted]:
            accepted += 1
        accepted = min(accepted, len(sampled) if end or error else max(len(sampled) - 1, 0))
        # The cells of the accepted drafts stay (the sequence's next tokens); the rest go.
        seq.slot.tokens.extend(draft[:accepted])
        seq.n_past += accepted
        if accepted < len(draft):
            h.seq_rm(seq.slot.seq_id, seq.n_past, -1)
        seq.n_drafted += len(draft)
        seq.n_accepted += accepted
        seq.spec_acc += accepted
        seq.spec_rej += accepted < len(draft) and end is None and error is None
        self._spec_totals[0] += accepted
        self._spec_totals[1] += accepted < len(draft)
        self.counters["draft_tokens"] += len(draft)
        self.counters["accepted_tokens"] += accepted
        if want_logprobs and entries:
            if req.state.logprobs is None:
                req.state.logprobs = []
        for i, token in enumerate(sampled):
            if want_logprobs:
                req.state.logprobs.append(entries[i])
            if self._emit(seq, token, more=i < len(sampled) - 1):
                return
        if error is not None:
            self._end(seq, None, error=error)
        elif end is not None:
            self._end(seq, end)
        else:
            seq.pending.append(sampled[-1])
            if constraint is not None:
                self._fast_forward(seq)
