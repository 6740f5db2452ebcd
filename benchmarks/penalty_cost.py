#!/usr/bin/env python3
"""What a repetition penalty (and DRY) costs the chat token loop: `Model.chat` of ``-n`` tokens
(ignore_eos) on slmrun.bench's E2E prompt, one stream, with no penalty, with repeat_penalty 1.1
(chat's default) and with DRY 0.8 on top; rounds interleave the settings. Prints the median
tokens/s of each (generated tokens / the request's total seconds) and its ratio to no penalty.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/penalty_cost.py [-m smollm2-135m] [-n 256] [--rounds 5]

llama.cpp's penalties sampler looks up every candidate of the vocabulary in its counts (it runs
first in the chain, before top-k), so its cost per token grows with the vocabulary, not the window.
"""

from __future__ import annotations

import argparse
import statistics

SETTINGS = {"no penalty": {"repeat_penalty": 1.0, "dry_multiplier": 0.0},
            "repeat_penalty 1.1": {"repeat_penalty": 1.1, "dry_multiplier": 0.0},
            "repeat_penalty 1.1 + DRY 0.8": {"repeat_penalty": 1.1, "dry_multiplier": 0.8}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", default="smollm2-135m")
    ap.add_argument("-n", "--tokens", type=int, default=256)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    import slmrun
    from slmrun.bench import E2E_PROMPT

    msgs = [{"role": "user", "content": E2E_PROMPT}]
    rates: dict[str, list[float]] = {k: [] for k in SETTINGS}
    with slmrun.load(a.model, n_parallel=1, n_threads=a.threads) as m:
        m.chat(msgs, max_tokens=8).wait()  # warm-up
        for rnd in range(a.rounds):
            for name, kw in SETTINGS.items():
                r = m.chat(msgs, max_tokens=a.tokens, ignore_eos=True, seed=rnd + 1, **kw).wait()
                rates[name].append(r.stats.generated_tokens / r.stats.total_s)
    base = statistics.median(rates["no penalty"])
    for name, xs in rates.items():
        med = statistics.median(xs)
        print(f"{name:<30} {med:6.1f} tok/s  {med / base:.3f}x  ({' '.join(f'{x:.1f}' for x in xs)})")


if __name__ == "__main__":
    main()
