"""`--rpc` end to end: ``slmrun.load(rpc=...)``, the CLI's run / plan / hw / bench, and the
planner's split across devices, on `slmrun rpc-server` processes over loopback.

The runtime layer (runtime.rpc, its failure guard) is tested in test_rpc*.py with a
low-level client; here the same servers serve the engine behind the public API.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pexpect
import pytest

import slmrun
from rpc_servers import Server, servers, slmrun_cmd, stop_leftover_servers  # noqa: F401  (fixtures)
from slmrun import planner
from slmrun.errors import InsufficientMemoryError, RpcServerError
from slmrun.planner import RemoteDevice
from tinymodels import write_tiny_gguf

GiB = 1 << 30


@pytest.fixture(scope="module")
def tiny6(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("rpc-load") / "tiny-6.gguf", n_layer=6, chat_template=None, seed=11)


def _eps(servers) -> str:
    return ",".join(s.endpoint for s in servers)


PROMPT = "the capital of"


def _local_text(path: Path, n: int = 24) -> str:
    with slmrun.load(path, n_ctx=256, n_threads=1, n_parallel=1) as m:
        return m.complete(PROMPT, max_tokens=n, temperature=0, ignore_eos=True).text


# --- the library ------------------------------------------------------------------------------

def test_load_with_rpc_splits_by_the_planner_and_gives_the_local_text(tiny6, servers):
    local = _local_text(tiny6)
    with slmrun.load(tiny6, n_ctx=256, n_threads=1, rpc=_eps(servers)) as m:
        assert m.placement is not None and m.n_parallel == 1
        rows = m.placement.summary()
        assert [r[0] for r in rows] == ["local CPU", *(s.endpoint for s in servers)]
        assert sum(n for _, n, _ in rows) == 7  # six blocks and the output layer
        assert all(n > 0 for _, n, _ in rows[1:])  # both servers hold layers
        # What llama.cpp got is what the planner's split says for these budgets.
        assert m.placement.layers == planner.assign_layers(6, m.placement.n_gpu_layers, m.placement.tensor_split)
        texts = [m.complete(PROMPT, max_tokens=24, temperature=0, ignore_eos=True).text for _ in range(2)]
        streamed = "".join(m.complete(PROMPT, max_tokens=24, temperature=0, ignore_eos=True))
    assert texts == [local, local] and streamed == local


def test_a_bad_rpc_list_is_refused_before_anything_connects(tiny6):
    with pytest.raises(slmrun.InvalidArgumentError, match="has no port"):
        slmrun.load(tiny6, rpc="127.0.0.1")


def test_an_absent_server_fails_the_load_with_its_name(tiny6):
    from rpc_servers import free_port
    port = free_port()
    with pytest.raises(RpcServerError, match=f"127.0.0.1:{port} refused the connection"):
        slmrun.load(tiny6, n_ctx=256, rpc=f"127.0.0.1:{port}")


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    import slmrun
    from slmrun.errors import RpcServerError
    path, eps = sys.argv[1], sys.argv[2]
    m = slmrun.load(path, n_ctx=2048, n_threads=1, rpc=eps)
    r = m.complete("once upon a time", max_tokens=1900, temperature=0, ignore_eos=True)
    it = iter(r)
    next(it)
    print("STREAMING", flush=True)
    sys.stdin.readline()  # the test kills a server, then says go on
    try:
        for _ in it:
            time.sleep(0.001)
        print("NO ERROR", r.finish_reason)
    except RpcServerError as exc:
        print("ERROR", exc.message)
    try:
        m.complete("again", max_tokens=4).text
        print("SECOND OK")
    except RpcServerError as exc:
        print("SECOND ERROR", exc.message)
    m.close()  # returns: the lost model is not freed (freeing would talk to the dead server)
    print("CLOSED", flush=True)
""")


def test_a_server_killed_mid_stream_ends_the_models_requests_and_the_process_lives(tiny6, tmp_path):
    victim, other = Server().ready(), Server().ready()
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tiny6), f"{other.endpoint},{victim.endpoint}"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**__import__("os").environ, "SLMRUN_DEBUG": "0"})
    try:
        assert proc.stdout.readline().strip() == "STREAMING", proc.stderr.read()
        victim.stop(signal.SIGKILL)
        out, err = proc.communicate("go\n", timeout=90)  # no hang
    finally:
        proc.kill()
        other.stop()
    assert proc.returncode == 0, err  # not SIGABRT, llama.cpp's own end
    lines = out.splitlines()
    assert lines[0].startswith(f"ERROR RPC server {victim.endpoint} went away mid-run"), out + err
    assert lines[1].startswith(f"SECOND ERROR RPC server {victim.endpoint} went away"), out
    assert lines[2] == "CLOSED"


# --- the CLI ----------------------------------------------------------------------------------

def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*slmrun_cmd(), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_cli_run_with_rpc_prints_the_local_text_and_the_split(tiny6, servers):
    local = _cli("run", "--raw", "-m", str(tiny6), "--ctx", "256", "-t", "0", "-n", "16", PROMPT)
    split = _cli("run", "--raw", "-m", str(tiny6), "--ctx", "256", "-t", "0", "-n", "16", "--rpc", _eps(servers), PROMPT)
    assert local.returncode == 0 and split.returncode == 0, split.stderr
    assert split.stdout == local.stdout and split.stdout.strip()
    assert "Split: local CPU" in split.stderr and servers[1].endpoint in split.stderr


def test_cli_run_with_a_missing_server_is_one_line_and_its_exit_code(tiny6):
    from rpc_servers import free_port
    port = free_port()
    p = _cli("run", "--raw", "-m", str(tiny6), "--rpc", f"127.0.0.1:{port}", "hi")
    assert p.returncode == 18, p.stderr
    assert p.stderr.splitlines()[0] == f"Error: RPC server 127.0.0.1:{port} refused the connection: nothing listens there"


def test_cli_plan_and_hw_ask_the_servers(tiny6, servers):
    p = _cli("plan", str(tiny6), "--rpc", _eps(servers), "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert [s["device"] for s in d["split"]] == ["local CPU", *(s.endpoint for s in servers)]
    assert sum(s["blocks"] for s in d["split"]) == 6 and sum(s["output"] for s in d["split"]) == 1
    assert all(s["fits"] for s in d["split"]) and d["n_parallel"] == 1
    text = _cli("plan", str(tiny6), "--rpc", _eps(servers))
    assert "DEVICE" in text.stdout and "a token passes through the devices one after another" in text.stdout
    hw = _cli("hw", "--rpc", _eps(servers), "--json")
    assert hw.returncode == 0, hw.stderr
    devices = json.loads(hw.stdout)["rpc_devices"]
    assert [x["name"] for x in devices] == [s.endpoint for s in servers]
    assert all(0 < x["budget_bytes"] < x["free_bytes"] <= x["total_bytes"] for x in devices)


def test_cli_bench_with_rpc_measures_the_split(tiny6, servers):
    p = _cli("bench", "-m", str(tiny6), "--rpc", _eps(servers), "-p", "16", "-n", "8", "-r", "1", "--ctx", "256",
             "--json", "-q", timeout=300)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["header"]["settings"]["rpc"] == _eps(servers)
    tg = next(r for r in d["results"] if r["test"] == "tg8")
    assert tg["mean_tps"] > 0


# --- the planner across devices (budgets simulated) -------------------------------------------

def _phi2():
    from slmrun.registry import load_registry
    return load_registry().get("phi-2")


def test_a_model_too_big_for_any_one_device_fits_their_pool():
    from slmrun.hardware import profile
    pi = profile("rpi4-2gb")
    with pytest.raises(InsufficientMemoryError):  # no one board holds it (each is this profile)
        planner.plan(_phi2(), pi, min_speed=0)
    boards = [RemoteDevice(f"10.0.0.{i}:50052", free_bytes=pi.memory_available, total_bytes=pi.ram_total)
              for i in (2, 3)]
    p = planner.plan(_phi2(), pi, min_speed=0, devices=boards)
    assert [s.device for s in p.split] == ["local CPU", *(b.name for b in boards)]
    assert all(s.fits for s in p.split)
    assert sum(s.blocks for s in p.split) == 32 and sum(s.output for s in p.split) == 1
    assert p.budget_bytes == planner.budget_bytes(pi) + sum(b.budget for b in boards)
    # The layers go as llama.cpp will put them.
    where = planner.assign_layers(32, p.n_gpu_layers, p.tensor_split)
    assert [where[:32].count(i) for i in (-1, 0, 1)] == [s.blocks for s in p.split]
    # Slower than one machine holding it all: the devices take turns, and the network costs.
    alone = planner.plan(_phi2(), profile("rpi4-8gb"), min_speed=0, quant=p.quant)
    assert p.estimated_tps < alone.estimated_tps
    assert any("bounded by the slowest device and by the network" in r for r in p.reasons)


def test_a_pool_too_small_is_refused_with_each_devices_share():
    from slmrun.hardware import profile
    with pytest.raises(InsufficientMemoryError, match=r"does not fit even split .* 10\.0\.0\.2:50052: .*\(over\)"):
        planner.plan(_phi2(), profile("rpi4-2gb"), min_speed=0, devices=[RemoteDevice("10.0.0.2:50052", 300 << 20)])


def test_more_memory_on_a_device_means_more_of_the_layers():
    from slmrun.hardware import profile
    small, big = RemoteDevice("a:1", 2 * GiB), RemoteDevice("b:1", 6 * GiB)
    p = planner.plan(_phi2(), profile("rpi4-4gb"), min_speed=0, devices=[small, big])
    shares = {s.device: s for s in p.split}
    assert shares["b:1"].blocks > shares["a:1"].blocks
    assert all(s.need_bytes <= s.budget_bytes for s in p.split)


# --- the server -------------------------------------------------------------------------------

def test_serve_with_rpc_splits_its_models_and_reloads_one_whose_server_died(tiny6, tmp_path):
    from serverutil import Server as Serve, store_model
    victim = Server().ready()
    home = tmp_path / "home"
    store_model(home, tiny6, "tiny6")
    body = {"model": "tiny6", "prompt": PROMPT, "raw": True, "stream": False, "options": {"temperature": 0, "num_predict": 16}}
    with Serve(home, "--rpc", victim.endpoint, "--ctx", "256", "--threads", "1") as s:
        status, reply = s.json("POST", "/api/generate", body)
        assert status == 200, reply
        local = _local_text(tiny6, 16)
        assert reply["response"] == local
        victim.stop(signal.SIGKILL)
        status, reply = s.json("POST", "/api/generate", {**body, "options": {"num_predict": 8}})
        assert status == 502 and "went away mid-run" in json.dumps(reply), reply  # the server lives on
        status, reply = s.json("POST", "/api/generate", body)  # loads again: the server is not there
        assert status == 502 and f"{victim.endpoint} refused the connection" in json.dumps(reply), reply
        assert s.get("/api/version")[0] == 200


def test_chat_keeps_the_context_of_a_split_model_and_says_how_to_change_it(tiny6, servers, tmp_path):
    from test_chat import _spawn
    child = _spawn(tiny6, tmp_path, "--rpc", _eps(servers), "--format", "chatml")
    try:
        child.sendline("/set ctx 512")
        child.expect("A model split over RPC servers keeps its context: restart `slmrun chat` with --ctx.")
        child.expect(">>> ")  # still chatting, with the same model
        child.sendcontrol("d")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


def test_a_split_that_does_not_match_the_devices_is_refused(tiny6, servers):
    from slmrun.runtime import rpc
    with pytest.raises(slmrun.InvalidArgumentError, match="the split has 1 shares for 2 RPC devices"):
        rpc.place(tiny6, _eps(servers), split=(3, [1.0]))
