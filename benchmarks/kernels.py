"""What a batch costs, per quant type, on this machine's CPU: llama.cpp's own `llama-bench` on the
default model re-gridded to each type, prompt batches of 1, 4, 16 and 64 tokens and generation.

    .venv/bin/python benchmarks/kernels.py [-t 2] [--reps 3]     (writes benchmarks/KERNELS.md)

Why: ggml has batched (matrix-matrix) CPU kernels for some types only: on x86 llamafile's
tinyBLAS (F32, F16, BF16, Q8_0, Q4_0, ...) and the repacked layouts (Q4_0, IQ4_NL, Q4_K, ...);
others decode a batch as one dot product per row and token, so a batch of k tokens costs
nearly k single-token steps. That decides what batching buys (prompts, several streams,
speculative drafts, bulk classification) and which quant of a model is fastest here. Every
type is made from the one published file (Q4_1) with llama-quantize --allow-requantize, so
the weights are the same model; the quality of each against Q4_1 is QUALITY.md's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from llama_tools import HERE, analysis_block, build_tools, log, wait_quiet  # noqa: E402

OUT = HERE / "KERNELS.md"
TYPES = ["Q4_1", "Q4_0", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "F16"]
BATCHES = (1, 4, 16, 64)


def default_model() -> Path:
    slmrun = str(Path(sys.executable).with_name("slmrun"))
    out = subprocess.run([slmrun, "show", "smollm2-135m:q4_1", "--json", "--no-verify"], capture_output=True,
                         text=True, check=True).stdout
    return Path(json.loads(out)["file"])


def bench(tool: Path, model: Path, threads: int, reps: int) -> dict:
    """{"pp1": tokens/s, ..., "tg32": tokens/s} from llama-bench's JSON."""
    cmd = [str(tool), "-m", str(model), "-t", str(threads), "-fa", "1", "-r", str(reps), "-o", "json",
           "-p", ",".join(map(str, BATCHES)), "-n", "32"]
    rows = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    out = {}
    for r in rows:
        key = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
        out[key] = r["avg_ts"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    tools = build_tools("llama-bench", "llama-quantize")
    source = default_model()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for t in TYPES:
            path = source if t == "Q4_1" else Path(tmp) / f"{t}.gguf"
            if t != "Q4_1":
                subprocess.run([str(tools["llama-quantize"]), "--allow-requantize", str(source), str(path), t,
                                str(a.threads)], capture_output=True, check=True)
            wait_quiet(30)
            results[t] = bench(tools["llama-bench"], path, a.threads, a.reps)
            results[t]["size"] = path.stat().st_size
            log(f"{t}: " + ", ".join(f"{k} {v:.0f}" for k, v in results[t].items() if k != "size"))
    base = results["Q4_1"]
    lines = ["# Batched kernels: what a batch of tokens costs, per quant type", "",
             f"Command: `.venv/bin/python benchmarks/kernels.py -t {a.threads} --reps {a.reps}`  ",
             f"llama-bench (built from the vendored llama.cpp), SmolLM2-135M re-gridded from its published "
             f"Q4_1 to each type, {a.threads} threads, flash attention on, {a.reps} repetitions; tokens/s; "
             f"load average at the end {os.getloadavg()[0]:.2f}.", "",
             "| type | size | pp1 | pp4 | pp16 | pp64 | tg32 | pp64 / pp1 | pp64 vs Q4_1 | tg32 vs Q4_1 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t, r in results.items():
        lines.append(f"| {t} | {r['size'] / 2**20:.0f} MiB | " + " | ".join(f"{r[f'pp{b}']:.0f}" for b in BATCHES)
                     + f" | {r['tg32']:.0f} | {r['pp64'] / r['pp1']:.2f}x | {r['pp64'] / base['pp64']:.2f}x"
                     f" | {r['tg32'] / base['tg32']:.2f}x |")
    lines += [""] + analysis_block(OUT)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
