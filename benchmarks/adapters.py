#!/usr/bin/env python3
"""LoRA adapters: slmrun against llama.cpp's llama-server on the same model and adapter files.

Two random LoRA adapters for the model (rank 16, alpha 32, on attn_q/k/v/output and
ffn_gate/up/down, written with tests/tinymodels.write_tiny_lora) and, interleaved over rounds:

- **single stream** with 0, 1 and 2 adapters loaded and applied: generated tokens/s of one
  greedy stream (llama-server ``--lora A [--lora B]``; slmrun ``load(lora=[...])``);
- **4 concurrent streams**, both adapters loaded, every request naming its adapter:
  all on A, against requests alternating A, B, A, B (llama-server's per-request
  ``"lora": [{"id", "scale"}]``; slmrun's ``adapters=``): the aggregate tokens/s;
- **contamination** (llama.cpp#26207): one slot, prompt P under A, then the same P under B
  with the prompt cache on; is the second answer what B gives on a fresh server, and how
  many prompt tokens did it evaluate?

    .venv/bin/python benchmarks/adapters.py [-m MODEL.gguf] [-t 2] [-n 128] [--rounds 3] [--spec off]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_tools import mean_sd as fmt  # noqa: E402
from llama_tools import (BUILD, HERE, analysis_block, build_tools, cpu_snapshot, free_port, log,  # noqa: E402
                         others_cores, wait_http_ready, wait_quiet)

OUT = HERE / "ADAPTERS.md"
PROMPTS = ["Once upon a time there was a lighthouse keeper. Write the whole story:\n",
           "Once upon a time there was a lost robot. Write the whole story:\n",
           "Once upon a time there was an old violin. Write the whole story:\n",
           "Once upon a time there was a desert caravan. Write the whole story:\n"]
CONTAMINATION_PROMPT = ("You are a careful assistant. Answer every question in one short paragraph, "
                        "and never repeat the question. Question: what makes a good cup of tea?\n")


def adapters(model: Path) -> list[Path]:
    import importlib.util

    # The tests' LoRA writer, a file of this repository (tests/tinymodels.py), not a package.
    spec = importlib.util.spec_from_file_location("tinymodels", HERE.parent / "tests" / "tinymodels.py")
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    write_tiny_lora = tiny.write_tiny_lora
    out = []
    for i, seed in enumerate((1, 2)):
        path = BUILD / f"adapter-{model.stem}-{'ab'[i]}.gguf"
        if not path.exists():
            write_tiny_lora(path, model, rank=16, alpha=32.0, seed=seed, magnitude=0.05,
                            targets=("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"))
        out.append(path)
    return out


# ------------------------------------------------------------------ llama-server

class LlamaServer:
    def __init__(self, exe: Path, model: Path, threads: int, loras, *, n_parallel: int, ctx: int):
        self.port = free_port()
        cmd = [str(exe), "-m", str(model), "-t", str(threads), "-tb", str(threads), "-np", str(n_parallel),
               "-c", str(ctx * n_parallel), "-fa", "on", "--host", "127.0.0.1", "--port", str(self.port), "--no-webui"]
        for path in loras:
            cmd += ["--lora", str(path)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http_ready(self.port, self.proc, timeout=120, what="llama-server")

    def complete(self, prompt: str, n: int, lora=None, cache: bool = False) -> dict:
        body = {"prompt": prompt, "n_predict": n, "temperature": 0, "ignore_eos": True, "cache_prompt": cache}
        if lora is not None:
            body["lora"] = lora
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        c.request("POST", "/completion", json.dumps(body), {"Content-Type": "application/json"})
        data = json.loads(c.getresponse().read())
        return {"text": data["content"], "n": data["timings"]["predicted_n"],
                "prompt_n": data["timings"]["prompt_n"], "gen_tps": data["timings"]["predicted_per_second"]}

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def server_single(exe, model, threads, loras, n, ctx) -> float:
    s = LlamaServer(exe, model, threads, loras, n_parallel=1, ctx=ctx)
    try:
        s.complete(PROMPTS[0], 16)
        return s.complete(PROMPTS[0], n)["gen_tps"]
    finally:
        s.close()


def server_streams(exe, model, threads, loras, n, ctx, sets) -> float:
    s = LlamaServer(exe, model, threads, loras, n_parallel=len(sets), ctx=ctx)
    try:
        s.complete(PROMPTS[0], 16, lora=sets[0])
        return _concurrently(lambda i: s.complete(PROMPTS[i], n, lora=sets[i])["n"], len(sets))
    finally:
        s.close()


def server_contamination(exe, model, threads, loras, n, ctx) -> dict:
    a, b = [{"id": 0, "scale": 1.0}], [{"id": 1, "scale": 1.0}]
    s = LlamaServer(exe, model, threads, loras, n_parallel=1, ctx=ctx)
    try:
        s.complete(CONTAMINATION_PROMPT, n, lora=a, cache=True)
        second = s.complete(CONTAMINATION_PROMPT, n, lora=b, cache=True)
    finally:
        s.close()
    s = LlamaServer(exe, model, threads, loras, n_parallel=1, ctx=ctx)
    try:
        alone = s.complete(CONTAMINATION_PROMPT, n, lora=b, cache=True)
    finally:
        s.close()
    return {"same": second["text"] == alone["text"], "prompt_n": second["prompt_n"], "alone_prompt_n": alone["prompt_n"]}


def _concurrently(fn, k: int) -> float:
    counts = [0] * k
    start = threading.Barrier(k + 1)

    def client(i):
        start.wait()
        counts[i] = fn(i)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(k)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


# ------------------------------------------------------------------ slmrun (in its own process)

SLMRUN = r"""
import json, sys, threading, time
import slmrun
a = json.loads(sys.argv[1])
def load(lora, n_parallel):
    return slmrun.load(a["model"], n_ctx=a["ctx"], n_parallel=n_parallel, n_threads=a["threads"],
                       n_threads_batch=a["threads"], flash_attn=True, lora=[(p, 1.0) for p in lora],
                       speculative=a["spec"])
def concurrently(fn, k):
    counts = [0] * k
    start = threading.Barrier(k + 1)
    def client(i):
        start.wait()
        counts[i] = fn(i)
    ts = [threading.Thread(target=client, args=(i,)) for i in range(k)]
    [t.start() for t in ts]
    start.wait()
    t0 = time.perf_counter()
    [t.join() for t in ts]
    return sum(counts) / (time.perf_counter() - t0)
P = a["prompts"]
if a["what"] == "single":
    with load(a["loras"], 1) as m:
        m.complete(P[0], max_tokens=16, temperature=0).wait()
        out = m.complete(P[0], max_tokens=a["n"], temperature=0, ignore_eos=True).stats.gen_tps
elif a["what"] == "streams":
    with load(a["loras"], len(a["sets"])) as m:
        m.complete(P[0], max_tokens=16, temperature=0, adapters=a["sets"][0]).wait()
        out = concurrently(lambda i: len(m.complete(P[i], max_tokens=a["n"], temperature=0, ignore_eos=True,
                                                    adapters=a["sets"][i]).tokens), len(a["sets"]))
else:
    A, B = [{"id": 0, "scale": 1.0}], [{"id": 1, "scale": 1.0}]
    with load(a["loras"], 1) as m:
        m.complete(a["cprompt"], max_tokens=a["n"], temperature=0, ignore_eos=True, adapters=A).wait()
        second = m.complete(a["cprompt"], max_tokens=a["n"], temperature=0, ignore_eos=True, adapters=B)
        second.wait()
    with load(a["loras"], 1) as m:
        alone = m.complete(a["cprompt"], max_tokens=a["n"], temperature=0, ignore_eos=True, adapters=B)
        alone.wait()
    out = {"same": second.text == alone.text, "prompt_n": second.stats.prompt_eval_tokens,
           "alone_prompt_n": alone.stats.prompt_eval_tokens}
print(json.dumps(out))
"""


def slmrun(what: str, model, threads, loras, n, ctx, sets=None, spec: str = "off"):
    args = json.dumps({"what": what, "model": str(model), "threads": threads, "loras": [str(p) for p in loras],
                       "n": n, "ctx": ctx, "sets": sets, "prompts": PROMPTS, "cprompt": CONTAMINATION_PROMPT,
                       "spec": spec})
    out = subprocess.run([sys.executable, "-c", SLMRUN, args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ the run

def measure(fn, retries: int = 3):
    for attempt in range(retries):
        wait_quiet(60)
        before = cpu_snapshot()
        value = fn()
        noise = others_cores(before, cpu_snapshot())
        if noise <= 0.2 or attempt == retries - 1:
            return value, noise
        log(f"other processes used {noise:.2f} cores; measuring again")
    raise AssertionError("unreachable")




def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", type=Path, default=None, help="a .gguf (default: the default model's file)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-n", "--tokens", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=1024, help="context per stream")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--spec", default="off", help="slmrun's prompt-lookup drafts (off: like llama-server, "
                                                  "which drafts nothing unless told)")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    if a.model is None:
        from slmrun.api import resolve
        a.model = resolve("smollm2-135m").path
    exe = build_tools("llama-server")["llama-server"]
    loras = adapters(a.model)
    A, B = [{"id": 0, "scale": 1.0}], [{"id": 1, "scale": 1.0}]
    cases = {"single, 0 adapters": ("single", [], None), "single, 1 adapter": ("single", loras[:1], None),
             "single, 2 adapters": ("single", loras, None),
             "4 streams, all on A": ("streams", loras, [A, A, A, A]),
             "4 streams, alternating A/B": ("streams", loras, [A, B, A, B])}
    results: dict[tuple[str, str], list[float]] = {}
    noise = 0.0
    for rnd in range(a.rounds):
        for name, (what, files, sets) in cases.items():
            for tool in ("llama-server", "slmrun"):
                if tool == "llama-server":
                    fn = (lambda: server_single(exe, a.model, a.threads, files, a.tokens, a.ctx)) if what == "single" \
                        else (lambda: server_streams(exe, a.model, a.threads, files, a.tokens, a.ctx, sets))
                else:
                    fn = lambda: slmrun(what, a.model, a.threads, files, a.tokens, a.ctx, sets, a.spec)  # noqa: E731
                value, n = measure(fn)
                noise = max(noise, n)
                log(f"round {rnd + 1}/{a.rounds}: {name}, {tool}: {value:.1f} tok/s")
                results.setdefault((name, tool), []).append(value)
    contamination = {"llama-server": server_contamination(exe, a.model, a.threads, loras, 32, a.ctx),
                     "slmrun": slmrun("contamination", a.model, a.threads, loras, 32, a.ctx, spec=a.spec)}
    write_report(a, cases, results, contamination, noise)


def write_report(a, cases, results, contamination, noise) -> None:
    lines = [
        "# LoRA adapters: slmrun vs llama.cpp's llama-server",
        "",
        f"Command: `.venv/bin/python benchmarks/adapters.py -m {a.model.name} -t {a.threads} -n {a.tokens} "
        f"--ctx {a.ctx} --rounds {a.rounds} --spec {a.spec}`  ",
        f"{a.threads} threads, flash attention on, greedy, {a.tokens} tokens per stream (ignore_eos). Two random "
        "LoRA adapters (rank 16, alpha 32, on attn_q/k/v/output and ffn_gate/up/down; "
        "tests/tinymodels.write_tiny_lora), the same files for both. llama-server `--lora A [--lora B]`, "
        f"`-np 1` or `-np 4`, per-request `\"lora\"`; slmrun `load(lora=..., speculative=\"{a.spec}\")`, `adapters=` "
        f"per request, each in its own process. {a.rounds} interleaved rounds, each run after a quiet moment; mean ± sample std dev.",
        "",
        "| case | llama-server tok/s | slmrun tok/s | slmrun / llama-server |",
        "|---|---:|---:|---:|",
    ]
    for name in cases:
        ls, sl = results[(name, "llama-server")], results[(name, "slmrun")]
        lines.append(f"| {name} | {fmt(ls)} | {fmt(sl)} | **{fmt([s / l for s, l in zip(sl, ls)], 2)}** |")
    lines += ["", "Single stream: generation rate (llama-server's `predicted_per_second`, slmrun's `Stats.gen_tps`). "
              "4 streams: all generated tokens / wall time from the start to the last reply.", "",
              "## Contamination (llama.cpp#26207)", "",
              "One slot; the prompt under adapter A, then the same prompt under B with the prompt cache on; "
              "then B alone on a fresh server.", "",
              "| | second request = B alone | prompt tokens it evaluated | B alone evaluated |", "|---|---|---:|---:|"]
    for tool, c in contamination.items():
        lines.append(f"| {tool} | {'yes' if c['same'] else '**no: contaminated**'} | {c['prompt_n']} | "
                     f"{c['alone_prompt_n']} |")
    lines += ["", f"Most CPU other processes used during a counted run: {noise:.2f} cores. Machine: "
              f"{os.cpu_count()} cores.", ""]
    lines += analysis_block(a.out)
    a.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
