#!/usr/bin/env python3
"""The cost of splitting a model across llama.cpp RPC servers, measured on loopback.

    .venv/bin/python benchmarks/rpc.py [--rounds 3] [--threads 2] [-p 128] [-n 64]   (writes benchmarks/RPC.md)

1. Builds llama.cpp's llama-bench and ggml-rpc-server from the source of the installed
   llama-cpp-python, with -DGGML_RPC=ON (llama_tools.build_tools), under benchmarks/_build/
   (gitignored; nothing built is committed).
2. Starts two `slmrun rpc-server` processes on 127.0.0.1 (and, for one row, two of
   llama.cpp's own ggml-rpc-server).
3. For each split (local; all layers on 1 server; on 2 servers; the local CPU + 2
   servers by free memory) runs, interleaved in rounds, each in its own process:
   slmrun's path (slmrun.runtime.rpc.place + a Model over it, timed by runtime.measure as
   `slmrun bench` times it: the engine thread, its watchdog around each step)
   and llama-bench with the same --rpc / -ngl / -ts.
4. Asks the planner what the pooled memory of 1, 2 and 3 Raspberry Pi 4 2 GB would run.

Everything runs on one machine: the split's cost here is the RPC protocol's and the
extra copies, not a network's latency or bandwidth. Every process runs with
OMP_WAIT_POLICY=PASSIVE (--spin keeps OpenMP's default): on loopback all the "devices"
share this machine's cores, and the idle ones' OpenMP threads spinning for work would
steal the CPU from the one computing; on separate machines that costs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import llama_tools as lt  # noqa: E402
from compare_llama_bench import MARK_BEGIN, MARK_END, llama_bench_json, slmrun_cmd  # noqa: E402

OUT = HERE / "RPC.md"

WORKER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from slmrun.runtime import LoadOptions, Model, measure, rpc
from slmrun.runtime.rpc_wire import traffic
a = json.loads(sys.argv[2])
# The engine's own path: a Model over the placement, timed by measure (what `slmrun bench` runs).
placement = rpc.place(a["model"], a["rpc"], use_local=a["use_local"]) if a["rpc"] else None
t = a["threads"]
opts = LoadOptions(n_ctx=max(256, a["p"] + a["n"] + 8), n_threads=t, n_threads_batch=t, flash_attn=True)
t0 = time.perf_counter()
m = Model(a["model"], opts, placement=placement)
load = time.perf_counter() - t0
measure.clear_kv(m); measure.bench_pp(m, 16); measure.bench_tg(m, 8)  # warm-up
pp, tg = [], []
for _ in range(a["reps"]):  # each test from an empty cache, as llama-bench runs them
    measure.clear_kv(m)
    pp.append(a["p"] / measure.bench_pp(m, a["p"]))
    measure.clear_kv(m)
    tg.append(a["n"] / measure.bench_tg(m, a["n"]))
# bytes on the wire per generated token, from TCP_INFO on llama.cpp's own sockets
eps = placement.endpoints if placement else []
measure.clear_kv(m)
before = [traffic(ip, port) for _, ip, port in eps]
measure.bench_tg(m, a["n"])
after = [traffic(ip, port) for _, ip, port in eps]
wire = [((s2 - s1) / a["n"], (r2 - r1) / a["n"]) for (s1, r1), (s2, r2) in zip(before, after)]
print(json.dumps({"pp": pp, "tg": tg, "load": load, "wire": wire,
                  "ngl": placement.n_gpu_layers if placement else 0,
                  "ts": placement.tensor_split if placement else [],
                  "layers": placement.summary() if placement else []}))
m.close()
"""


def slmrun_run(model: Path, rpc_spec: str, use_local: bool, threads: int, p: int, n: int, reps: int) -> dict:
    args = json.dumps({"model": str(model), "rpc": rpc_spec, "use_local": use_local, "threads": threads,
                       "p": p, "n": n, "reps": reps})
    out = lt.run([sys.executable, "-c", WORKER, ROOT, args], capture_output=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def llama_bench_run(exe: Path, model: Path, rpc_spec: str, ngl: int, ts: list[float], threads: int,
                    p: int, n: int, reps: int) -> dict:
    args = ["-fa", "1", "-p", p, "-n", n, "-r", reps, "-ngl", ngl]
    if rpc_spec:
        args += ["--rpc", rpc_spec]
        if len(ts) > 1:
            args += ["-ts", "/".join(f"{x:g}" for x in ts)]
    tests = llama_bench_json(exe, model, threads, *args)
    pp = next(t for t in tests if t["n_prompt"] == p and t["n_gen"] == 0)
    tg = next(t for t in tests if t["n_gen"] == n and t["n_prompt"] == 0)
    return {"pp": pp["samples_ts"], "tg": tg["samples_ts"], "commit": pp.get("build_commit")}


def round_trip(port: int, count: int = 500) -> float:
    """Median seconds of one request and its answer on an open connection to a server on
    loopback (RPC_CMD_DEVICE_COUNT, the smallest: what a synchronous exchange costs)."""
    import socket
    from slmrun.runtime import rpc_wire
    times = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        rpc_wire._call(sock, rpc_wire._CMD_HELLO, bytes(rpc_wire._CONN_CAPS_SIZE), 4 + rpc_wire._CONN_CAPS_SIZE)
        for _ in range(count):
            t0 = time.perf_counter()
            rpc_wire._call(sock, rpc_wire._CMD_DEVICE_COUNT, b"", 4)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


REPLIED = {"get_tensor", "copy_tensor", "set_tensor_hash", "get_alloc_size", "alloc_buffer", "buffer_get_base",
           "get_alignment", "get_max_size", "get_device_memory", "hello", "device_count", "init_tensor"}


def protocol_per_token(model: Path, threads: int, configs) -> dict:
    """RPC commands per generated token, by server and command, from two runs of different
    lengths against servers logging every command (GGML_RPC_DEBUG=1)."""
    import tempfile
    tmp = Path(tempfile.mkdtemp(prefix="slmrun-rpc-bench-"))
    servers = [Server([*slmrun_cmd(), "rpc-server", "--port", "{port}", "-t", str(threads)], log=tmp / f"s{i}.log",
                      env={"GGML_RPC_DEBUG": "1"}) for i in range(2)]
    out = {}
    try:
        for s in servers:
            s.ready()
        spec = {1: servers[0].endpoint, 2: f"{servers[0].endpoint},{servers[1].endpoint}"}
        for name, n_servers, use_local in configs:
            counts = []
            for n in (8, 40):
                before = [s.commands() for s in servers]
                slmrun_run(model, spec[n_servers], use_local, threads, 8, n, 1)
                time.sleep(0.5)  # the servers' last lines
                counts.append([s.commands() - b for s, b in zip(servers, before)])
            tokens = 2 * (40 - 8)  # one bench repetition and the traffic run, each n tokens
            out[name] = [{cmd: (long[cmd] - short[cmd]) / tokens for cmd in long if long[cmd] != short[cmd]}
                         for short, long in zip(*counts)][:n_servers]
    finally:
        for s in servers:
            s.stop()
    return out


class Server:
    """A server process on 127.0.0.1, ready when it answers the RPC handshake (llama.cpp's
    prints with printf into a pipe, block-buffered: asking is the reliable signal)."""

    def __init__(self, cmd: list[str], log: Path | None = None, env: dict | None = None):
        self.port = lt.free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.log = log
        out = open(log, "w") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen([c.replace("{port}", str(self.port)) for c in cmd], stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def cpu_seconds(self) -> float:
        """CPU time the server has used so far (a live child: not in RUSAGE_CHILDREN yet)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def commands(self) -> "Counter":
        """RPC commands served so far, by name (the server runs with GGML_RPC_DEBUG=1)."""
        from collections import Counter
        return Counter(re.findall(r"^\[(\w+)\]", self.log.read_text(errors="replace"), re.M))

    def ready(self, timeout: float = 60) -> "Server":
        from slmrun.runtime.ggml_backend import ggml
        from slmrun.runtime.rpc_wire import WireError, query
        deadline = time.monotonic() + timeout
        while True:
            try:
                query("127.0.0.1", self.port, 5.0, ggml().proto_version())
                return self
            except WireError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.proc.args[0]} did not start on {self.endpoint}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def default_model() -> Path:
    out = subprocess.run([*slmrun_cmd(), "show", "smollm2-135m", "--json", "--no-verify"], capture_output=True,
                         text=True, check=True).stdout
    return Path(json.loads(out)["file"])


def what_fits(device: str = "rpi4-2gb", counts=(1, 2, 3)) -> list[tuple[str, list[str]]]:
    """The planner's pick for each registry model on one board, and split across it and 1-2
    more boards like it acting as RPC servers (plan(..., devices=...): each share must fit)."""
    from slmrun import planner
    from slmrun.errors import InsufficientMemoryError
    from slmrun.hardware import profile
    from slmrun.planner import RemoteDevice
    from slmrun.registry import load_registry
    from slmrun.units import format_bytes
    hw = profile(device)
    rows = []
    for entry in sorted(load_registry().models.values(), key=lambda e: e.n_params):
        cells = []
        for n in counts:
            boards = [RemoteDevice(f"board{i + 2}:50052", free_bytes=hw.memory_available, total_bytes=hw.ram_total)
                      for i in range(n - 1)]
            try:
                pick = planner.plan(entry, hw, min_speed=0, devices=boards or None)
                cells.append(f"{pick.quant}, {format_bytes(pick.estimated_bytes)}, ~{pick.estimated_tps:.1f} tok/s")
            except InsufficientMemoryError:
                cells.append("does not fit")
        rows.append((entry.name, cells))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("-p", type=int, default=128)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-r", type=int, default=3, help="repetitions per process")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--quiet", type=float, default=120, help="seconds to wait for a quiet machine before each row")
    ap.add_argument("--spin", action="store_true", help="keep OpenMP's default wait policy (threads spin)")
    a = ap.parse_args(argv)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    if not a.spin:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # inherited by every server, worker and llama-bench
    build = lt.installed_build()
    exes = lt.build_tools("llama-bench", "ggml-rpc-server", jobs=a.jobs)
    model = default_model()
    t = str(a.threads)
    ours = [Server([*slmrun_cmd(), "rpc-server", "--port", "{port}", "-t", t]) for _ in range(2)]
    theirs = [Server([str(exes["ggml-rpc-server"]), "-p", "{port}", "-t", t]) for _ in range(2)]
    try:
        for s in ours + theirs:
            s.ready()
        rtt = round_trip(ours[0].port)
        one, two = ours[0].endpoint, f"{ours[0].endpoint},{ours[1].endpoint}"
        two_theirs = f"{theirs[0].endpoint},{theirs[1].endpoint}"
        configs = [
            ("local (no RPC)", "", False),
            ("1 server, all layers", one, False),
            ("2 servers, all layers", two, False),
            ("local CPU + 2 servers, by free memory", two, True),
            ("2 llama.cpp ggml-rpc-servers, all layers", two_theirs, False),
        ]
        results = {name: {"sl_pp": [], "sl_tg": [], "lb_pp": [], "lb_tg": [], "load": [], "noise": []}
                   for name, _, _ in configs}
        meta = {}
        for rnd in range(a.rounds):
            for name, spec, use_local in configs:
                lt.wait_quiet(a.quiet)
                lt.log(f"round {rnd + 1}/{a.rounds}: {name}")
                before, served = lt.cpu_snapshot(), sum(x.cpu_seconds() for x in ours + theirs)
                sl = slmrun_run(model, spec, use_local, a.threads, a.p, a.n, a.r)
                lb = llama_bench_run(exes["llama-bench"], model, spec, sl["ngl"] if spec else 0, sl["ts"],
                                     a.threads, a.p, a.n, a.r)
                r = results[name]
                # the servers work for this run: their CPU is ours, "others" is the rest of the machine
                after = lt.cpu_snapshot()
                served = sum(x.cpu_seconds() for x in ours + theirs) - served
                r["noise"].append(max(0.0, lt.others_cores(before, after) - served / (after[2] - before[2])))
                r["sl_pp"] += sl["pp"]
                r["sl_tg"] += sl["tg"]
                r["lb_pp"] += lb["pp"]
                r["lb_tg"] += lb["tg"]
                r["load"].append(sl["load"])
                r.setdefault("wire", []).append(sl["wire"])
                meta[name] = {"ngl": sl["ngl"], "ts": sl["ts"], "layers": sl["layers"], "commit": lb["commit"]}
    finally:
        for s in ours + theirs:
            s.stop()
    protocol = protocol_per_token(model, a.threads, [("1 server, all layers", 1, False),
                                                     ("2 servers, all layers", 2, False),
                                                     ("local CPU + 2 servers, by free memory", 2, True)])
    write(a, build, model, configs, results, meta, rtt, what_fits(), protocol)
    print(OUT.read_text())
    return 0


def _med(xs) -> float:
    return statistics.median(xs)


def write(a, build, model, configs, results, meta, rtt, fits, protocol) -> None:
    base = results[configs[0][0]]
    base_sl, base_lb = _med(base["sl_tg"]), _med(base["lb_tg"])
    lines = [
        "# Splitting a model across llama.cpp RPC servers: what it costs",
        "",
        "**Everything here runs on one machine, over loopback (127.0.0.1).** The numbers are the cost of "
        "llama.cpp's RPC protocol and of the extra processes and copies, not of a real network: on Ethernet or "
        "Wi-Fi each token also pays the network's round trips and transfer time, and the devices take turns "
        "on every token, so a split is never faster than one machine with all the memory.",
        "",
        f"`.venv/bin/python benchmarks/rpc.py --rounds {a.rounds} --threads {a.threads} -p {a.p} -n {a.n} "
        f"-r {a.r}` on {platform.machine()} ({os.cpu_count()} logical cores, shared with other jobs), model "
        f"{model.name}, flash attention on, every process with {a.threads} threads"
        + ("" if a.spin else " and `OMP_WAIT_POLICY=PASSIVE` (all the devices share these cores: idle "
                             "OpenMP threads spinning would take the CPU from the one computing)") + ". slmrun's path is "
        "`slmrun.runtime.rpc.place()` + a `Model` over the placement, timed by `runtime.measure` (the engine "
        "thread and its per-step watchdog, as `slmrun bench --rpc` runs), each run in its own "
        f"process; llama-bench is built from the same llama.cpp ({build.get('commit')}, "
        "`-DGGML_RPC=ON`) and given the same `--rpc`, `-ngl` and `-ts`. Servers: `slmrun rpc-server -t "
        f"{a.threads}` unless the row says otherwise. Medians of {a.rounds} rounds x {a.r} repetitions, "
        "interleaved.",
        "",
        f"Other processes (not this script, its workers or its servers) used a median "
        f"{_med(sum((r['noise'] for r in results.values()), [])):.2f} of the {os.cpu_count()} cores while these "
        "ran (per row below). With `OMP_WAIT_POLICY=PASSIVE` every process's OpenMP threads sleep between "
        "steps, which on this machine cuts even the local rate to about a third of the default (spinning) "
        "policy's: compare rows, and the two tools within a row, which ran side by side; not these rates "
        "with benchmarks/RESULTS.md.",
        "",
        f"| split | layers (local / servers) | slmrun pp{a.p} t/s | slmrun tg{a.n} t/s | llama-bench pp{a.p} t/s "
        f"| llama-bench tg{a.n} t/s | slmrun / llama-bench (tg) | split cost per token (slmrun, llama-bench) "
        "| others' cores |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, spec, _ in configs:
        r, m = results[name], meta[name]
        sl_tg, lb_tg = _med(r["sl_tg"]), _med(r["lb_tg"])
        layers = " / ".join(str(n) for _, n, _ in m["layers"]) if m["layers"] else "all local"
        cost = ("-" if not spec else
                f"+{(1 / sl_tg - 1 / base_sl) * 1000:.2f} ms, +{(1 / lb_tg - 1 / base_lb) * 1000:.2f} ms")
        lines.append(f"| {name} | {layers} | {_med(r['sl_pp']):.0f} | {sl_tg:.1f} | {_med(r['lb_pp']):.0f} | "
                     f"{lb_tg:.1f} | {sl_tg / lb_tg:.2f} | {cost} | {_med(r['noise']):.2f} |")
    lines += [
        "",
        "## Per token, on the wire",
        "",
        "What one generated token costs in protocol terms, independent of this machine's load: the commands "
        "the client sends each server (counted by the servers themselves, `GGML_RPC_DEBUG=1`, difference of "
        "two runs of different lengths), and the bytes on llama.cpp's sockets (the client's TCP_INFO). "
        "Commands marked * wait for an answer: each is a network round trip.",
        "",
        "| split | server | commands per token | bytes sent / received per token |",
        "|---|---|---|---:|",
    ]
    for name, per_server in protocol.items():
        wires = results[name].get("wire") or []
        for i, cmds in enumerate(per_server):
            text = ", ".join(f"{cmd}{'*' if cmd in REPLIED else ''} {n:g}" for cmd, n in sorted(cmds.items()))
            sent = _med([w[i][0] for w in wires]) if wires else 0
            got = _med([w[i][1] for w in wires]) if wires else 0
            lines.append(f"| {name} | {i + 1} | {text} | {sent / 1024:.1f} KiB / {got / 1024:.1f} KiB |")
    lines += [
        "",
        f"One request and its answer on an open connection to a server here takes {rtt * 1e6:.0f} µs "
        "(median of 500, RPC_CMD_DEVICE_COUNT); on a network add its round trip time per command marked *, "
        "and the bytes at its bandwidth.",
        "",
        "Load time of the model in slmrun's process (weights sent to the servers; median): "
        + ", ".join(f"{name}: {_med(results[name]['load']):.2f} s" for name, _, _ in configs) + ".",
        "",
        "## What it buys: the largest model that fits",
        "",
        "The planner's pick (`slmrun.planner.plan`, no speed floor) on one Raspberry Pi 4 2 GB, and split "
        "across it and one or two more acting as RPC servers (`plan(..., devices=...)`, what `slmrun plan "
        "MODEL --rpc ...` does with the servers' reported memory): every board's share of the layers, its "
        "KV cache and its own compute buffer must fit that board's budget; the client also keeps the input "
        "embedding. The speed is the planner's estimate: the boards take turns on each token, plus ~1 ms of "
        "network per server per token (a Pi 4's gigabit Ethernet), so a split is slower than one board "
        "that could hold the model and only buys the fit.",
        "",
        "| model | 1 x rpi4-2gb | 2 x rpi4-2gb | 3 x rpi4-2gb |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in fits]
    lines += ["", _keep(OUT)]
    OUT.write_text("\n".join(lines) + "\n")


def _keep(path: Path) -> str:
    if path.is_file():
        text = path.read_text()
        if MARK_BEGIN in text and MARK_END in text:
            return text[text.index(MARK_BEGIN):text.index(MARK_END) + len(MARK_END)]
    return f"{MARK_BEGIN}\n## Reading the numbers\n\n(written after a run)\n{MARK_END}"


if __name__ == "__main__":
    sys.exit(main())
