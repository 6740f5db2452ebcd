#!/usr/bin/env python3
"""Prompt-lookup speculative decoding: slmrun with and without drafts, against llama-server
with and without ``--spec-type ngram-simple``, on the same prompts.

Four workloads, each a chat prompt rendered by the model's template (the same token ids go
to both: llama-server's /completion takes a token list): extraction (a JSON schema, fields
copied from the text), answers from a given passage, code edits, and free chat. Each runs at
1 and 4 streams (4 different prompts of the workload at once), greedy, until the reply ends
(at most --tokens). slmrun: a process per run (no prompt cache between configurations),
``load(n_parallel=streams)`` and ``Model.chat(speculative=...)``; llama-server: ``-np streams``,
streamed /completion with ``cache_prompt: false``. Reported: aggregate generated tokens/s
(all streams' tokens / wall time from the first request to the last token), the acceptance
rate (accepted / drafted tokens), and whether slmrun's greedy text is the same with and
without drafts. Rounds interleave everything; each run waits for a quiet machine.

    .venv/bin/python benchmarks/speculative.py [--rounds 3] [--tokens 160]   (writes benchmarks/SPECULATIVE.md)
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
from llama_tools import (HERE, analysis_block, build_tools, cpu_snapshot, free_port, log, others_cores,  # noqa: E402
                         wait_http_ready, wait_quiet)

OUT = HERE / "SPECULATIVE.md"
PERSON = {"type": "object", "additionalProperties": False,
          "properties": {"name": {"type": "string"}, "company": {"type": "string"}, "city": {"type": "string"},
                         "email": {"type": "string"}, "phone": {"type": "string"}},
          "required": ["name", "company", "city", "email", "phone"]}
# Written for this benchmark (no outside text).
CONTACTS = [
    "Hello, this is Margaret Okonkwo from Lindqvist Marine Supplies in Gothenburg. Reach me at "
    "margaret.okonkwo@lindqvist-marine.se or on +46 31 555 0192 about the hull paint order.",
    "Best regards, Tomasz Wierzbicki, Head of Procurement, Baltic Timber Works, Gdansk. Email "
    "t.wierzbicki@baltictimber.pl, phone +48 58 301 44 17.",
    "Please forward the invoice to Aiko Tanabe (Sunrise Robotics, Osaka): aiko.tanabe@sunrise-robotics.jp, "
    "telephone +81 6 6345 2210.",
    "Signed, Rafael Domínguez Ortega, Compañía Textil Andaluza, Sevilla. Contact: rdominguez@textil-andaluza.es "
    "or +34 954 22 81 30.",
]
PASSAGES = [
    ("The Hallstatt salt mine, in the Austrian Salzkammergut, has been worked for about 7,000 years. Miners in the "
     "Bronze Age used wooden staircases, one of which, dated to 1344 BC, is the oldest known wooden staircase in "
     "Europe. The mine's prehistoric finds gave their name to the Hallstatt culture of the early Iron Age.",
     "How old is the wooden staircase found in the mine, and what is special about it? Answer with the passage's words."),
    ("Lake Baikal in Siberia holds about 23,000 cubic kilometres of fresh water, roughly a fifth of all the fresh "
     "surface water on Earth. It is the deepest lake in the world, reaching 1,642 metres, and it is home to the "
     "Baikal seal, one of the few freshwater seals.",
     "How much water does Lake Baikal hold, and how deep is it? Answer with the passage's words."),
    ("The Antikythera mechanism is an ancient Greek hand-powered orrery, found in 1901 in a shipwreck off the Greek "
     "island of Antikythera. It was used to predict astronomical positions and eclipses decades in advance, and "
     "it is considered the oldest known example of an analogue computer.",
     "Where was the Antikythera mechanism found, and what was it used for? Answer with the passage's words."),
    ("Bamboo is among the fastest-growing plants in the world: some species grow up to 91 centimetres in a single "
     "day. Bamboo stems are hollow between their nodes, and many species flower only once every several decades, "
     "all plants of a species flowering at the same time.",
     "How fast can bamboo grow, and how often does it flower? Answer with the passage's words."),
]
CODE = [
    ("def total_price(items, tax_rate):\n    subtotal = 0\n    for item in items:\n        subtotal += item.price * item.quantity\n"
     "    tax = subtotal * tax_rate\n    return subtotal + tax\n", "Rename the variable subtotal to net_total. Output the whole function."),
    ("def read_config(path):\n    with open(path) as f:\n        lines = f.readlines()\n    config = {}\n    for line in lines:\n"
     "        key, value = line.split('=')\n        config[key.strip()] = value.strip()\n    return config\n",
     "Rename the function to load_settings. Output the whole function."),
    ("def average(values):\n    if not values:\n        return 0\n    total = sum(values)\n    count = len(values)\n"
     "    return total / count\n", "Rename count to n. Output the whole function."),
    ("class Counter:\n    def __init__(self):\n        self.count = 0\n\n    def increment(self):\n        self.count += 1\n"
     "        return self.count\n", "Rename the class to Tally. Output the whole class."),
]
CHAT = ["Tell me a short story about a lighthouse keeper and a storm.", "Why is the sky blue? Explain simply.",
        "Give me three ideas for a rainy weekend.", "Describe your ideal breakfast in a few sentences."]


def workloads() -> dict[str, list[tuple[list[dict], dict | None]]]:
    """name -> [(messages, json schema or None)] (4 prompts each)."""
    return {
        "extraction": [([{"role": "system", "content": "Extract the contact as JSON. Copy every value exactly as "
                                                         "written in the text."},
                         {"role": "user", "content": t}], PERSON) for t in CONTACTS],
        "passage answers": [([{"role": "user", "content": f"{p}\n\n{q}"}], None) for p, q in PASSAGES],
        "code edits": [([{"role": "user", "content": f"{code}\n{task}"}], None) for code, task in CODE],
        "free chat": [([{"role": "user", "content": q}], None) for q in CHAT],
    }


# ------------------------------------------------------------------ slmrun

SLMRUN_RUN = r"""
import json, sys, threading, time
import slmrun
a = json.loads(sys.argv[1])
with slmrun.load(a["model"], n_parallel=a["n"], n_threads=a["threads"], n_threads_batch=a["threads"],
                 n_ctx=2048) as m:
    m.complete("Hello", max_tokens=4).wait()  # warm-up: page in the weights
    if any(p[1] for p in a["prompts"]):
        # and build the grammar tokenizer (~0.3 s once per process, as llama-server sets itself
        # up before it listens); each measured schema is still compiled inside its request
        m.chat([{"role": "user", "content": "Hi"}], json_schema={"type": "object"}, max_tokens=1).wait()
    m._engine.call(lambda h: m._engine.forget_cache())
    out = [None] * a["n"]
    start = threading.Barrier(a["n"] + 1)
    def client(i):
        messages, schema = a["prompts"][i]
        start.wait()
        t0 = time.perf_counter()
        # llama-server's sampling: greedy, no penalty (slmrun's chat and constrained defaults add a
        # repetition penalty, and DRY under a schema: other text, other work)
        r = m.chat(messages, json_schema=schema, temperature=0, max_tokens=a["tokens"], speculative=a["spec"],
                   repeat_penalty=1.0, dry_multiplier=0.0)
        r.wait()
        s = r.stats
        out[i] = [t0, time.perf_counter(), s.generated_tokens, s.draft_tokens, s.accepted_tokens, r.text]
    ts = [threading.Thread(target=client, args=(i,)) for i in range(a["n"])]
    [t.start() for t in ts]
    start.wait()
    [t.join() for t in ts]
    prompts = [m.chat_tokens(p[0]) for p in a["prompts"]]
print(json.dumps({"runs": out, "prompt_tokens": prompts}))
"""


def run_slmrun(model: Path, threads: int, prompts, spec: str, tokens: int) -> dict:
    args = json.dumps({"model": str(model), "threads": threads, "n": len(prompts), "prompts": prompts, "spec": spec,
                       "tokens": tokens})
    out = subprocess.run([sys.executable, "-c", SLMRUN_RUN, args], check=True, capture_output=True, text=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    runs = data["runs"]
    return _summary([(r[0], r[1], r[2], r[3], r[4]) for r in runs]) | {"texts": [r[5] for r in runs],
                                                                        "prompt_tokens": data["prompt_tokens"]}


def _summary(rows) -> dict:
    t0, t1 = min(r[0] for r in rows), max(r[1] for r in rows)
    gen, drafted, accepted = (sum(r[i] for r in rows) for i in (2, 3, 4))
    return {"tps": gen / (t1 - t0), "generated": gen, "drafted": drafted, "accepted": accepted}


# ------------------------------------------------------------------ llama-server

def run_llama_server(exe: Path, model: Path, threads: int, prompt_tokens, schemas, spec: bool, tokens: int) -> dict:
    n = len(prompt_tokens)
    port = free_port()
    cmd = [str(exe), "-m", str(model), "-t", str(threads), "-tb", str(threads), "-np", str(n), "-c", str(2048 * n),
           "-fa", "on", "--host", "127.0.0.1", "--port", str(port), "--no-webui"]
    if spec:
        cmd += ["--spec-type", "ngram-simple"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http_ready(port, proc, timeout=120, what=f"llama-server ({' '.join(cmd)})")
        _request(port, [1, 2, 3], None, 4)  # warm-up
        rows = [None] * n
        start = threading.Barrier(n + 1)

        def client(i):
            start.wait()
            rows[i] = _request(port, prompt_tokens[i], schemas[i], tokens)
        ts = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        [t.start() for t in ts]
        start.wait()
        [t.join() for t in ts]
        return _summary(rows)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _request(port: int, prompt, schema, tokens: int):
    body = {"prompt": prompt, "n_predict": tokens, "temperature": 0, "stream": True, "cache_prompt": False}
    if schema is not None:
        body["json_schema"] = schema
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/completion", json.dumps(body), {"Content-Type": "application/json"})
    gen = drafted = accepted = 0
    for raw in c.getresponse():
        line = raw.decode().strip()
        if line.startswith("data: "):
            event = json.loads(line[6:])
            if event.get("stop"):
                timings = event.get("timings", {})
                gen = event.get("tokens_predicted") or timings.get("predicted_n", 0)
                drafted, accepted = timings.get("draft_n", 0), timings.get("draft_n_accepted", 0)
    return (t0, time.perf_counter(), gen, drafted, accepted)


# ------------------------------------------------------------------ the run

def measure(fn, retries: int = 3) -> dict:
    for attempt in range(retries):
        wait_quiet(60)
        before = cpu_snapshot()
        result = fn()
        result["noise"] = others_cores(before, cpu_snapshot())
        if result["noise"] <= 0.2 or attempt == retries - 1:
            return result
        log(f"other processes used {result['noise']:.2f} cores; measuring again")
    raise AssertionError("unreachable")


CONFIGS = ("slmrun off", "slmrun auto", "llama-server", "llama-server ngram-simple")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", type=Path, default=None)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--streams", default="1,4")
    ap.add_argument("--tokens", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default=None, help="comma-separated workload names")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    if a.model is None:
        from slmrun.api import resolve
        a.model = resolve("smollm2-135m").path
    exe = build_tools("llama-server")["llama-server"]
    loads = workloads()
    if a.only:
        loads = {k: v for k, v in loads.items() if k in a.only.split(",")}
    streams = [int(x) for x in a.streams.split(",")]
    runs: dict[tuple, list[dict]] = {}
    same: dict[tuple, list[bool]] = {}
    for rnd in range(a.rounds):
        for name, prompts in loads.items():
            for n in streams:
                chosen = prompts[:n]
                for config in CONFIGS:
                    key = (name, n, config)
                    log(f"round {rnd + 1}/{a.rounds}: {name}, {n} stream(s), {config}")
                    if config.startswith("slmrun"):
                        r = measure(lambda: run_slmrun(a.model, a.threads, chosen, config.split()[1], a.tokens))
                        prompt_tokens = r["prompt_tokens"]
                    else:
                        r = measure(lambda: run_llama_server(exe, a.model, a.threads, prompt_tokens,
                                                             [p[1] for p in chosen], "ngram" in config, a.tokens))
                    log(f"  {r['tps']:.1f} tok/s, {r['accepted']}/{r['drafted']} drafts accepted")
                    runs.setdefault(key, []).append(r)
                off, auto = runs.get((name, n, "slmrun off")), runs.get((name, n, "slmrun auto"))
                same.setdefault((name, n), []).append(off[-1]["texts"] == auto[-1]["texts"])
    write_report(a, loads, streams, runs, same)




def write_report(a, loads, streams, runs, same) -> None:
    lines = ["# Prompt-lookup speculative decoding", "",
             f"Command: `.venv/bin/python benchmarks/speculative.py -m {a.model.name} -t {a.threads} --streams "
             f"{a.streams} --tokens {a.tokens} --rounds {a.rounds}`  ",
             f"Machine: {os.cpu_count()} cores, {a.threads} threads, flash attention on, greedy, at most {a.tokens} "
             f"tokens per reply; load average at the start {os.getloadavg()[0]:.2f}. {a.rounds} interleaved rounds, "
             "each run after a quiet moment; tokens/s = all streams' generated tokens / wall time (prompt "
             "included); mean ± sample std dev over rounds. Drafts: accepted / drafted tokens over all rounds.",
             "",
             "| workload | streams | slmrun off | slmrun auto | auto / off | drafts accepted (slmrun) | "
             "llama-server | llama-server ngram-simple | its gain | drafts accepted (llama-server) | "
             "slmrun auto / llama-server ngram | same text with drafts |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name in loads:
        for n in streams:
            r = {c: runs[(name, n, c)] for c in CONFIGS}
            tps = {c: [x["tps"] for x in v] for c, v in r.items()}
            gain = [b / o for b, o in zip(tps["slmrun auto"], tps["slmrun off"])]
            lgain = [b / o for b, o in zip(tps["llama-server ngram-simple"], tps["llama-server"])]
            vs = [s / l for s, l in zip(tps["slmrun auto"], tps["llama-server ngram-simple"])]

            def acc(c):
                d = sum(x["drafted"] for x in r[c])
                return f"{sum(x['accepted'] for x in r[c]) / d:.0%} of {d}" if d else "none"
            ok = same[(name, n)]
            lines.append(f"| {name} | {n} | {fmt(tps['slmrun off'])} | {fmt(tps['slmrun auto'])} | "
                         f"**{fmt(gain, 2)}** | {acc('slmrun auto')} | {fmt(tps['llama-server'])} | "
                         f"{fmt(tps['llama-server ngram-simple'])} | {fmt(lgain, 2)} | "
                         f"{acc('llama-server ngram-simple')} | {fmt(vs, 2)} | {sum(ok)}/{len(ok)} |")
    noise = max(x["noise"] for v in runs.values() for x in v)
    lines += ["", f"Most CPU other processes used during a counted run: {noise:.2f} cores.", ""]
    lines += analysis_block(a.out)
    a.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
