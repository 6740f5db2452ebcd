#!/usr/bin/env python3
"""The fuzz suite, run long: tests/fuzzing.py's generator sends N bad requests to every route
of a real `slmrun serve` (a tiny random-weight model, on loopback), checks every answer as
tests/test_server_fuzz.py does (below 500, the API's own error shape, no path of this
machine) and tallies the outcomes by status. The good request of each route must still
work after its bad ones, and the server's log must hold no internal error.

Writes benchmarks/FUZZ.md.

    .venv/bin/python benchmarks/fuzz.py [--examples 250] [--seed 0]
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

from fuzzing import ROUTES, bad_body, check_answer, forbidden_paths, junk_request, served_routes  # noqa: E402
from serverutil import Server, store_model  # noqa: E402
from tinymodels import write_tiny_gguf  # noqa: E402

OUT = HERE / "FUZZ.md"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fuzz_route(client, route, n: int, seed_value: int, forbidden: list[str]) -> tuple[collections.Counter, list]:
    statuses: collections.Counter = collections.Counter()
    problems: list[str] = []

    def record(method: str, path: str, body: bytes | None) -> None:
        r = client.request(method, path, content=body, headers={"Content-Type": "application/json"})
        statuses[r.status_code] += 1
        problem = check_answer(route, r.status_code, r.headers.get("content-type", ""), r.content, forbidden)
        if problem:
            problems.append(f"{problem} <- {method} {path[:100]} {(body or b'')[:200]!r}")

    config = settings(max_examples=n, deadline=None, database=None, phases=(Phase.generate,),
                      suppress_health_check=list(HealthCheck))
    if route.body:
        @seed(seed_value)
        @config
        @given(bad_body(route))
        def run(data: bytes) -> None:
            record(route.method, route.path, data)
    else:
        @seed(seed_value)
        @config
        @given(junk_request(route))
        def run(request) -> None:
            record(*request)
    run()
    path = route.path.format(**route.extra)
    good = client.request(route.method, path, content=json.dumps(route.good).encode() if route.good else None)
    if good.status_code != route.good_status:
        problems.append(f"the good request got {good.status_code}: {good.text[:200]}")
    return statuses, problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=250, help="bad requests per route with a body "
                                                              "(a fifth of that for the others)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    routes = [r for r in ROUTES if (r.method, r.path) in served_routes()]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny = write_tiny_gguf(tmp / "tiny-llama.gguf", arch="llama")
        store_model(tmp / "home", tiny, "tiny")
        t0 = time.perf_counter()
        rows, all_problems = [], []
        with Server(tmp / "home", "-m", "tiny", "--ctx", "256", "--parallel", "2", "--threads", "1") as s, \
                httpx.Client(base_url=s.url, timeout=120) as client:
            forbidden = forbidden_paths(tmp, ROOT)
            for route in routes:
                n = args.examples if route.body else max(10, args.examples // 5)
                t = time.perf_counter()
                statuses, problems = fuzz_route(client, route, n, args.seed, forbidden)
                log(f"{route.method} {route.path}: {sum(statuses.values())} requests in "
                    f"{time.perf_counter() - t:.1f}s, {dict(sorted(statuses.items()))}, {len(problems)} problem(s)")
                rows.append((route, statuses, problems))
                all_problems += problems
            bugs = s.log.count("internal error")
        elapsed = time.perf_counter() - t0
    write(rows, all_problems, bugs, elapsed, args)


def write(rows, problems, bugs: int, elapsed: float, args) -> None:
    codes = sorted({c for _, st, _ in rows for c in st})
    total = sum(sum(st.values()) for _, st, _ in rows)
    lines = ["# The fuzz suite, run long", "",
             "Bad requests generated from the bodies `slmrun/server/schema.py` declares (tests/fuzzing.py: one to "
             "three declared fields, nested ones too, set to a wrong type, a number past its range, a huge "
             "string, a path or a value nested hundreds deep, or removed; or the encoded bytes corrupted: "
             "invalid UTF-8, a lone surrogate, a cut, not an object, empty), and junk queries, bodies and "
             "methods for the routes without a body, against a real `slmrun serve` on loopback with a tiny "
             "random-weight model (`--ctx 256 --parallel 2 --threads 1`). Every answer is checked as "
             "`tests/test_server_fuzz.py` checks it: below 500, in the API's own error shape, no path of this "
             "machine in it; after each route its good request must get its usual answer.", "",
             f"    .venv/bin/python benchmarks/fuzz.py --examples {args.examples} --seed {args.seed}", "",
             f"{total} requests in {elapsed:.0f} s on {platform.machine()} ({platform.python_implementation()} "
             f"{platform.python_version()}); **{len(problems)} problem(s)**, {bugs} internal error(s) in the "
             "server's log.", "",
             "| route | requests | " + " | ".join(str(c) for c in codes) + " |",
             "|---|---:|" + "---:|" * len(codes)]
    for route, st, _ in rows:
        lines.append(f"| `{route.method} {route.path}` | {sum(st.values())} | "
                     + " | ".join(str(st.get(c, 0)) for c in codes) + " |")
    lines += ["", "Statuses: 200/204 a request the generator left valid (it was served: generated, shown, listed); "
              "400 refused by the body's declaration or a rule across fields; 404 a model (or route) not here; "
              "405 a method the route does not take; 413 over the body cap. The good requests of /api/delete, "
              "/api/pull, /api/copy and /api/create name models that do not exist, so that nothing is "
              "deleted, downloaded or written: their usual answer is 404.", ""]
    if problems:
        lines += ["## Problems", ""] + [f"- {p}" for p in problems[:50]] + [""]
    OUT.write_text("\n".join(lines))
    log(f"wrote {OUT}")


if __name__ == "__main__":
    main()
