"""A slot (one llama.cpp sequence id and what its cells hold) and a request while it holds one."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .params import SamplingParams
from .response import ResponseState, TextAssembler


@dataclass(eq=False)
class Request:
    tokens: list[int]
    params: SamplingParams
    state: ResponseState
    stops: tuple[str, ...] = ()
    strip_leading: bool = False
    constraint: object | None = None  # per-sequence grammar state (slmrun.structured.Constraint)
    score_from: int | None = None  # scoring, not generating: keep the logits rows from this position on
    t_submit: float = field(default_factory=time.perf_counter)
    cancelled: bool = False


class Slot:
    __slots__ = ("seq_id", "tokens", "busy", "last_used")

    def __init__(self, seq_id: int):
        self.seq_id = seq_id
        self.tokens: list[int] = []  # what the KV cache holds for this sequence, in order
        self.busy = False
        self.last_used = 0.0


class Seq:
    """A request while it holds a slot (engine thread only)."""

    __slots__ = ("req", "slot", "pending", "n_past", "n_gen", "limit", "chain", "text", "in_prompt",
                 "cached", "prompt_s", "t_admit", "t_first", "stopped", "n_forced",
                 "spec", "lookup", "spec_acc", "spec_rej", "n_drafted", "n_accepted")

    def __init__(self, req: Request, slot: Slot, n_keep: int, limit: int, chain, text: TextAssembler):
        self.req, self.slot, self.chain, self.text = req, slot, chain, text
        self.pending = list(req.tokens[n_keep:])  # tokens to decode next
        self.n_past = n_keep  # tokens of this sequence in the KV cache
        self.cached = n_keep
        self.n_gen = 0
        self.limit = limit
        self.in_prompt = True
        self.prompt_s = 0.0
        self.t_admit = time.perf_counter()
        self.t_first: float | None = None
        self.stopped = False
        self.n_forced = 0
        # Speculative decoding (speculative.py): the mode, the n-gram index (built on the first
        # draft), accepted draft tokens and rejected drafts (this sequence's acceptance rate).
        self.spec = "off"
        self.lookup = None
        self.spec_acc = self.spec_rej = 0
        self.n_drafted = self.n_accepted = 0


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
