#!/usr/bin/env python3
"""A process's first constrained request against its second: the one-time set-up of
structured output (llguidance's view of the vocabulary, the jsonschema import) that a fresh
`slmrun extract` pays and a running server pays once.

Each run is a fresh process: load the default model, one unconstrained warm-up, then the
same 1-token JSON-schema chat twice (the second reuses the tokenizer and compiled grammar).
Prints the median over runs; no file is written (benchmarks/SPECULATIVE.md quotes it).

    .venv/bin/python benchmarks/first_constraint.py [--runs 3] [-m MODEL]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

RUN = r"""
import json, sys, time
import slmrun
schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
messages = [{"role": "user", "content": "Extract the name: Ada Lovelace wrote the notes."}]
with slmrun.load(sys.argv[1], n_parallel=1, n_threads=2) as m:
    m.complete("Hello", max_tokens=4).wait()
    out = []
    for _ in range(2):
        t0 = time.perf_counter()
        m.chat(messages, json_schema=schema, temperature=0, max_tokens=1).wait()
        out.append(time.perf_counter() - t0)
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", default="smollm2-135m")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    runs = [json.loads(subprocess.run([sys.executable, "-c", RUN, a.model], check=True, capture_output=True,
                                      text=True).stdout) for _ in range(a.runs)]
    first, second = (statistics.median(r[i] for r in runs) * 1e3 for i in (0, 1))
    print(f"{a.model}, median of {a.runs} fresh processes: first constrained request {first:.0f} ms, "
          f"second {second:.0f} ms, one-time set-up {first - second:.0f} ms")


if __name__ == "__main__":
    main()
