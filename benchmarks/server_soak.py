#!/usr/bin/env python3
"""Does a long-running `slmrun serve` keep its memory flat?

1. `slmrun serve --keep-alive 0`: N requests through Ollama's API, each loading the
   model and unloading it after; RSS (the server's /metrics) after every unload.
2. One connection, a 1,000-turn chat through /v1/chat/completions, the client resending
   the whole history each turn (as chat clients do); the server trims it to the context.
   RSS and the prompt's size every 50 turns.
3. The library alone, each variant in a fresh process: cycles of load / generate / close
   of the default model, with Model.close()'s malloc_trim(0) and without it (patched out).

Writes the figures between the "soak" markers of benchmarks/SERVER.md, after each part.

    .venv/bin/python benchmarks/server_soak.py [--cycles 200] [--turns 1000] [--library-cycles 40]
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "SERVER.md"
MARK_BEGIN, MARK_END = "<!-- soak:begin -->", "<!-- soak:end -->"
MB = 1 << 20
sys.path.insert(0, str(HERE))
from llama_tools import write_marked  # noqa: E402

LIBRARY_CYCLES = r"""
import json, sys
import slmrun, slmrun.runtime.heap as M
from slmrun.hardware import process_rss
ref, n, trim = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "trim"
if not trim:
    M.return_freed_heap = lambda: None
rss = []
for i in range(n):
    with slmrun.load(ref, n_ctx=512, n_parallel=1) as m:
        m.complete("Hello", max_tokens=4, temperature=0).wait()
    rss.append(process_rss())
print(json.dumps(rss))
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def library(ref: str, cycles: int, trim: bool) -> list[int]:
    out = subprocess.run([sys.executable, "-c", LIBRARY_CYCLES, ref, str(cycles), "trim" if trim else "no"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


class Serve:
    def __init__(self, *args: str):
        exe = Path(sys.executable).with_name("slmrun")
        self.proc = subprocess.Popen([str(exe), "serve", "--port", "0", *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        for line in self.proc.stderr:
            m = re.search(r"slmrun serve on http://([\d.]+):(\d+)", line)
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                break
        else:
            raise RuntimeError("slmrun serve did not start")
        # Keep reading its log (one line per request): a full pipe would block the server.
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
        while self.call("GET", "/health")[0] != 200:
            time.sleep(0.2)

    def call(self, method: str, path: str, body=None) -> tuple[int, dict]:
        self.conn.request(method, path, json.dumps(body) if body is not None else None,
                          {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        data = r.read()
        return r.status, (json.loads(data) if data and r.getheader("content-type", "").startswith("application/json")
                          else data.decode())

    def rss(self) -> int:
        text = self.call("GET", "/metrics")[1]
        return int(float(next(ln.split()[1] for ln in text.splitlines()
                              if ln.startswith("process_resident_memory_bytes"))))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def server_cycles(ref: str, cycles: int) -> list[int]:
    s = Serve("--keep-alive", "0", "--ctx", "512", "--parallel", "1")
    try:
        rss = []
        for i in range(cycles):
            status, body = s.call("POST", "/api/generate", {"model": ref, "prompt": "Hello", "stream": False,
                                                            "options": {"num_predict": 4, "temperature": 0}})
            assert status == 200, body
            # Measured once the model is freed (it leaves /api/ps first, then closes).
            while f"slmrun_model_unloads_total {i + 1}\n" not in s.call("GET", "/metrics")[1]:
                time.sleep(0.01)
            rss.append(s.rss())
            if (i + 1) % 50 == 0:
                log(f"  {i + 1} cycles, RSS {rss[-1] / MB:.1f} MiB")
        return rss
    finally:
        s.close()


def long_chat(ref: str, turns: int) -> list[tuple[int, int, int, int]]:
    """(turn, RSS, prompt tokens, messages sent) every 50 turns."""
    s = Serve("-m", ref, "--ctx", "1024", "--parallel", "1")
    try:
        messages = [{"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."}]
        rows = []
        for turn in range(1, turns + 1):
            messages.append({"role": "user", "content": f"Question {turn}: name a colour."})
            status, body = s.call("POST", "/v1/chat/completions", {"model": ref, "messages": messages,
                                                                   "max_tokens": 12, "temperature": 0.7,
                                                                   "seed": turn})
            assert status == 200, body
            messages.append(body["choices"][0]["message"])
            if turn % 50 == 0 or turn == 1:
                rows.append((turn, s.rss(), body["usage"]["prompt_tokens"], len(messages)))
                log(f"  turn {turn}: RSS {rows[-1][1] / MB:.1f} MiB, prompt {rows[-1][2]} tokens")
        return rows
    finally:
        s.close()


def growth(rss: list[int], skip: int) -> float:
    """MB per cycle after the first ``skip`` (warm-up: allocator arenas, page cache)."""
    tail = rss[skip:]
    return (tail[-1] - tail[0]) / MB / max(1, len(tail) - 1)


def write(a, lib_trim, lib_plain, cycles, chat) -> None:
    """The section as far as measured (each phase rewrites it when it ends)."""
    skip = min(10, max(0, len(cycles or lib_trim or [0, 0]) - 2))
    lines = [MARK_BEGIN, "", f"Measured {time.strftime('%Y-%m-%d %H:%M')} by `benchmarks/server_soak.py --cycles "
             f"{a.cycles} --turns {a.turns}`, model {a.model}. RSS in MiB; growth per cycle after the first {skip}.",
             "", "| what | cycles | RSS after 1 | after 10 | at the end | growth per cycle |", "|---|---|---|---|---|---|"]
    for label, rss in (("library: load / generate / close, with malloc_trim(0) in close()", lib_trim),
                       ("library: the same, malloc_trim patched out", lib_plain),
                       ("`slmrun serve --keep-alive 0`: one request = one load and unload", cycles)):
        if not rss:
            lines.append(f"| {label} | not measured yet | | | | |")
            continue
        lines.append(f"| {label} | {len(rss)} | {rss[0] / MB:.1f} | {rss[min(9, len(rss) - 1)] / MB:.1f} | "
                     f"{rss[-1] / MB:.1f} | {growth(rss, skip):+.3f} MB |")
    lines += ["", f"A {a.turns}-turn chat on one connection (the client resends the whole history; "
              "`--ctx 1024`, max_tokens 12):", "",
              "| turn | messages sent | prompt tokens after trimming | server RSS (MiB) |", "|---|---|---|---|"]
    if not chat:
        lines.append("| not measured yet | | | |")
    for turn, rss, prompt, sent in chat:
        lines.append(f"| {turn} | {sent} | {prompt} | {rss / MB:.1f} |")
    write_marked(OUT, MARK_BEGIN, MARK_END, "\n".join(lines + ["", MARK_END]), title="# slmrun serve")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=200)
    p.add_argument("--library-cycles", type=int, default=40, help="0: skip the library comparison")
    p.add_argument("--turns", type=int, default=1000)
    p.add_argument("--model", default="smollm2-135m:q4_1")
    a = p.parse_args(argv)
    lib_trim = lib_plain = cycles = chat = []
    log(f"server, {a.cycles} load/unload cycles")
    cycles = server_cycles(a.model, a.cycles)
    write(a, lib_trim, lib_plain, cycles, chat)
    log(f"server, a {a.turns}-turn chat")
    chat = long_chat(a.model, a.turns)
    write(a, lib_trim, lib_plain, cycles, chat)
    if a.library_cycles:
        log(f"library, {a.library_cycles} cycles with malloc_trim")
        lib_trim = library(a.model, a.library_cycles, True)
        log(f"library, {a.library_cycles} cycles without")
        lib_plain = library(a.model, a.library_cycles, False)
        write(a, lib_trim, lib_plain, cycles, chat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
