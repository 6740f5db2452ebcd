#!/usr/bin/env python3
"""Concurrent streams on one model: slmrun's engine against llama.cpp's llama-server.

For N concurrent streams (1, 2, 4, 8), each asking for the same number of tokens
(ignore_eos, so every stream runs to the end) from its own prompt:

- llama-server (built from the llama.cpp vendored in the installed llama-cpp-python, with
  the same CMake switches; benchmarks/llama_tools.py) with ``-np N -c N x CTX -fa on``,
  driven over HTTP by N client threads streaming ``/completion``;
- slmrun, in its own process: ``slmrun.load(model, n_ctx=CTX, n_parallel=N)`` and N
  threads streaming ``Model.complete``, the library path an app would use.

Same model, threads, flash attention, sampling (temperature 0.8, a seed per stream) and
prompts; rounds interleave the two, each run waits for a quiet machine first. Reports
the aggregate generated tokens/s (all streams' tokens / wall time from the first request
to the last token) and p50/p95 time to first token, and writes benchmarks/CONCURRENCY.md.

    .venv/bin/python benchmarks/concurrency.py [-m MODEL.gguf] [-t 2] [--streams 1,2,4,8] [-n 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_tools import mean_sd as fmt  # noqa: E402
from llama_tools import (HERE, analysis_block, build_tools, cpu_snapshot, free_port, log, others_cores,  # noqa: E402
                         wait_http_ready, wait_quiet)

OUT = HERE / "CONCURRENCY.md"
TOPICS = ["a lighthouse keeper", "a lost robot", "the first snow", "a market at dawn", "an old violin",
          "a city under the sea", "a desert caravan", "a clockmaker's apprentice"]


def prompts(n: int) -> list[str]:
    return [f"Once upon a time there was {TOPICS[i % len(TOPICS)]}. Write the whole story, in detail:\n"
            for i in range(n)]


def percentile(values, q: float) -> float:
    values = sorted(values)
    if not values:
        return 0.0
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


# ------------------------------------------------------------------ llama-server

def run_llama_server(exe: Path, model: Path, threads: int, n_streams: int, n_tokens: int, ctx: int) -> dict:
    port = free_port()
    cmd = [str(exe), "-m", str(model), "-t", str(threads), "-tb", str(threads), "-np", str(n_streams),
           "-c", str(ctx * n_streams), "-fa", "on", "--host", "127.0.0.1", "--port", str(port), "--no-webui"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http_ready(port, proc, timeout=120, what=f"llama-server ({' '.join(cmd)})")
        _server_round(port, prompts(1), min(16, n_tokens))  # warm-up: page in the weights
        return _server_round(port, prompts(n_streams), n_tokens)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _server_round(port: int, texts: list[str], n_tokens: int) -> dict:
    results = [None] * len(texts)
    start = threading.Barrier(len(texts) + 1)

    def client(i: int) -> None:
        body = json.dumps({"prompt": texts[i], "n_predict": n_tokens, "ignore_eos": True, "temperature": 0.8,
                           "seed": i + 1, "stream": True, "cache_prompt": False})
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        start.wait()
        t0 = time.perf_counter()
        c.request("POST", "/completion", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        first, tokens = None, 0
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event.get("content") and first is None:
                first = time.perf_counter()
            if event.get("stop"):
                tokens = event.get("tokens_predicted") or event.get("timings", {}).get("predicted_n", 0)
        results[i] = (t0, first or time.perf_counter(), time.perf_counter(), tokens)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    start.wait()
    for t in threads:
        t.join()
    return _summary(results)


def _summary(results) -> dict:
    t_start = min(r[0] for r in results)
    t_end = max(r[2] for r in results)
    tokens = sum(r[3] for r in results)
    return {"aggregate_tps": tokens / (t_end - t_start), "tokens": tokens,
            "ttft": [r[1] - r[0] for r in results], "wall_s": t_end - t_start}


# ------------------------------------------------------------------ slmrun

SLMRUN_RUN = r"""
import json, sys, threading, time
import slmrun
from slmrun.runtime.engine import Engine
a = json.loads(sys.argv[1])
# The engine's step timed whole and around llama_decode: the rest is its Python per step.
clock = {"steps": 0, "step_s": 0.0, "decode_s": 0.0}
step = Engine._step
def timed_step(self):
    h = self._h
    if not hasattr(h, "timed"):
        decode = h.decode
        def timed_decode(items):
            t = time.perf_counter()
            try:
                return decode(items)
            finally:
                clock["decode_s"] += time.perf_counter() - t
        h.decode, h.timed = timed_decode, True
    t = time.perf_counter()
    step(self)
    clock["step_s"] += time.perf_counter() - t
    clock["steps"] += 1
Engine._step = timed_step
with slmrun.load(a["model"], n_ctx=a["ctx"], n_parallel=a["n"], n_threads=a["threads"],
                 n_threads_batch=a["threads"], flash_attn=True, kv_unified=a["kv_unified"]) as m:
    m.complete(a["prompts"][0], max_tokens=16, ignore_eos=True).wait()  # warm-up: page in the weights
    clock.update(steps=0, step_s=0.0, decode_s=0.0)
    results = [None] * a["n"]
    start = threading.Barrier(a["n"] + 1)
    def client(i):
        start.wait()
        t0 = time.perf_counter()
        r = m.complete(a["prompts"][i], max_tokens=a["tokens"], ignore_eos=True, temperature=0.8, seed=i + 1)
        first = None
        for piece in r:
            if first is None:
                first = time.perf_counter()
        results[i] = (t0, first, time.perf_counter(), r.stats.generated_tokens)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(a["n"])]
    for t in threads:
        t.start()
    start.wait()
    for t in threads:
        t.join()
    steps = m.status()["steps"]
print(json.dumps({"results": results, "steps": steps,
                  "outside_ms": 1000 * (clock["step_s"] - clock["decode_s"]) / max(1, clock["steps"]),
                  "step_ms": 1000 * clock["step_s"] / max(1, clock["steps"])}))
"""


def run_slmrun(model: Path, threads: int, n_streams: int, n_tokens: int, ctx: int, kv_unified: bool = False) -> dict:
    args = json.dumps({"model": str(model), "threads": threads, "n": n_streams, "tokens": n_tokens, "ctx": ctx,
                       "prompts": prompts(n_streams), "kv_unified": kv_unified})
    out = subprocess.run([sys.executable, "-c", SLMRUN_RUN, args], check=True, capture_output=True, text=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return _summary(data["results"]) | {k: data[k] for k in ("steps", "outside_ms", "step_ms")}


# ------------------------------------------------------------------ the run

def measure(tool: str, fn, retries: int = 3) -> dict:
    """One run on a quiet machine; redone (up to `retries`) when other processes used > 0.2 cores."""
    for attempt in range(retries):
        wait_quiet(60)
        before = cpu_snapshot()
        result = fn()
        noise = others_cores(before, cpu_snapshot())
        result["noise"] = noise
        if noise <= 0.2 or attempt == retries - 1:
            return result
        log(f"{tool}: other processes used {noise:.2f} cores; measuring again")
    raise AssertionError("unreachable")




def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", type=Path, default=None, help="a .gguf (default: the default model's file)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--streams", default="1,2,4,8")
    ap.add_argument("-n", "--tokens", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=2048, help="context per stream")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kv-unified", action="store_true", help="slmrun with one unified KV cache (llama.cpp's -kvu)")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    if a.model is None:
        from slmrun.api import resolve
        a.model = resolve("smollm2-135m").path
    streams = [int(x) for x in a.streams.split(",")]
    exe = build_tools("llama-server")["llama-server"]
    runs: dict[tuple[str, int], list[dict]] = {}
    for rnd in range(a.rounds):
        for n in streams:
            for tool in ("llama-server", "slmrun"):
                log(f"round {rnd + 1}/{a.rounds}: {tool}, {n} stream(s)")
                fn = ((lambda: run_llama_server(exe, a.model, a.threads, n, a.tokens, a.ctx)) if tool == "llama-server"
                      else (lambda: run_slmrun(a.model, a.threads, n, a.tokens, a.ctx, a.kv_unified)))
                r = measure(tool, fn)
                log(f"  {r['aggregate_tps']:.1f} tok/s aggregate, TTFT p50 {percentile(r['ttft'], .5) * 1000:.0f} ms")
                runs.setdefault((tool, n), []).append(r)
    write_report(a, streams, runs)


def write_report(a, streams, runs) -> None:
    agg = {k: [r["aggregate_tps"] for r in v] for k, v in runs.items()}
    one = statistics.fmean(agg[("slmrun", 1)]) if ("slmrun", 1) in agg else None
    lines = [
        "# Concurrent streams: slmrun's engine vs llama.cpp's llama-server",
        "",
        f"Command: `.venv/bin/python benchmarks/concurrency.py -m {a.model.name} -t {a.threads} "
        f"--streams {a.streams} -n {a.tokens} --ctx {a.ctx} --rounds {a.rounds}"
        f"{' --kv-unified' if a.kv_unified else ''}`  ",
        f"Machine: {os.cpu_count()} cores ({_cpu_name()}); {a.threads} threads, flash attention on, "
        f"{a.tokens} tokens per stream (ignore_eos), temperature 0.8, a seed per stream, {a.ctx} tokens of context "
        f"per stream. llama-server `-np N -c N×{a.ctx}`, streamed `/completion` over loopback; slmrun "
        f"`load(n_ctx={a.ctx}, n_parallel=N{', kv_unified=True' if a.kv_unified else ''})` (a KV stream per sequence "
        f"unless unified, as llama-server's) and N threads streaming `Model.complete`. {a.rounds} interleaved "
        f"rounds, each run after a quiet moment; mean ± sample std dev over rounds.",
        "",
        "| streams | llama-server tok/s | slmrun tok/s | slmrun / llama-server | slmrun / its 1 stream | "
        "TTFT p50 / p95 llama-server | TTFT p50 / p95 slmrun | slmrun step cost per extra sequence | "
        "slmrun step: outside llama_decode / whole |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in streams:
        ls, sl = agg[("llama-server", n)], agg[("slmrun", n)]
        ratios = [s / l for s, l in zip(sl, ls)]
        ttft_l = [t for r in runs[("llama-server", n)] for t in r["ttft"]]
        ttft_s = [t for r in runs[("slmrun", n)] for t in r["ttft"]]
        scale = statistics.fmean(sl) / one if one else float("nan")
        # A step decodes one token of every stream: its time is n / aggregate rate.
        extra = (f"{(n / scale - 1) / (n - 1) * 100:+.0f}% of a one-stream step" if n > 1 and one else "-")
        lines.append(f"| {n} | {fmt(ls)} | {fmt(sl)} | **{fmt(ratios, 2)}** | "
                     f"{scale:.2f}× | {percentile(ttft_l, .5) * 1000:.0f} / {percentile(ttft_l, .95) * 1000:.0f} ms | "
                     f"{percentile(ttft_s, .5) * 1000:.0f} / {percentile(ttft_s, .95) * 1000:.0f} ms | {extra} | "
                     f"{fmt([r['outside_ms'] for r in runs[('slmrun', n)]], 2)} / "
                     f"{statistics.fmean(r['step_ms'] for r in runs[('slmrun', n)]):.1f} ms |")
    noise = max(r["noise"] for v in runs.values() for r in v)
    lines += ["", f"Most CPU other processes used during a counted run: {noise:.2f} cores.", ""]
    lines += analysis_block(a.out)
    a.out.write_text("\n".join(lines))
    print("\n".join(lines))


def _cpu_name() -> str:
    try:
        from slmrun.hardware import detect
        return detect().cpu_model
    except Exception:
        return "unknown CPU"


if __name__ == "__main__":
    main()
