#!/usr/bin/env python3
"""`slmrun serve` against llama.cpp's llama-server under the same load, on this machine.

1. Builds llama-server from the llama.cpp source vendored in the installed
   llama-cpp-python's sdist (benchmarks/llama_tools.py: same version and switches as the
   Makefile's llama-cpp-python), under benchmarks/_build/ (gitignored).
2. Runs, interleaved in rounds, each server in its own process on 127.0.0.1 with the
   same model (the default SmolLM2-135M), threads, slots and per-slot context:
   C clients x R requests to /v1/completions (greedy, max_tokens 8), each prompt a few
   lines repeating its own random code word, so every answer can be checked to carry
   its own code and no other's.
3. Writes the p50/p95 latency and throughput of each round, their medians and the
   slmrun / llama-server ratios between the "load" markers of benchmarks/SERVER.md.

    .venv/bin/python benchmarks/server_load.py [--clients 8] [--requests 25] [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import string
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from llama_tools import (build_tools, free_port, installed_build, loadavg, log, wait_http_ready,  # noqa: E402
                         write_marked)

OUT = HERE / "SERVER.md"
MARK_BEGIN, MARK_END = "<!-- load:begin -->", "<!-- load:end -->"
CODE_LINES = 8


def start_slmrun(model_ref: str, a) -> tuple[subprocess.Popen, int]:
    exe = Path(sys.executable).with_name("slmrun")
    port = free_port()
    cmd = [str(exe), "serve", "--port", str(port), "-m", model_ref, "--ctx", str(a.ctx), "--parallel", str(a.parallel),
           "--threads", str(a.threads), "--max-queue", str(a.clients * 2)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http_ready(port, proc, timeout=180, what="the server")
    return proc, port


def start_llama_server(exe: Path, model: Path, a) -> tuple[subprocess.Popen, int]:
    port = free_port()
    # -c is the whole KV cache, shared by the slots: parallel x the per-slot context, as slmrun's.
    cmd = [str(exe), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-t", str(a.threads),
           "-tb", str(a.threads), "-c", str(a.ctx * a.parallel), "-np", str(a.parallel), "-fa", "on",
           "-b", "512", "-ub", "512", "-kvu", "--no-webui"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http_ready(port, proc, timeout=180, what="the server")
    return proc, port


def load(port: int, clients: int, requests: int, seed: int) -> dict:
    """C threads, each one keep-alive connection, R greedy completions each."""
    results, errors = [], []
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        barrier.wait()
        for _ in range(requests):
            code = "".join(rng.choice(string.ascii_uppercase) for _ in range(6))
            prompt = "".join(f"Code: {code}\n" for _ in range(CODE_LINES)) + "Code:"
            body = json.dumps({"model": "smollm2-135m", "prompt": prompt, "max_tokens": 8, "temperature": 0})
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                data = json.loads(r.read())
                if r.status != 200:
                    errors.append(f"{r.status}: {data}")
                    continue
                results.append((code, data["choices"][0]["text"], time.perf_counter() - t0,
                                data["usage"]["completion_tokens"]))
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(r[2] for r in results)
    codes = {r[0] for r in results}
    return {"n": len(results), "errors": errors, "wall_s": wall,
            "p50_s": statistics.median(lat) if lat else float("nan"),
            "p95_s": lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))] if lat else float("nan"),
            "req_per_s": len(results) / wall, "tok_per_s": sum(r[3] for r in results) / wall,
            "own_code": sum(c in t for c, t, *_ in results),
            "foreign_code": sum(1 for c, t, *_ in results for o in codes if o != c and o in t)}


def write(rows: list[dict], a, meta: dict) -> None:
    def med(server, key):
        return statistics.median(r[key] for r in rows if r["server"] == server)

    lines = [MARK_BEGIN, "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M')} by `benchmarks/server_load.py --clients {a.clients} "
             f"--requests {a.requests} --rounds {a.rounds}`: {a.clients} clients x {a.requests} requests to "
             f"`/v1/completions` (greedy, max_tokens 8, a prompt of {CODE_LINES} lines repeating the request's own "
             f"code word), model {meta['model']}, {a.threads} threads, {a.parallel} slots of {a.ctx} tokens, "
             f"flash attention on, both servers on 127.0.0.1; llama-server built from llama-cpp-python "
             f"{meta['version']}'s vendored llama.cpp (commit {meta['commit']}). Rounds interleaved; load average "
             "before each run in the last column.", "",
             "| round | server | requests ok | errors | own code | other's code | p50 latency | p95 latency | "
             "requests/s | tokens/s | load |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['round']} | {r['server']} | {r['n']} | {len(r['errors'])} | {r['own_code']} | "
                     f"{r['foreign_code']} | {r['p50_s'] * 1000:.0f} ms | {r['p95_s'] * 1000:.0f} ms | "
                     f"{r['req_per_s']:.2f} | {r['tok_per_s']:.1f} | {r['load']} |")
    lines += ["", "| median over rounds | slmrun serve | llama-server | slmrun / llama-server |", "|---|---|---|---|"]
    for key, label, unit, scale in (("p50_s", "p50 latency", "ms", 1000), ("p95_s", "p95 latency", "ms", 1000),
                                    ("req_per_s", "requests/s", "", 1), ("tok_per_s", "generated tokens/s", "", 1)):
        s, ls = med("slmrun", key), med("llama-server", key)
        lines.append(f"| {label} | {s * scale:.{0 if unit else 2}f} {unit} | {ls * scale:.{0 if unit else 2}f} {unit} | "
                     f"{s / ls:.2f} |")
    write_marked(OUT, MARK_BEGIN, MARK_END, "\n".join(lines + ["", MARK_END]), title="# slmrun serve")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=25)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    p.add_argument("--llama-server", type=Path, help="use this llama-server (built from the same source) "
                                                      "instead of building one under benchmarks/_build/")
    p.add_argument("--max-load", type=float, default=1.5, help="wait (up to 10 min) for a load average below this")
    a = p.parse_args(argv)
    from slmrun import api

    resolved = api.resolve("smollm2-135m")
    build = installed_build()
    exe = a.llama_server or build_tools("llama-server", jobs=a.jobs)["llama-server"]
    rows = []
    for rnd in range(1, a.rounds + 1):
        order = [("slmrun", None), ("llama-server", exe)]
        if rnd % 2 == 0:
            order.reverse()
        for name, server_exe in order:
            deadline = time.monotonic() + 600
            while loadavg() > a.max_load and time.monotonic() < deadline:
                time.sleep(10)
            if name == "slmrun":
                proc, port = start_slmrun(f"{resolved.name}:{resolved.quant.lower()}", a)
            else:
                proc, port = start_llama_server(server_exe, resolved.path, a)
            before = loadavg()
            try:
                load(port, 2, 2, seed=999)  # warm-up: first decodes, page cache
                r = load(port, a.clients, a.requests, seed=rnd)
            finally:
                proc.terminate()
                proc.wait(60)
            r.update(server=name, round=rnd, load=before)
            log(f"round {rnd} {name}: p50 {r['p50_s'] * 1000:.0f} ms, p95 {r['p95_s'] * 1000:.0f} ms, "
                f"{r['req_per_s']:.2f} req/s, errors {len(r['errors'])}, own code {r['own_code']}/{r['n']}, "
                f"load {before}")
            rows.append(r)
    write(rows, a, {"model": f"{resolved.name}:{resolved.quant.lower()}", "version": build["version"],
                    "commit": build["commit"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
