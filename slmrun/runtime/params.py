"""Per-request generation parameters: validated here, in the caller's thread, before anything is queued."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

from ..errors import InvalidArgumentError

PENALTY_LAST_N = 64  # llama.cpp's default repeat window (--repeat-last-n)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = 256  # None: until the end of generation or of the context
    temperature: float = 0.8  # 0: greedy, deterministic
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_last_n: int = PENALTY_LAST_N  # tokens the penalties look back over (0: none, -1: the context)
    seed: int | None = None  # None: the model's default seed, else a random one
    stop: tuple[str, ...] = field(default_factory=tuple)
    logprobs: bool = False  # record each generated token's log-probability
    top_logprobs: int = 0  # ... and the most likely alternatives at each step (OpenAI's top_logprobs)
    ignore_eos: bool = False  # never end on the end-of-generation token (llama.cpp's ignore_eos; benchmarks)

    @property
    def penalized(self) -> bool:
        return self.repeat_penalty != 1.0 or bool(self.presence_penalty) or bool(self.frequency_penalty)


def make_params(*, max_tokens: int | None = 256, temperature: float = 0.8, top_p: float = 0.95, top_k: int = 40,
                min_p: float = 0.05, repeat_penalty: float = 1.0, presence_penalty: float = 0.0,
                frequency_penalty: float = 0.0, repeat_last_n: int = PENALTY_LAST_N, seed: int | None = None,
                stop: Sequence[str] | str | None = None, logprobs: bool = False, top_logprobs: int = 0,
                ignore_eos: bool = False, default_seed: int | None = None) -> SamplingParams:
    """Check every parameter and fill the seed; raises InvalidArgumentError naming the bad one."""
    def bad(name, value, rule):
        raise InvalidArgumentError(f"{name} must be {rule}, got {value!r}")

    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0):
        bad("max_tokens", max_tokens, "an integer >= 0 (or None)")
    for name, value, lo, hi in (("temperature", temperature, 0.0, None), ("top_p", top_p, 0.0, 1.0),
                                ("min_p", min_p, 0.0, 1.0), ("repeat_penalty", repeat_penalty, 0.0, None)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value or value < lo \
                or (hi is not None and value > hi):
            bad(name, value, f">= {lo}" + (f" and <= {hi}" if hi is not None else ""))
    if repeat_penalty == 0:
        bad("repeat_penalty", repeat_penalty, "> 0 (1.0 = off)")
    for name, value in (("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not -2.0 <= value <= 2.0:
            bad(name, value, "between -2 and 2")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        bad("top_k", top_k, "an integer >= 0 (0 = off)")
    if isinstance(repeat_last_n, bool) or not isinstance(repeat_last_n, int) or repeat_last_n < -1:
        bad("repeat_last_n", repeat_last_n, "an integer >= -1 (0 = off, -1 = the whole context)")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        bad("seed", seed, "an integer")
    if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int) or not 0 <= top_logprobs <= 20:
        bad("top_logprobs", top_logprobs, "an integer from 0 to 20")
    if stop is not None and not isinstance(stop, (str, list, tuple)):
        bad("stop", stop, "a string or a list of strings")
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if not all(isinstance(s, str) for s in stops):
        bad("stop", stop, "a string or a list of strings")
    for name, value in (("logprobs", logprobs), ("ignore_eos", ignore_eos)):
        if not isinstance(value, bool):
            bad(name, value, "true or false")
    if seed is None:
        seed = default_seed if default_seed is not None else random.getrandbits(32)
    return SamplingParams(max_tokens=max_tokens, temperature=float(temperature), top_p=float(top_p), top_k=top_k,
                          min_p=float(min_p), repeat_penalty=float(repeat_penalty),
                          presence_penalty=float(presence_penalty), frequency_penalty=float(frequency_penalty),
                          repeat_last_n=repeat_last_n, seed=seed, stop=tuple(s for s in stops if s), logprobs=bool(logprobs or top_logprobs),
                          top_logprobs=top_logprobs, ignore_eos=ignore_eos)
