"""Per-request generation parameters: validated here, in the caller's thread, before anything is queued."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Sequence

from ..errors import InvalidArgumentError

PENALTY_LAST_N = 64  # llama.cpp's default repeat window (--repeat-last-n)
INT32_MAX = 2**31 - 1  # llama.cpp takes top_k as a C int

# llama.cpp's DRY sequence breakers (common.h): a repeat is not followed back across these.
DRY_SEQUENCE_BREAKERS = ("\n", ":", "\"", "*")

# The defaults of the knobs that differ by task, each chosen by measurement
# (benchmarks/STRUCTURED.md, "Sampling"): "text" (complete, generate), "chat", "constrained" (a json_schema,
# grammar or json_object). A value the caller passes always wins.
# "penalize_prompt": whether the repetition penalties also count the prompt's last tokens, as
# llama.cpp's tools do. A reply repeats its question's words ("What is 2+2?" -> "2+2 is 4"): counted,
# greedy SmolLM2-135M's replies to short factual questions ended by themselves 50% of the time, not
# 79%, and "What is 2+2?" got "probability theory". So chat and constrained replies are penalised for
# repeating themselves only; a raw continuation as llama.cpp does.
TASK_DEFAULTS = {
    "text": {"repeat_penalty": 1.0, "dry_multiplier": 0.0, "penalize_prompt": True},
    # SmolLM2-135M on the chat prompts of benchmarks/sampling.py: see STRUCTURED.md, "Chat replies".
    # Sampled at 0.8, 38% of replies looped with no penalty, none with 1.1 (DRY on top: no better).
    "chat": {"repeat_penalty": 1.1, "dry_multiplier": 0.0, "penalize_prompt": False},
    # Greedy on the development sample of JSONSchemaBench with SmolLM2-135M: 52% valid within 512
    # tokens as llama.cpp samples by default; repeat penalty 1.1 72%, DRY 0.8 57%, both 83%.
    "constrained": {"repeat_penalty": 1.1, "dry_multiplier": 0.8, "penalize_prompt": False},
}


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
    # DRY ("don't repeat yourself", llama.cpp's llama_sampler_init_dry; llama-server's names): a token
    # that would extend a sequence already in the output is penalised by
    # multiplier * base ** (length - allowed_length); 0 = off.
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1  # how far back to look; -1: the whole context, 0: off
    speculative: str | None = None  # "auto", "on", "off" (prompt-lookup drafts); None: the model's setting
    penalize_prompt: bool = True  # the penalties count the prompt's last tokens too (TASK_DEFAULTS: by task)

    @property
    def penalized(self) -> bool:
        return penalties_on(self.repeat_penalty, self.presence_penalty, self.frequency_penalty)

    @property
    def dry(self) -> tuple[float, float, int, int] | None:
        """(multiplier, base, allowed_length, penalty_last_n) when DRY is on, else None."""
        if not self.dry_multiplier or self.dry_penalty_last_n == 0:
            return None
        return self.dry_multiplier, self.dry_base, self.dry_allowed_length, self.dry_penalty_last_n


def make_params(*, max_tokens: int | None = 256, temperature: float = 0.8, top_p: float = 0.95, top_k: int = 40,
                min_p: float = 0.05, repeat_penalty: float | None = None, presence_penalty: float = 0.0,
                frequency_penalty: float = 0.0, repeat_last_n: int = PENALTY_LAST_N, seed: int | None = None,
                stop: Sequence[str] | str | None = None, logprobs: bool = False, top_logprobs: int = 0,
                ignore_eos: bool = False, dry_multiplier: float | None = None, dry_base: float = 1.75,
                dry_allowed_length: int = 2, dry_penalty_last_n: int = -1, task: str = "text",
                speculative: bool | str | None = None, default_seed: int | None = None) -> SamplingParams:
    """Check every parameter and fill the seed and the ``task``'s defaults (TASK_DEFAULTS) for
    what was not given; raises InvalidArgumentError naming the bad one."""
    def bad(name, value, rule):
        raise InvalidArgumentError(f"{name} must be {rule}, got {value!r}")

    defaults = TASK_DEFAULTS[task]
    repeat_penalty = defaults["repeat_penalty"] if repeat_penalty is None else repeat_penalty
    dry_multiplier = defaults["dry_multiplier"] if dry_multiplier is None else dry_multiplier

    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0):
        bad("max_tokens", max_tokens, "an integer >= 0 (or None)")
    for name, value, lo, hi in (("temperature", temperature, 0.0, None), ("top_p", top_p, 0.0, 1.0),
                                ("min_p", min_p, 0.0, 1.0), ("repeat_penalty", repeat_penalty, 0.0, None)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < lo \
                or (hi is not None and value > hi):
            bad(name, value, f">= {lo}" + (f" and <= {hi}" if hi is not None else " (a finite number)"))
    if repeat_penalty == 0:
        bad("repeat_penalty", repeat_penalty, "> 0 (1.0 = off)")
    for name, value in (("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not -2.0 <= value <= 2.0:
            bad(name, value, "between -2 and 2")
    for name, value, lo in (("dry_multiplier", dry_multiplier, 0.0), ("dry_base", dry_base, 1.0)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value < float("inf"):
            bad(name, value, f">= {lo}")
    for name, value, lo in (("dry_allowed_length", dry_allowed_length, 0), ("dry_penalty_last_n", dry_penalty_last_n, -1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            bad(name, value, f"an integer >= {lo}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= INT32_MAX:
        bad("top_k", top_k, f"an integer from 0 to {INT32_MAX} (0 = off)")
    if isinstance(repeat_last_n, bool) or not isinstance(repeat_last_n, int) or not -1 <= repeat_last_n <= INT32_MAX:
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
    if speculative is not None:
        from .speculative import check_mode
        speculative = check_mode(speculative)
    if seed is None:
        seed = default_seed if default_seed is not None else random.getrandbits(32)
    return SamplingParams(max_tokens=max_tokens, temperature=float(temperature), top_p=float(top_p), top_k=top_k,
                          min_p=float(min_p), repeat_penalty=float(repeat_penalty),
                          presence_penalty=float(presence_penalty), frequency_penalty=float(frequency_penalty),
                          repeat_last_n=repeat_last_n, seed=seed, stop=tuple(s for s in stops if s),
                          logprobs=bool(logprobs or top_logprobs),
                          top_logprobs=top_logprobs, ignore_eos=ignore_eos, dry_multiplier=float(dry_multiplier),
                          dry_base=float(dry_base), dry_allowed_length=dry_allowed_length,
                          dry_penalty_last_n=dry_penalty_last_n, speculative=speculative,
                          penalize_prompt=defaults["penalize_prompt"])


def penalties_on(repeat_penalty: float, presence_penalty: float, frequency_penalty: float) -> bool:
    """Whether llama.cpp's penalties sampler changes anything (the one place this is decided)."""
    return repeat_penalty != 1.0 or bool(presence_penalty) or bool(frequency_penalty)


def penalty_prefilter(*, temperature: float, top_k: int, repeat_penalty: float, presence_penalty: float,
                      frequency_penalty: float, penalty_last_n: int, dry: bool, n_vocab: int) -> int | None:
    """How many of the highest logits to keep *before* the repetition penalties, or None for none.

    llama.cpp's penalties sampler runs first in the chain and looks every candidate of the
    vocabulary up in its counts: ~4% of a 135M model's token time (benchmarks/penalty_cost.py).
    Penalties that only lower logits (repeat_penalty >= 1, presence and frequency >= 0) lower at
    most ``penalty_last_n`` distinct tokens, so whatever the top-k (or, greedy, the top one) is
    after them lies among the top k + penalty_last_n before them: cutting to those first leaves
    every draw unchanged (up to the order of exactly equal logits). Not with DRY (it can lower
    any number of tokens), a penalty that raises logits, no top-k (every candidate may be
    drawn), or when the cut would keep most of the vocabulary anyway."""
    if not penalties_on(repeat_penalty, presence_penalty, frequency_penalty) or dry or repeat_penalty < 1.0 or presence_penalty < 0 or frequency_penalty < 0:
        return None
    if penalty_last_n <= 0 or (temperature > 0 and top_k <= 0):
        return None
    keep = (1 if temperature <= 0 else top_k) + penalty_last_n
    return keep if keep * 4 <= n_vocab else None
