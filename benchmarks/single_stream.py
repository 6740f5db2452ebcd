#!/usr/bin/env python3
"""One stream: did the engine cost single-request speed, and is its greedy text llama.cpp's?

1. Speed, side by side: `slmrun bench` (pp512, tg128 and e2e128 — the real generation path:
   sampling, detokenising, streaming) from this checkout and from an earlier revision (default:
   71e9b32, the runtime before the engine, which generated through llama-cpp-python's
   Llama.generate), each in its own process, interleaved in rounds on a quiet machine. The
   old revision is checked out with `git worktree` under benchmarks/_work/ (gitignored) and run
   with the same interpreter and llama-cpp-python.
2. Greedy text: llama.cpp's `llama-completion` (built from the same vendored source,
   benchmarks/llama_tools.py) and `Model.complete(temperature=0)` on the same raw prompts,
   threads, context and flash attention: the generated text must be identical.

Writes benchmarks/SINGLE_STREAM.md.

    .venv/bin/python benchmarks/single_stream.py [-m MODEL.gguf] [-t 2] [--rounds 5] [--old 71e9b32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_tools import HERE, analysis_block, build_tools, cpu_snapshot, log, others_cores, wait_quiet  # noqa: E402

REPO = HERE.parent
WORK = HERE / "_work"
OUT = HERE / "SINGLE_STREAM.md"
PROMPTS = ["The capital of France is", "Once upon a time, in a small village by the sea,",
           "def fibonacci(n):", "The three primary colors are", "Water boils at"]


def checkout(rev: str) -> Path:
    path = WORK / f"rev-{rev}"
    if not (path / "slmrun").is_dir():
        WORK.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), rev], check=True,
                       capture_output=True)
    return path


def bench(code_dir: Path, model: Path, threads: int, reps: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code_dir))
    out = subprocess.run([sys.executable, "-m", "slmrun", "bench", "-m", str(model), "-t", str(threads), "-p", "512",
                          "-n", "128", "-r", str(reps), "--json", "-q"], check=True, capture_output=True, text=True,
                         env=env, cwd=str(code_dir)).stdout
    rows = {r["test"]: r for r in json.loads(out)["results"]}
    return {k: rows[t]["mean_tps"] for k, t in (("pp", "pp512"), ("tg", "tg128"), ("e2e", "e2e128"))}


def quiet(fn):
    for attempt in range(3):
        wait_quiet(60)
        before = cpu_snapshot()
        result = fn()
        noise = others_cores(before, cpu_snapshot())
        if noise <= 0.2 or attempt == 2:
            return result, noise
        log(f"other processes used {noise:.2f} cores; measuring again")


def greedy_pairs(exe: Path, model: Path, threads: int, n: int) -> list[tuple[str, str, str]]:
    import slmrun

    pairs = []
    with slmrun.load(str(model), n_ctx=2048, n_threads=threads, n_parallel=1, flash_attn=True) as m:
        for prompt in PROMPTS:
            ours = m.complete(prompt, max_tokens=n, temperature=0).text
            theirs = subprocess.run([str(exe), "-m", str(model), "-p", prompt, "-n", str(n), "--temp", "0",
                                     "-t", str(threads), "-c", "2048", "-fa", "on", "-no-cnv",
                                     "--no-display-prompt", "--seed", "1"],
                                    check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL).stdout
            # llama-completion marks a reply that ended on EOS with " [end of text]" (not model text)
            pairs.append((prompt, ours, theirs.rstrip("\n").removesuffix(" [end of text]")))
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", type=Path, default=None)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--old", default="71e9b32")
    ap.add_argument("-n", "--tokens", type=int, default=64, help="tokens for the greedy comparison")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    if a.model is None:
        from slmrun.api import resolve
        a.model = resolve("smollm2-135m").path
    old = checkout(a.old)
    runs = {"new": [], "old": []}
    noise = 0.0
    for rnd in range(a.rounds):
        for which, code in (("old", old), ("new", REPO)):
            log(f"round {rnd + 1}/{a.rounds}: {which}")
            result, n = quiet(lambda: bench(code, a.model, a.threads, a.reps))
            noise = max(noise, n)
            runs[which].append(result)
            log(f"  {result}")
    exe = build_tools("llama-completion")["llama-completion"]
    pairs = greedy_pairs(exe, a.model, a.threads, a.tokens)

    def col(which, key):
        return [r[key] for r in runs[which]]

    lines = ["# One stream: the engine against the runtime before it, and against llama-completion", "",
             f"Command: `.venv/bin/python benchmarks/single_stream.py -m {a.model.name} -t {a.threads} "
             f"--rounds {a.rounds} -r {a.reps} --old {a.old}`  ",
             f"`slmrun bench -p 512 -n 128 -r {a.reps}` from this checkout (new) and from {a.old} (old: generation "
             "through llama-cpp-python's `Llama.generate`), each in its own process, interleaved; mean ± sample "
             f"std dev over {a.rounds} rounds of per-round means; ratio = new / old per round. Most CPU other processes "
             f"used during a run: {noise:.2f} cores.", "",
             "| test | old tok/s | new tok/s | new / old |", "|---|---:|---:|---:|"]
    for key, name in (("pp", "pp512"), ("tg", "tg128"), ("e2e", "e2e128 (the real generation path)")):
        o, nw = col("old", key), col("new", key)
        ratios = [x / y for x, y in zip(nw, o)]
        lines.append(f"| {name} | {statistics.fmean(o):.1f} ± {statistics.stdev(o):.1f} | "
                     f"{statistics.fmean(nw):.1f} ± {statistics.stdev(nw):.1f} | "
                     f"**{statistics.fmean(ratios):.3f}** ± {statistics.stdev(ratios):.3f} |")
    same = sum(ours == theirs for _, ours, theirs in pairs)
    lines += ["", f"## Greedy text against llama.cpp's llama-completion ({a.tokens} tokens, temperature 0)", "",
              f"**{same} of {len(pairs)} prompts identical.**", "", "| prompt | identical | slmrun | llama-completion |",
              "|---|---|---|---|"]
    for prompt, ours, theirs in pairs:
        cell = lambda t: t.replace("|", "\\|").replace("\n", "⏎")[:120]  # noqa: E731
        lines.append(f"| {cell(prompt)} | {'yes' if ours == theirs else 'NO'} | {cell(ours)} | {cell(theirs)} |")
    a.out.write_text("\n".join(lines + [""] + analysis_block(a.out)) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
