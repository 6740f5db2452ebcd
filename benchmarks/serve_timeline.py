#!/usr/bin/env python3
"""Where a one-text embedding request's time goes inside `slmrun serve`: the server runs in
this process with timestamps at the request's arrival (the outermost middleware), the
engine's submit, the embedding step and its llama_decode, and the response's last byte; a
client in a child process sends one-text POST /v1/embeddings on a kept-alive connection.
Prints the median of each stage over the timed requests (for EMBEDDINGS.md's analysis).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/serve_timeline.py [-m minilm-l6] [-n 500]

Timestamps are taken by wrapping the functions in this process only (nothing is changed in
slmrun itself); each wrap costs ~1 µs.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_tools import free_port  # noqa: E402

CLIENT = r"""
import http.client, json, os, signal, sys, time
port, n, model, server = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
while True:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port); c.request("GET", "/health")
        r = c.getresponse(); r.read()
        if r.status == 200: break
    except OSError: pass
    time.sleep(0.2)
c = http.client.HTTPConnection("127.0.0.1", port)
body = json.dumps({"model": model, "input": "The quick brown fox jumps over the lazy dog.", "encoding_format": "float"})
def one():
    c.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"}); r = c.getresponse(); r.read()
    assert r.status == 200, r.status
for _ in range(100): one()
os.kill(server, signal.SIGUSR1)
ts = []
for _ in range(n):
    t0 = time.perf_counter(); one(); ts.append(time.perf_counter() - t0)
print(f"client: {sorted(ts)[n // 2] * 1000:.3f} ms a request (median of {n})", flush=True)
os.kill(server, signal.SIGUSR2)
"""

STAGES = [("in", "submit", "arrival -> submitted to the engine"), ("submit", "step0", "-> the engine's step starts"),
          ("step0", "dec0", "-> llama_decode starts"), ("dec0", "dec1", "llama_decode"),
          ("dec1", "step1", "-> the step ends (pooled rows read, future done)"),
          ("step1", "out", "-> the response's last byte is sent"), ("in", "out", "arrival -> last byte")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", default="minilm-l6")
    ap.add_argument("-n", "--requests", type=int, default=500)
    ap.add_argument("-t", "--threads", type=int, default=2)
    a = ap.parse_args()

    from slmrun.runtime.engine import Engine
    from slmrun.runtime.llama import LlamaHandle
    from slmrun.server import Settings, http, run

    marks: list[tuple[str, float]] = []
    now = time.perf_counter

    def wrap(owner, name, before, after=None):
        inner = getattr(owner, name)

        def timed(*args, **kw):
            marks.append((before, now()))
            try:
                return inner(*args, **kw)
            finally:
                if after:
                    marks.append((after, now()))
        setattr(owner, name, timed)

    outer = http.AccessLogMiddleware.__call__

    async def middleware(self, scope, receive, send):
        marks.append(("in", now()))

        async def watch(message):
            if message["type"] == "http.response.body" and not message.get("more_body"):
                marks.append(("out", now()))
            await send(message)
        return await outer(self, scope, receive, watch)

    http.AccessLogMiddleware.__call__ = middleware
    wrap(Engine, "submit_embed", "submit")
    wrap(Engine, "_embed_step", "step0", "step1")
    wrap(LlamaHandle, "decode", "dec0", "dec1")

    def report(*_):
        reqs, cur = [], None
        for name, t in list(marks):
            if name == "in":
                cur = {"in": t}
                reqs.append(cur)
            elif cur is not None:
                cur.setdefault(name, t)
        reqs = [r for r in reqs if all(k in r for s in STAGES for k in s[:2])]
        print(f"{len(reqs)} requests, median of each stage (ms):")
        for a_, b_, what in STAGES:
            print(f"  {what:<50} {statistics.median((r[b_] - r[a_]) * 1000 for r in reqs):7.3f}")
        gaps = [(reqs[i + 1]["in"] - reqs[i]["out"]) * 1000 for i in range(len(reqs) - 1)]
        print(f"  {'last byte -> next arrival (client, network)':<50} {statistics.median(gaps):7.3f}", flush=True)
        os.kill(os.getpid(), signal.SIGINT)

    signal.signal(signal.SIGUSR1, lambda *_: marks.clear())
    signal.signal(signal.SIGUSR2, report)
    port = free_port()
    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(port), str(a.requests), a.model, str(os.getpid())])
    logging.disable(logging.INFO)
    try:
        run(Settings(port=port, models=(a.model,), n_threads=a.threads))
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT that report() sent to end the run
        pass
    finally:
        client.wait(timeout=60)


if __name__ == "__main__":
    main()
