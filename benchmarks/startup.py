"""Start-up and load: `slmrun` against llama.cpp's own `llama-completion`, whole commands timed.

    .venv/bin/python benchmarks/startup.py [--runs 7]     (writes benchmarks/STARTUP.md)

Needs llama.cpp's `llama-completion`, built from the same source as the installed
llama-cpp-python by `benchmarks/compare_llama_bench.py` (then
`cmake --build benchmarks/_build/llama.cpp-build --target llama-completion`).
Each command runs `--runs` times, interleaved, after one warm-up (page cache warm);
the median wall time is reported, and the ratio of the two medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVED = "`slmrun run --raw -n 1 -m smollm2-135m`, answered by a running `slmrun serve` that has it loaded"
NO_SERVER = "the same with `--no-server` (start, load, 1 token)"
BUILD = ROOT / "benchmarks" / "_build" / "llama.cpp-build" / "bin"


def wall(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                   env=env, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    # As installed by pip, slmrun's modules come compiled (.pyc). A development shell may set
    # PYTHONDONTWRITEBYTECODE (this one does), and then every run compiles slmrun's ~100 modules
    # from source: ~40 ms of `slmrun --help` here. The warm-up writes the .pyc files.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    slmrun = str(Path(sys.executable).with_name("slmrun"))
    model = subprocess.run([slmrun, "show", "smollm2-135m", "--json", "--no-verify"], capture_output=True,
                           text=True, check=True, env=env).stdout
    import json
    path = json.loads(model)["file"]
    completion = BUILD / "llama-completion"
    t = str(args.threads)
    pick = ("import slmrun.planner as p, slmrun.registry as r; "
            "p.pick_for_this_machine(r.load_registry().get('tinyllama'))")
    cases = {
        "`slmrun --help`": [slmrun, "--help"],
        "`slmrun list`": [slmrun, "list"],
        # What `slmrun pull NAME` adds before any download: detection and a plan, never a
        # bandwidth measurement (tests/test_planner.py checks that it does not measure).
        "the quant pick of `slmrun pull tinyllama` (Python start + detect + plan)": [sys.executable, "-c", pick],
        "`slmrun run --raw -n 1` (start, load, 1 token)": [slmrun, "run", "--raw", "-m", path, "-n", "1",
                                                             "--threads", t, "Hello"],
    }
    if completion.is_file():
        cases["`llama-completion -n 1` (start, load, 1 token)"] = [
            str(completion), "-m", path, "-n", "1", "-t", t, "-fa", "on", "-p", "Hello", "-no-cnv",
            "--no-warmup", "--simple-io"]
    # `slmrun run` answered by a running `slmrun serve` that has the model loaded (as `ollama run`
    # asks its server), against the same command loading the model itself (--no-server).
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from llama_tools import free_port, wait_http_ready
    port = free_port()
    server = subprocess.Popen([slmrun, "serve", "-m", "smollm2-135m", "--port", str(port), "--threads", t],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    served_env = {**env, "SLMRUN_HOST": f"127.0.0.1:{port}"}
    by_name = [slmrun, "run", "--raw", "-m", "smollm2-135m", "-n", "1", "Hello"]
    cases[SERVED] = by_name
    cases[NO_SERVER] = by_name[:2] + ["--no-server"] + by_name[2:]
    envs = {SERVED: served_env, NO_SERVER: served_env}
    wait_http_ready(port, server, timeout=120, what="slmrun serve")
    for k, cmd in cases.items():
        wall(cmd, envs.get(k, env))  # warm-up: page cache, pyc files
    times = {k: [] for k in cases}
    for _ in range(args.runs):
        for k, cmd in cases.items():
            times[k].append(wall(cmd, envs.get(k, env)))
    server.terminate()
    server.wait(timeout=30)
    med = {k: statistics.median(v) for k, v in times.items()}
    from llama_tools import analysis_block
    out = ROOT / "benchmarks" / "STARTUP.md"
    lines = ["# Start-up and load", "",
             f"`.venv/bin/python benchmarks/startup.py --runs {args.runs} --threads {t}`: median wall time of "
             f"{args.runs} interleaved runs after a warm-up, model SmolLM2-135M-Instruct Q4_1, page cache warm.", "",
             "| command | median | min | max |", "|---|---:|---:|---:|"]
    for k, v in times.items():
        lines.append(f"| {k} | {med[k] * 1000:.0f} ms | {min(v) * 1000:.0f} ms | {max(v) * 1000:.0f} ms |")
    a = "`slmrun run --raw -n 1` (start, load, 1 token)"
    b = "`llama-completion -n 1` (start, load, 1 token)"
    if b in med:
        lines += ["", f"**slmrun / llama-completion, start + load + one token: {med[a] / med[b]:.2f}×** "
                  f"({(med[a] - med[b]) * 1000:+.0f} ms); load average at the end {os.getloadavg()[0]:.2f}."]
        lines += ["", f"**Answered by a running `slmrun serve`: {med[SERVED] / med[b]:.2f}× llama-completion, "
                  f"{med[SERVED] / med[NO_SERVER]:.2f}× the same command with --no-server** "
                  f"({(med[SERVED] - med[NO_SERVER]) * 1000:+.0f} ms)."]
    lines += [""] + analysis_block(out)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
