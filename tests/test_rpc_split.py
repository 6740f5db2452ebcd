"""A model split across `slmrun rpc-server` processes on loopback, with the real llama.cpp.

Greedy output must be the single-process output; servers that die or freeze mid-run must
end the client with a one-line error naming them, never a hang or a SIGABRT.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rpc_client import Generator
from rpc_servers import Server, servers, stop_leftover_servers  # noqa: F401  (fixtures)
from slmrun.runtime import rpc
from tinymodels import write_tiny_gguf

CLIENT = Path(__file__).with_name("rpc_client.py")



@pytest.fixture(scope="module")
def tiny_deep(tmp_path_factory) -> Path:
    """Six layers, so the local CPU and both servers each get some."""
    return write_tiny_gguf(tmp_path_factory.mktemp("rpc-tiny") / "tiny-6.gguf", n_layer=6, chat_template=None, seed=7)


def _endpoints(servers) -> str:
    return ",".join(s.endpoint for s in servers)


def _greedy(model: Path, placement=None, n: int = 24, prompt: str = "the capital of", quiet=True) -> str:
    gen = Generator(model, placement, quiet=quiet)
    try:
        return gen.generate(prompt, n)[0]
    finally:
        gen.close()


def _llama_log(fn):
    """Run fn() with llama.cpp's log captured (debug lines included)."""
    import llama_cpp
    from slmrun.runtime import llama as runtime_llama
    lines: list[str] = []
    cb = llama_cpp.llama_log_callback(lambda level, text, data: lines.append((text or b"").decode("utf-8", "replace")))
    llama_cpp.llama_log_set(cb, ctypes.c_void_p(0))
    runtime_llama._log_enabled = None  # set_llama_log(False) below must really reset it
    try:
        result = fn()
    finally:
        runtime_llama.set_llama_log(False)
    return result, "".join(lines)


@pytest.mark.parametrize("use_local", [True, False], ids=["cpu+2-servers", "2-servers-only"])
def test_tiny_model_split_gives_the_local_text(tiny_deep, servers, use_local):
    local = _greedy(tiny_deep)
    placement = rpc.place(tiny_deep, _endpoints(servers), use_local=use_local)
    assert [d.endpoint for d in placement.devices] == [s.endpoint for s in servers]
    assert all(0 < d.free <= d.total for d in placement.devices)
    split, log = _llama_log(lambda: _greedy(tiny_deep, placement, quiet=False))
    assert split == local and len(local) > 10
    # llama.cpp placed the layers where the placement said it would
    names = {-1: "CPU", 0: placement.devices[0].name, 1: placement.devices[1].name}
    placed = {int(i): dev for i, dev in re.findall(r"layer\s+(\d+) assigned to device (\S+?),", log)}
    got = [placed.get(i) for i in range(7)]
    assert got == [names[d] for d in placement.layers]
    counts = [n for _, n, _ in placement.summary()]
    assert counts[1] > 0 and counts[2] > 0 and (counts[0] > 0) == use_local
    # ggml names the buffer after the device's number on its server (RPC0 for each one here)
    assert f"RPC{placement.devices[0].index}[{placement.devices[0].address}] model buffer size" in log


@pytest.mark.real_model
def test_default_model_split_across_two_servers_gives_the_local_text(default_model_file, servers):
    local = _greedy(default_model_file, n=32, prompt="The capital of France is")
    for use_local in (True, False):
        placement = rpc.place(default_model_file, _endpoints(servers), use_local=use_local)
        assert _greedy(default_model_file, placement, n=32, prompt="The capital of France is") == local
    assert "Paris" in local


def test_survey_reports_each_servers_memory_without_llama_cpp(servers):
    from slmrun import hardware
    found = rpc.survey(rpc.parse_endpoints(_endpoints(servers)), timeout=10)
    assert [str(ep) for ep, _ in found] == [s.endpoint for s in servers]
    for _, memory in found:
        (free, total), = memory  # one device: the CPU
        assert 0 < free < total <= hardware.detect().ram_total


def test_keepalive_is_on_for_llama_cpp_connections_and_traffic_is_counted(tiny_deep, servers):
    from slmrun.runtime.rpc_wire import own_connections
    placement = rpc.place(tiny_deep, _endpoints(servers))
    gen = Generator(tiny_deep, placement)
    try:
        assert placement.connected() == 2  # one connection per server, llama.cpp's
        for s in servers:
            fd, = own_connections("127.0.0.1", s.port)
            sock = socket.socket(fileno=os.dup(fd))
            try:
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 30000
            finally:
                sock.close()
        from slmrun.runtime.rpc_wire import traffic
        before = [traffic("127.0.0.1", s.port) for s in servers]
        gen.generate("the capital of", 4)
        after = [traffic("127.0.0.1", s.port) for s in servers]
        assert all(a[0] > b[0] and a[1] > b[1] for a, b in zip(after, before))  # TCP_INFO counts both ways
    finally:
        gen.close()


def test_a_second_model_on_the_same_servers_reuses_the_connection(tiny_deep, tiny_llama_plain, servers):
    # A server serves one client at a time: slmrun must not probe a server this process
    # already holds (it would wait behind itself); llama.cpp reuses its connection.
    first = Generator(tiny_deep, rpc.place(tiny_deep, _endpoints(servers)))
    try:
        expected = _greedy(tiny_llama_plain)
        second = rpc.place(tiny_llama_plain, _endpoints(servers), timeout=2)
        assert all(d.free > 0 for d in second.devices)
        assert _greedy(tiny_llama_plain, second) == expected
        assert first.generate("the capital of", 8)[0] == _greedy(tiny_deep, n=8)
    finally:
        first.close()


LLAMA_CLASS = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from slmrun.runtime import rpc
import llama_cpp
model, endpoints = sys.argv[2], sys.argv[3]
placement = rpc.place(model, endpoints, register=True)
llm = llama_cpp.Llama(model_path=model, n_ctx=256, n_threads=1, verbose=False, **placement.llama_kwargs())
out = llm.create_completion("the capital of", max_tokens=16, temperature=0.0)["choices"][0]["text"]
local = llama_cpp.Llama(model_path=model, n_ctx=256, n_threads=1, verbose=False)
print(json.dumps([out, local.create_completion("the capital of", max_tokens=16, temperature=0.0)["choices"][0]["text"]]))
"""


def test_llama_class_uses_registered_servers(tiny_deep, servers):
    # llama_cpp.Llama takes no device list: with register=True llama.cpp's default device
    # list is the registered servers. A process of its own: registration lasts as long as it.
    r = subprocess.run([sys.executable, "-c", LLAMA_CLASS, str(Path(__file__).parents[1]), str(tiny_deep),
                        _endpoints(servers)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    split, local = json.loads(r.stdout.strip().splitlines()[-1])
    assert split == local and split


# ---------------------------------------------------------------- failures, each client in its own process

def _client(model: Path, endpoints: str, out: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(CLIENT), str(model), "--rpc", endpoints, *args],
                            stdout=open(out, "w"), stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def _wait_for_output(proc: subprocess.Popen, out: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while out.stat().st_size == 0:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the client produced nothing"
        time.sleep(0.05)


def _one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, stderr
    assert "Aborted" not in stderr and "backtrace" not in stderr.lower() and "#0 " not in stderr
    return errors[0]


def test_a_server_that_is_not_there_ends_the_client_cleanly(tiny_deep, servers, tmp_path):
    from rpc_servers import free_port
    port = free_port()
    proc = _client(tiny_deep, f"{servers[0].endpoint},127.0.0.1:{port}", tmp_path / "out.txt")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 18
    assert _one_error_line(err) == f"Error: RPC server 127.0.0.1:{port} refused the connection: nothing listens there"


def test_a_server_killed_mid_generation_ends_the_client_with_its_name(tiny_deep, servers, tmp_path):
    victim = Server().ready()
    out = tmp_path / "out.txt"
    proc = _client(tiny_deep, f"{servers[0].endpoint},{victim.endpoint}", out, "-n", "2000", "--delay", "0.02")
    try:
        _wait_for_output(proc, out)
        victim.stop(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)  # no hang
    finally:
        proc.kill()
        victim.stop(signal.SIGKILL)
    assert proc.returncode == 18, err  # not -6 (SIGABRT), llama.cpp's own reaction
    line = _one_error_line(err)
    assert line.startswith(f"Error: RPC server {victim.endpoint} went away mid-run (Remote RPC server crashed or "
                           "returned malformed response)"), line
    assert "[done]" not in out.read_text()
    assert servers[0].wait_for("Client connection closed")  # the surviving server is free again
    _, info = rpc.query_server(rpc.Endpoint("127.0.0.1", servers[0].port), timeout=10)
    assert info.memory


def test_a_server_frozen_mid_generation_ends_the_client_after_the_timeout(tiny_deep, servers, tmp_path):
    victim = Server().ready()
    out = tmp_path / "out.txt"
    proc = _client(tiny_deep, f"{servers[0].endpoint},{victim.endpoint}", out, "-n", "2000", "--delay", "0.02",
                   env={"SLMRUN_RPC_TIMEOUT": "2"})
    try:
        _wait_for_output(proc, out)
        victim.send(signal.SIGSTOP)  # its kernel still accepts connections and acknowledges data
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        victim.send(signal.SIGCONT)
        victim.stop()
    assert proc.returncode == 18, err
    assert _one_error_line(err) == (f"Error: RPC server {victim.endpoint} gave no answer within 2 s during an "
                                    "evaluation step: stuck, or far too slow")


@pytest.mark.real_model
def test_cache_keeps_large_tensors_so_a_second_load_skips_sending_them(default_model_file, tmp_path):
    # llama.cpp's rule (ggml-rpc.cpp): a tensor over 10 MiB is offered by hash first; a
    # server with --cache that has it does not need it sent, and stores new ones by hash.
    server = Server("--cache", env={"SLMRUN_HOME": str(tmp_path)}).ready()
    try:
        cache = tmp_path / "rpc-cache"
        for load in (1, 2):
            placement = rpc.place(default_model_file, server.endpoint, use_local=False)
            Generator(default_model_file, placement).close()
            if load == 1:
                stored = sorted(p.name for p in cache.iterdir())
                assert stored and all(re.fullmatch(r"[0-9a-f]{16}", name) for name in stored)
                assert server.wait_for_count("saved to", len(stored), 30)  # the server's log, one per file
                saved = server.output.count("saved to")
        assert server.output.count("saved to") == saved  # the second load sent none of them
        assert sorted(p.name for p in cache.iterdir()) == stored
    finally:
        server.stop()


SURVIVOR = r"""
import json, os, sys, threading
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
from rpc_client import Generator
from slmrun.runtime import rpc
model, endpoints, local_model = sys.argv[2], sys.argv[3], sys.argv[4]
reports, failed = [], threading.Event()
rpc.set_failure_handler(lambda err: (reports.append(err.message), failed.set()))  # returns: the process lives on
gen = Generator(model, rpc.place(model, endpoints))
started = threading.Event()
worker = threading.Thread(target=gen.generate, args=("the capital of", 100000, lambda piece: started.set()),
                          daemon=True)  # an engine's decode thread
worker.start()
started.wait(60)
print("generating", flush=True)
failed.wait(120)
other = Generator(local_model)
print(json.dumps({"reports": reports, "worker_alive": worker.is_alive(),
                  "local": other.generate("the capital of", 4)[0]}), flush=True)
os._exit(0)  # the worker is stuck inside llama.cpp for good: leave without joining it
"""


def test_a_handler_that_returns_keeps_the_process_alive(tiny_deep, tiny_llama_plain, servers, tmp_path):
    # What a long-lived server (slmrun serve) can do: hear of the dead server, drop that
    # model, keep serving others. The evaluating thread never comes back from llama.cpp.
    victim = Server().ready()
    proc = subprocess.Popen([sys.executable, "-c", SURVIVOR, str(Path(__file__).parents[1]), str(tiny_deep),
                             f"{servers[0].endpoint},{victim.endpoint}", str(tiny_llama_plain)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "generating"
        victim.stop(signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        victim.stop(signal.SIGKILL)
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert len(result["reports"]) == 1
    assert result["reports"][0].startswith(f"RPC server {victim.endpoint} went away mid-run")
    assert result["worker_alive"] and result["local"]
