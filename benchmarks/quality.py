#!/usr/bin/env python3
"""What quantization costs SmolLM2-135M, by `slmrun eval` and by llama.cpp's llama-perplexity
side by side, and how fast `slmrun eval` is against llama-perplexity on the same work.

1. Quants: `slmrun quantize` (llama.cpp's quantizer) makes Q2_K, Q3_K_M, Q4_K_M, Q5_K_M,
   Q6_K and Q8_0 from the default model's Q4_1 (--allow-requantize: there is no F16 of it
   offline), in a private store under benchmarks/_work/quality-home.
2. Quality: `slmrun eval QUANTS... --reference smollm2-135m:q4_1 --text T` (all quants in
   one pass, in float) and the same with --llama-compat; llama-perplexity
   --kl-divergence-base on Q4_1, then --kl-divergence for each quant. Same text, -c, -b, -t.
3. Speed, in interleaved rounds on a quiet machine, each in its own process, wall time from
   start to exit: (a) perplexity of one model: `slmrun eval Q --text T` against
   `llama-perplexity -m Q -f T`; (b) KL divergence of one model from a reference:
   `slmrun eval Q --reference R --text T` against llama-perplexity's two runs (base logits
   of R to a file, then Q against it).

Writes benchmarks/QUALITY.md.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/quality.py [--rounds 5] [-c 512] [-b 2048] [-t 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]

from llama_tools import analysis_block, build_tools, cpu_snapshot, log, others_cores, wait_quiet  # noqa: E402

OUT = HERE / "QUALITY.md"
WORK = HERE / "_work" / "quality-home"
TEXT = REPO / "tests" / "data" / "quality" / "text.txt"
QUANTS = ["Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"]
REFERENCE = "smollm2-135m:q4_1"
PRINTED = {  # llama-perplexity's final statistics
    "ppl_q": r"Mean PPL\(Q\)\s*:\s*([-0-9.]+)", "ppl_base": r"Mean PPL\(base\)\s*:\s*([-0-9.]+)",
    "ln_ratio": r"Mean ln\(PPL\(Q\)/PPL\(base\)\)\s*:\s*([-0-9.]+)", "kld_mean": r"Mean    KLD:\s*([-0-9.]+)",
    "kld_median": r"Median  KLD:\s*([-0-9.]+)", "kld_p99": r"99\.0%   KLD:\s*([-0-9.]+)",
    "kld_max": r"Maximum KLD:\s*([-0-9.]+)", "same_top": r"Same top p:\s*([-0-9.]+)",
    "final_ppl": r"Final estimate: PPL = ([0-9.]+)",
}


def env() -> dict:
    return dict(os.environ, SLMRUN_HOME=str(WORK), PYTHONPATH=str(REPO))


def slmrun(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slmrun", *args], capture_output=True, text=True, env=env(),
                          check=check)


def setup_store() -> dict[str, Path]:
    """The default model's Q4_1 in a private store, and the quants made from it."""
    from slmrun import api

    src = api.resolve(REFERENCE).path  # the developer's store (or SLMRUN_HOME): read only
    WORK.mkdir(parents=True, exist_ok=True)
    files = {}
    stored = WORK / "models" / "smollm2-135m"
    if not (stored.is_dir() and any(stored.glob("*Q4_1.gguf"))):
        out = subprocess.run([sys.executable, "-m", "slmrun", "import", str(src), "--name", "smollm2-135m"],
                             capture_output=True, text=True, env=env(), check=True)
        log(out.stdout.strip())
    for q in QUANTS:
        p = slmrun("quantize", REFERENCE, "--to", q, "--allow-requantize", check=False)
        if p.returncode not in (0, 2):
            raise SystemExit(p.stderr)
    for m in json.loads(slmrun("list", "--json").stdout):
        files[m["quant"]] = Path(m["path"])
    return files


def llama_kld(exe: Path, model: Path, base_file: Path, c: int, b: int, t: int) -> dict:
    for _ in range(5):  # its log thread sometimes drops the last lines at exit
        p = subprocess.run([str(exe), "-m", str(model), "-f", str(TEXT), "-c", str(c), "-b", str(b), "-t", str(t),
                            "--kl-divergence-base", str(base_file), "--kl-divergence"], capture_output=True,
                           text=True, check=True)
        out = p.stdout + p.stderr
        got = {k: m.group(1) for k, rx in PRINTED.items() if (m := re.search(rx, out))}
        if "same_top" in got:
            return got
    raise RuntimeError(f"llama-perplexity printed no statistics for {model.name}")


def timed(cmds: list[list[str]], *, env_: dict | None = None) -> tuple[float, float]:
    """Wall seconds of the commands run one after another, and the cores others used meanwhile."""
    before = cpu_snapshot()
    t0 = time.perf_counter()
    for cmd in cmds:
        subprocess.run(cmd, check=True, capture_output=True, env=env_)
    return time.perf_counter() - t0, others_cores(before, cpu_snapshot())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-c", "--ctx", type=int, default=512)
    ap.add_argument("-b", "--batch", type=int, default=2048)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--speed-model", default="Q4_K_M")
    a = ap.parse_args()
    exe = build_tools("llama-perplexity")["llama-perplexity"]
    files = setup_store()
    log("quants: " + ", ".join(f"{q} {files[q].stat().st_size / 2**20:.1f} MiB" for q in ["Q4_1"] + QUANTS))
    c, b, t = str(a.ctx), str(a.batch), str(a.threads)
    refs = [f"smollm2-135m:{q.lower()}" for q in QUANTS]

    # --- quality -------------------------------------------------------------------------
    ours = {}
    for compat in (False, True):
        wait_quiet(120)
        p = slmrun("eval", *refs, "--reference", REFERENCE, "--text", str(TEXT), "-c", c, "-b", b, "-t", t, "--json",
                   *(["--llama-compat", "--no-save"] if compat else []))
        ours[compat] = {r["quant"]: r for r in json.loads(p.stdout)}
    base_file = WORK / f"q4_1-{a.ctx}.kld"
    subprocess.run([str(exe), "-m", str(files["Q4_1"]), "-f", str(TEXT), "-c", c, "-b", b, "-t", t,
                    "--kl-divergence-base", str(base_file)], check=True, capture_output=True)
    theirs = {q: llama_kld(exe, files[q], base_file, a.ctx, a.batch, a.threads) for q in QUANTS}

    # --- speed ---------------------------------------------------------------------------
    model, ref = files[a.speed_model], files["Q4_1"]
    py = [sys.executable, "-m", "slmrun", "eval"]
    work = {
        "perplexity": ([py + [str(model), "--text", str(TEXT), "-c", c, "-b", b, "-t", t, "--no-save"]],
                       [[str(exe), "-m", str(model), "-f", str(TEXT), "-c", c, "-b", b, "-t", t]]),
        "kl": ([py + [str(model), "--reference", str(ref), "--text", str(TEXT), "-c", c, "-b", b, "-t", t,
                      "--no-save"]],
               [[str(exe), "-m", str(ref), "-f", str(TEXT), "-c", c, "-b", b, "-t", t, "--kl-divergence-base",
                 str(WORK / "speed.kld")],
                [str(exe), "-m", str(model), "-f", str(TEXT), "-c", c, "-b", b, "-t", t, "--kl-divergence-base",
                 str(WORK / "speed.kld"), "--kl-divergence"]]),
    }
    times: dict[str, dict[str, list[float]]] = {k: {"slmrun": [], "llama": []} for k in work}
    noise = 0.0
    for rnd in range(a.rounds):
        for kind, (mine, llama) in work.items():
            order = [("slmrun", mine), ("llama", llama)]
            for who, cmds in (order if rnd % 2 == 0 else order[::-1]):
                wait_quiet(120)
                seconds, n = timed(cmds, env_=env())
                noise = max(noise, n)
                times[kind][who].append(seconds)
                log(f"round {rnd + 1}/{a.rounds} {kind} {who}: {seconds:.2f} s (others {n:.2f} cores)")
    write(a, files, ours, theirs, times, noise)


def _f(x, fmt=".6f"):
    return "-" if x is None else format(float(x), fmt)


def write(a, files, ours, theirs, times, noise) -> None:
    q41 = files["Q4_1"].stat().st_size
    lines = ["# Quality: what quantization costs SmolLM2-135M, measured two ways", "",
             f"Command: `PYTHONPATH=$PWD .venv/bin/python benchmarks/quality.py --rounds {a.rounds} -c {a.ctx} "
             f"-b {a.batch} -t {a.threads}`  ",
             f"Text: `tests/data/quality/text.txt` (original prose written for slmrun, see its NOTE.md), "
             f"{ours[False][QUANTS[0]]['n_tokens']} scored tokens in {ours[False][QUANTS[0]]['n_chunks']} chunks "
             f"of {a.ctx}; batch {a.batch}; {a.threads} threads.", "",
             "**The reference is the Q4_1 file itself**, not the model at full precision: no F16 of SmolLM2-135M "
             "is available offline. Every quant here was made from that Q4_1 (`slmrun quantize --allow-requantize`), "
             "so the figures say how far each one's predictions moved from Q4_1's, not what it loses against the "
             "real model: Q8_0 and Q6_K, finer grids laid over Q4_1's already-rounded weights, come out close to it; "
             "Q2_K–Q4_K_M add their own rounding to Q4_1's. The planner does not rank by such figures "
             "(`measured_quality` keeps only those against F32, F16 or BF16).", "",
             "## KL divergence from Q4_1, per token (nats)", "",
             "slmrun: `slmrun eval QUANT... --reference smollm2-135m:q4_1` (both models' logits in float); "
             "with `--llama-compat`: the reference rounded to 16 bits as llama-perplexity's "
             "`--kl-divergence-base` file keeps it. llama-perplexity: `--kl-divergence-base` on Q4_1, then "
             "`--kl-divergence` on each quant.", "",
             "| quant | size | tool | PPL | ln(PPL/PPL_ref) | KLD mean | median | p99 | max | same top |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for q in QUANTS:
        size = f"{files[q].stat().st_size / q41:.2f}x"
        for tool, r in (("slmrun", ours[False][q]), ("slmrun --llama-compat", ours[True][q])):
            k = r["kl_divergence"]
            lines.append(f"| {q} | {size} | {tool} | {_f(r['perplexity'], '.4f')} | {_f(r['ln_ppl_ratio'])} | "
                         f"{_f(k['mean'])} | {_f(k['median'])} | {_f(k['p99'])} | {_f(k['max'])} | "
                         f"{100 * r['top1_agreement']:.3f}% |")
            size = ""
        x = theirs[q]
        lines.append(f"| | | llama-perplexity | {x.get('ppl_q', '-')} | {x.get('ln_ratio', '-')} | "
                     f"{x.get('kld_mean', '-')} | {x.get('kld_median', '-')} | {x.get('kld_p99', '-')} | "
                     f"{x.get('kld_max', '-')} | {x.get('same_top', '-')}% |")
    worst = max(abs(float(ours[True][q]["kl_divergence"][k]) - float(theirs[q][f"kld_{k}"]))
                for q in QUANTS for k in ("mean", "median", "p99", "max"))
    worst_rel = max(abs(float(ours[False][q]["kl_divergence"]["mean"]) / float(theirs[q]["kld_mean"]) - 1)
                    for q in QUANTS)
    lines += ["", f"Largest difference, `--llama-compat` against llama-perplexity (KLD mean, median, p99, max): "
                  f"{worst:.6f} nats. slmrun's float figures against llama-perplexity's 16-bit ones, mean KLD: "
                  f"{100 * worst_rel:.2f}% at most. Reference perplexity (Q4_1): slmrun "
                  f"{ours[False][QUANTS[0]]['reference_perplexity']:.4f} (float), "
                  f"{ours[True][QUANTS[0]]['reference_perplexity']:.4f} (16-bit); llama-perplexity "
                  f"{theirs[QUANTS[0]].get('ppl_base', '-')} (16-bit).", ""]
    lines += ["## Speed: `slmrun eval` against llama-perplexity on the same work", "",
              f"{a.speed_model} (and Q4_1 as the reference), wall time from start to exit of each process (loading, "
              f"tokenizing, evaluating, printing), {a.rounds} interleaved rounds (the order alternates), each run "
              f"after waiting for a quiet machine; most CPU other processes used during a run: {noise:.2f} cores. "
              "Speed ratio = llama-perplexity's seconds / slmrun's, per round (> 1: slmrun faster; goal >= 0.9).", "",
              "| work | slmrun s | llama-perplexity s | speed ratio (mean ± sd, min–max) |", "|---|---:|---:|---:|"]
    names = {"perplexity": "perplexity of one model (`slmrun eval Q --text T` / `llama-perplexity -m Q -f T`)",
             "kl": "KL divergence from a reference (`slmrun eval Q --reference R` / llama-perplexity's two runs: "
                   "base logits of R to a file, then Q)"}
    for kind, runs in times.items():
        ratios = [y / x for x, y in zip(runs["slmrun"], runs["llama"])]
        sd = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
        lines.append(f"| {names[kind]} | {statistics.fmean(runs['slmrun']):.2f} | {statistics.fmean(runs['llama']):.2f} "
                     f"| **{statistics.fmean(ratios):.3f}** ± {sd:.3f} ({min(ratios):.3f}–{max(ratios):.3f}) |")
    OUT.write_text("\n".join(lines + [""] + analysis_block(OUT)) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
