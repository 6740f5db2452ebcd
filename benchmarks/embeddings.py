#!/usr/bin/env python3
"""Embeddings: slmrun's library and its server against llama.cpp's `llama-server --embedding`.

Same GGUF, threads, batch (512) and pooling, on four workloads: a batch of 1, 8 and 64 short
texts (~10-20 tokens) and of 8 long ones (~250 tokens). Contenders, each in its own process:

- llama-server (built from the llama.cpp vendored in the installed llama-cpp-python;
  llama_tools.py) with ``--embedding --pooling mean -b 512 -ub 512 -np 64``, driven over HTTP
  (``POST /v1/embeddings``, floats);
- ``slmrun serve`` on the same model, the same request;
- slmrun's library: ``Model.embed(texts)`` timed inside a worker process (no HTTP).

Rounds interleave the contenders (their order rotates), each waits for a quiet machine;
every workload is timed ``--reps`` times per round (more for short requests: at least ~0.5 s of
them) and the median kept. Reports texts/s and
tokens/s (mean over rounds, with the spread), the ratio to llama-server, each process's peak
RSS (VmHWM), and the cosine between slmrun's and llama-server's vectors; writes
benchmarks/EMBEDDINGS.md.

    .venv/bin/python benchmarks/embeddings.py [-m MODEL.gguf | minilm-l6] [-t 2] [--rounds 5] [--reps 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_tools import (HERE, analysis_block, build_tools, free_port, loadavg, log,  # noqa: E402
                         wait_http_ready, wait_quiet, write_marked)

OUT = HERE / "EMBEDDINGS.md"
SUBJECTS = ["The bike shop", "Our repair desk", "The new tram line", "A small bakery", "The city library",
            "The weather service", "My landlord", "The football club", "A local clinic", "The night train"]
VERBS = ["opens at eight on weekdays", "will close early on Friday", "is looking for volunteers",
         "raised its prices last month", "has a new phone number", "offers free advice on Tuesdays",
         "was flooded after the storm", "now accepts card payments"]


def short_texts(n: int) -> list[str]:
    return [f"{SUBJECTS[i % len(SUBJECTS)]} {VERBS[(i * 3) % len(VERBS)]}, as of week {i + 1}." for i in range(n)]


def long_texts(n: int) -> list[str]:
    """~250 tokens each: a dozen sentences of the short kind."""
    return [" ".join(short_texts(40)[(7 * i) % 20:(7 * i) % 20 + 12]) + f" (Notice {i + 1}.)" for i in range(n)]


WORKLOADS = {"1 short": short_texts(1), "8 short": short_texts(8), "64 short": short_texts(64),
             "8 long": long_texts(8)}


# --- contenders --------------------------------------------------------------------------------------

class HttpEmbedder:
    """A server answering POST /v1/embeddings on 127.0.0.1:port, started from ``cmd``."""

    def __init__(self, name: str, cmd: list[str], port: int, env: dict | None = None, model: str = "x"):
        self.name, self.port, self.model = name, port, model
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        wait_http_ready(port, self.proc, timeout=180, what=name)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def embed(self, texts: list[str]) -> tuple[float, int, list]:
        body = json.dumps({"model": self.model, "input": texts, "encoding_format": "float"})
        t0 = time.perf_counter()
        self.conn.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        data = json.loads(r.read())
        dt = time.perf_counter() - t0
        if r.status != 200:
            raise RuntimeError(f"{self.name}: {r.status} {data}")
        return dt, data["usage"]["prompt_tokens"], [d["embedding"] for d in data["data"]]

    def peak_rss(self) -> int:
        return _vm_hwm(self.proc.pid)

    def close(self) -> None:
        self.conn.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


WORKER = r"""
import json, sys, time
import slmrun
m = slmrun.load(sys.argv[1], n_threads=int(sys.argv[2]))
m.embed(["warm up"])
print("ready", flush=True)
for line in sys.stdin:
    texts = json.loads(line)
    t0 = time.perf_counter()
    e = m.embed(texts)
    dt = time.perf_counter() - t0
    print(json.dumps([dt, sum(e.n_tokens), e.tolist()]), flush=True)
"""


class LibraryEmbedder:
    name = "slmrun library"

    def __init__(self, model: str, threads: int, env: dict):
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, model, str(threads)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the library worker did not start")

    def embed(self, texts: list[str]) -> tuple[float, int, list]:
        self.proc.stdin.write(json.dumps(texts) + "\n")
        self.proc.stdin.flush()
        dt, n, vectors = json.loads(self.proc.stdout.readline())
        return dt, n, vectors

    def peak_rss(self) -> int:
        return _vm_hwm(self.proc.pid)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def start(name: str, args, model_path: Path, home: Path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SLMRUN_")}, "SLMRUN_HOME": str(home)}
    if name == "llama-server":
        port = free_port()
        exe = build_tools("llama-server")["llama-server"]
        return HttpEmbedder(name, [str(exe), "-m", str(model_path), "-t", str(args.threads), "-tb", str(args.threads),
                                   "--embedding", "--pooling", "mean", "-b", "512", "-ub", "512", "-np", "64",
                                   "-c", str(64 * 512), "--host", "127.0.0.1", "--port", str(port), "--no-webui"],
                            port)
    if name == "slmrun serve":
        port = free_port()
        exe = Path(sys.executable).with_name("slmrun")
        return HttpEmbedder(name, [str(exe), "serve", "--port", str(port), "-m", "bench-embed", "--threads",
                                   str(args.threads)], port, env=env, model="bench-embed")
    return LibraryEmbedder(str(model_path), args.threads, env)


# --- the run ---------------------------------------------------------------------------------------------

def measure(embedder, reps: int) -> dict:
    out = {}
    embedder.embed(["warm up"])
    for wl, texts in WORKLOADS.items():
        times, vectors, tokens = [], None, 0
        # An untimed pass of the workload first: a batch shape's first decode allocates (in every
        # contender alike), and with 3 timed passes of a 4-10 ms request one cold pass moved the median.
        # Short requests are timed more often (at least ~0.5 s of them): a 4-ms request's median
        # of 5 swung by a third between rounds.
        first = embedder.embed(texts)[0]
        for _ in range(max(reps, int(0.5 / max(first, 1e-4)))):
            dt, tokens, vectors = embedder.embed(texts)
            times.append(dt)
        med = statistics.median(times)
        out[wl] = {"texts_s": len(texts) / med, "tokens_s": tokens / med, "tokens": tokens, "vectors": vectors}
    return out


def cosine(a, b) -> float:
    import numpy as np
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.min(np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default="minilm-l6", help="a .gguf path or a name in the store")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    import slmrun

    model_path = Path(args.model) if args.model.endswith(".gguf") else slmrun.resolve(args.model).path
    home = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    os.environ["SLMRUN_HOME"] = str(home)
    slmrun.import_model(model_path, name="bench-embed", link=True)
    contenders = ["llama-server", "slmrun serve", "slmrun library"]
    results = {c: [] for c in contenders}
    rss = {c: [] for c in contenders}
    vectors = {}
    for rnd in range(args.rounds):
        order = contenders[rnd % 3:] + contenders[:rnd % 3]
        for name in order:
            busy = wait_quiet(120)
            log(f"round {rnd + 1}/{args.rounds}: {name} (others used {busy:.2f} cores)")
            e = start(name, args, model_path, home)
            try:
                r = measure(e, args.reps)
                rss[name].append(e.peak_rss())
            finally:
                e.close()
            results[name].append(r)
            vectors[name] = {wl: v["vectors"] for wl, v in r.items()}
    write_report(args, model_path, results, rss, vectors)


def write_report(args, model_path: Path, results: dict, rss: dict, vectors: dict) -> None:
    def stat(name, wl, key):
        xs = [r[wl][key] for r in results[name]]
        return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)

    lines = ["<!-- results:begin -->",
             f"Measured {time.strftime('%Y-%m-%d %H:%M')} with `.venv/bin/python benchmarks/embeddings.py -m "
             f"{args.model} -t {args.threads} --rounds {args.rounds} --reps {args.reps}` on {model_path.name} "
             f"({model_path.stat().st_size / 1e6:.1f} MB), {os.cpu_count()} CPUs, load average after: {loadavg()}.",
             "",
             "| workload | tokens | llama-server texts/s | slmrun serve texts/s | ratio | slmrun library texts/s | ratio |",
             "|---|---|---|---|---|---|---|"]
    for wl, texts in WORKLOADS.items():
        ls, ls_sd = stat("llama-server", wl, "texts_s")
        ss, ss_sd = stat("slmrun serve", wl, "texts_s")
        lib, lib_sd = stat("slmrun library", wl, "texts_s")
        tokens = results["slmrun library"][0][wl]["tokens"]
        lines.append(f"| {wl} | {tokens} | {ls:.1f} ± {ls_sd:.1f} | {ss:.1f} ± {ss_sd:.1f} | {ss / ls:.2f}x "
                     f"| {lib:.1f} ± {lib_sd:.1f} | {lib / ls:.2f}x |")
    lines += ["", "| workload | llama-server tokens/s | slmrun serve tokens/s | slmrun library tokens/s |",
              "|---|---|---|---|"]
    for wl in WORKLOADS:
        lines.append(f"| {wl} | {stat('llama-server', wl, 'tokens_s')[0]:.0f} | "
                     f"{stat('slmrun serve', wl, 'tokens_s')[0]:.0f} | {stat('slmrun library', wl, 'tokens_s')[0]:.0f} |")
    lines += ["", "Peak RSS (VmHWM, max over rounds): " + ", ".join(
        f"{name} {max(v) / 2**20:.0f} MiB" for name, v in rss.items()) + ".",
              "Agreement with llama-server's vectors (lowest cosine over every text of every workload): " + ", ".join(
        f"{name} {min(cosine(vectors[name][wl], vectors['llama-server'][wl]) for wl in WORKLOADS):.5f}"
        for name in ("slmrun serve", "slmrun library")) + ".",
              "<!-- results:end -->", ""]
    block = "\n".join(lines) + "\n" + "\n".join(analysis_block(OUT))
    write_marked(OUT, "<!-- results:begin -->", "<!-- analysis:end -->", block,
                 title="# Embeddings: slmrun against llama-server --embedding\n\n" + __doc__.split("\n\n", 1)[1]
                 .split("    .venv")[0].strip() + "\n")


if __name__ == "__main__":
    main()
