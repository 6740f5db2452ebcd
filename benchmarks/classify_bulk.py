#!/usr/bin/env python3
"""Bulk classification: ``Model.classify_many`` (texts side by side on the engine, each text's
labels in one slot so its prompt is evaluated once) against ``Model.classify`` one text at a
time, on the same model load (n_parallel slots), same texts and labels, with each KV cache
layout (a stream per sequence, llama.cpp's default with -np N, and one unified cache). Reports
texts/s and the prompt tokens the engine evaluated; rounds interleave all four.

    .venv/bin/python benchmarks/classify_bulk.py [--rounds 3] [--parallel 4]   (writes benchmarks/CLASSIFY_BULK.md)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_tools import HERE, analysis_block, cpu_snapshot, log, others_cores, wait_quiet  # noqa: E402

OUT = HERE / "CLASSIFY_BULK.md"
LABELS = ["positive", "negative", "neutral"]
# Short reviews written for this benchmark.
TEXTS = [
    "I absolutely loved this film, it was wonderful!", "This was the worst meal I have ever had.",
    "Great service and friendly staff.", "Rude staff and cold food.", "A delightful, moving story.",
    "The package arrived on Tuesday.", "Terrible support, never again.", "The hotel was clean and quiet.",
    "It does what it says, nothing more.", "The battery died after two days.", "Best purchase I made this year.",
    "The meeting is at three o'clock.", "Awful sound quality and a flimsy case.", "Fresh bread and lovely coffee.",
    "The train was twenty minutes late again.", "Simple setup, works perfectly.",
]


LAYOUTS = {"streams": False, "unified": True}  # the KV cache: a stream per sequence, or one (kv_unified)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", default="smollm2-135m")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=4, help="the texts, this many times over, per timed run")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    import slmrun

    texts = TEXTS * a.repeat  # ~6 s a timed run: this VM's rounds swing by 10% on shorter ones
    # Both KV layouts loaded side by side (each its own engine), every round runs all four.
    hows = [(layout, how) for layout in LAYOUTS for how in ("one at a time", "classify_many")]
    times = {k: [] for k in hows}
    evaluated = {k: 0 for k in hows}
    agree = []
    noise = 0.0
    models = {layout: slmrun.load(a.model, n_parallel=a.parallel, n_threads=a.threads, n_threads_batch=a.threads,
                                  kv_unified=unified) for layout, unified in LAYOUTS.items()}
    try:
        for m in models.values():
            m.classify(TEXTS[0], LABELS)  # warm-up: the template worker, the terminator tokens, the prompt's cells
        for rnd in range(a.rounds):
            labels = {}
            for layout, how in hows:
                m = models[layout]
                wait_quiet(60)
                before, ev = cpu_snapshot(), m.status()["prompt_eval_tokens"]
                t0 = time.perf_counter()
                if how == "one at a time":
                    got = [m.classify(t, LABELS) for t in texts]
                else:
                    got = m.classify_many(texts, LABELS)
                times[layout, how].append(time.perf_counter() - t0)
                evaluated[layout, how] += m.status()["prompt_eval_tokens"] - ev
                noise = max(noise, others_cores(before, cpu_snapshot()))
                labels[layout, how] = [c.label for c in got]
                log(f"round {rnd + 1}: {layout} {how} {len(texts) / times[layout, how][-1]:.2f} texts/s")
            first = labels[hows[0]]
            agree.append(sum(all(labels[k][i] == first[i] for k in hows) for i in range(len(texts))))
    finally:
        for m in models.values():
            m.close()
    tps = {k: [len(texts) / s for s in v] for k, v in times.items()}

    def fmt(v, d=2):
        return f"{statistics.fmean(v):.{d}f} ± {statistics.stdev(v):.{d}f}" if len(v) > 1 else f"{v[0]:.{d}f}"
    lines = ["# Bulk classification", "",
             f"Command: `.venv/bin/python benchmarks/classify_bulk.py -m {a.model} -t {a.threads} --parallel "
             f"{a.parallel} --rounds {a.rounds} --repeat {a.repeat}`  ",
             f"{len(TEXTS)} short texts ({a.repeat} times over per timed run), labels {', '.join(LABELS)}; "
             "each KV layout its own model load with "
             f"{a.parallel} slots, {a.threads} threads; {a.rounds} interleaved rounds (mean ± sample std dev); load "
             f"average at the end {os.getloadavg()[0]:.2f}; most CPU other processes used during a run: "
             f"{noise:.2f} cores.", "",
             "| KV cache | how | texts/s | prompt tokens evaluated per round |", "|---|---|---:|---:|"]
    for layout, how in hows:
        lines.append(f"| {layout} | {how} | {fmt(tps[layout, how])} | {evaluated[layout, how] // a.rounds} |")
    lines.append("")
    for layout in LAYOUTS:
        ratio = [b / o for b, o in zip(tps[layout, "classify_many"], tps[layout, "one at a time"])]  # noqa: B023
        lines.append(f"- **{layout}: classify_many / one at a time {fmt(ratio)}x**")
    base = tps["streams", "one at a time"]
    best = [b / o for b, o in zip(tps["unified", "classify_many"], base)]
    lines += [f"- unified classify_many / streams one at a time: {fmt(best)}x", "",
              f"The same label from all four for {sum(agree)}/{len(texts) * a.rounds} texts (batched logits "
              "differ from lone ones by float rounding, amplified by the Q8 activation rounding).", ""]
    lines += analysis_block(a.out)
    a.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
