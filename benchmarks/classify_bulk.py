#!/usr/bin/env python3
"""Bulk classification: ``Model.classify_many`` (texts side by side on the engine, each text's
labels in one slot so its prompt is evaluated once) against ``Model.classify`` one text at a
time, on the same model load (n_parallel slots), same texts and labels. Reports texts/s and
the prompt tokens the engine evaluated; rounds interleave the two.

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", default="smollm2-135m")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    import slmrun

    times = {"one at a time": [], "classify_many": []}
    evaluated = {k: 0 for k in times}
    agree = []
    noise = 0.0
    with slmrun.load(a.model, n_parallel=a.parallel, n_threads=a.threads, n_threads_batch=a.threads) as m:
        m.classify(TEXTS[0], LABELS)  # warm-up: the template worker, the terminator tokens, the system prompt's cells
        for rnd in range(a.rounds):
            for how in times:
                wait_quiet(60)
                before, ev = cpu_snapshot(), m.status()["prompt_eval_tokens"]
                t0 = time.perf_counter()
                if how == "one at a time":
                    one = [m.classify(t, LABELS) for t in TEXTS]
                else:
                    many = m.classify_many(TEXTS, LABELS)
                times[how].append(time.perf_counter() - t0)
                evaluated[how] += m.status()["prompt_eval_tokens"] - ev
                noise = max(noise, others_cores(before, cpu_snapshot()))
                log(f"round {rnd + 1}: {how} {len(TEXTS) / times[how][-1]:.2f} texts/s")
            agree.append(sum(x.label == y.label for x, y in zip(one, many)))
    tps = {k: [len(TEXTS) / s for s in v] for k, v in times.items()}
    ratio = [b / o for b, o in zip(tps["classify_many"], tps["one at a time"])]

    def fmt(v, d=2):
        return f"{statistics.fmean(v):.{d}f} ± {statistics.stdev(v):.{d}f}" if len(v) > 1 else f"{v[0]:.{d}f}"
    lines = ["# Bulk classification", "",
             f"Command: `.venv/bin/python benchmarks/classify_bulk.py -m {a.model} -t {a.threads} --parallel "
             f"{a.parallel} --rounds {a.rounds}`  ",
             f"{len(TEXTS)} short texts, labels {', '.join(LABELS)}; one model load with {a.parallel} slots, "
             f"{a.threads} threads; {a.rounds} interleaved rounds (mean ± sample std dev); load average at the end "
             f"{os.getloadavg()[0]:.2f}; most CPU other processes used during a run: {noise:.2f} cores.", "",
             "| how | texts/s | prompt tokens evaluated per round |", "|---|---:|---:|"]
    for k in times:
        lines.append(f"| {k} | {fmt(tps[k])} | {evaluated[k] // a.rounds} |")
    lines += ["", f"**classify_many / one at a time: {fmt(ratio)}x**; the same label for "
              f"{sum(agree)}/{len(TEXTS) * a.rounds} texts (batched logits differ from lone ones by float "
              "rounding, amplified by the Q8 activation rounding).", ""]
    lines += analysis_block(a.out)
    a.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
