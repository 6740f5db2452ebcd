"""llama.cpp's RPC backend: endpoints, the layer split, and `slmrun rpc-server` (real processes)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading

import pytest

from rpc_servers import Server, free_port, port_is_free, slmrun_cmd, stop_leftover_servers  # noqa: F401  (fixture)
from slmrun.errors import InvalidArgumentError, RpcServerError
from slmrun.runtime import rpc


# ---------------------------------------------------------------- endpoints

def test_parse_endpoints_accepts_lists_names_and_spaces():
    assert rpc.parse_endpoints("127.0.0.1:50052, pi-2.local:50053") == [
        rpc.Endpoint("127.0.0.1", 50052), rpc.Endpoint("pi-2.local", 50053)]
    assert rpc.parse_endpoints(["10.0.0.2:1", "10.0.0.3:65535,10.0.0.4:2"]) == [
        rpc.Endpoint("10.0.0.2", 1), rpc.Endpoint("10.0.0.3", 65535), rpc.Endpoint("10.0.0.4", 2)]
    assert str(rpc.Endpoint("h", 5)) == "h:5"


@pytest.mark.parametrize("spec, message", [
    ("", "no RPC servers given"),
    (" , ", "no RPC servers given"),
    ("127.0.0.1:50052,,127.0.0.1:50053", "empty entry"),
    ("127.0.0.1", "'127.0.0.1' has no port"),
    (":50052", "':50052' has no host"),
    ("127.0.0.1:abc", "port 'abc' is not a number (in '127.0.0.1:abc')"),
    ("127.0.0.1:0", "port 0 is out of range 1-65535"),
    ("127.0.0.1:70000", "port 70000 is out of range 1-65535"),
    ("::1:50052", "IPv4 only"),
    ("[::1]:50052", "IPv4 only"),
    ("300.1.1.1:50052", "'300.1.1.1' is not a valid IPv4 address or host name"),
    ("bad_host!:50052", "'bad_host!' is not a valid IPv4 address or host name"),
    ("127.0.0.1:50052,127.0.0.1:50052", "RPC server 127.0.0.1:50052 is named twice"),
    (",".join(f"10.0.0.1:{p}" for p in range(1, 18)), "17 RPC servers given; llama.cpp takes at most 16"),
])
def test_parse_endpoints_refuses_bad_input_clearly(spec, message):
    with pytest.raises(InvalidArgumentError) as e:
        rpc.parse_endpoints(spec)
    assert message in e.value.message
    assert "\n" not in e.value.message and e.value.hint


def test_an_unresolvable_host_is_named():
    with pytest.raises(RpcServerError, match=r"RPC server nosuch\.invalid:50052: cannot resolve host"):
        rpc.add_servers(rpc.parse_endpoints("nosuch.invalid:50052"))


def test_the_same_server_under_two_names_is_refused():
    with pytest.raises(InvalidArgumentError, match="are the same server"):
        rpc.add_servers(rpc.parse_endpoints("localhost:50999,127.0.0.1:50999"))


# ---------------------------------------------------------------- the split (pure)

@pytest.mark.parametrize("n_layer, local, remote, use_local, ngl, split", [
    (30, 8, [8, 8], True, 21, [0.5, 0.5]),  # three equal devices: 10 + 11 + 10 of 31 units
    (30, 8, [8, 8], False, 31, [0.5, 0.5]),  # -ngl 99 over two servers
    (22, 2, [6], True, 17, [1.0]),  # a 2 GB client beside a 6 GB server
    (30, 1, [3, 0], True, 23, [1.0, 0.0]),  # a server with no memory gets nothing
    (30, 4, [0, 0], True, 21, [0.5, 0.5]),  # none reports memory: each counts as much as the local CPU
    (2, 0, [1, 1], True, 3, [0.5, 0.5]),  # nothing free locally: all offloaded
])
def test_split_is_proportional_to_free_memory(n_layer, local, remote, use_local, ngl, split):
    gib = 1 << 30
    got_ngl, got_split = rpc.split_layers(n_layer, local * gib, [r * gib for r in remote], use_local=use_local)
    assert (got_ngl, got_split) == (ngl, split)


def test_assign_layers_follows_llama_cpp_rule():
    # 30 layers + output; 21 offloaded over two equal servers: llama.cpp's own log for this
    # split (SmolLM2-135M) puts layers 0-9 on the CPU, 10-20 on RPC0, 21-30 on RPC1.
    assert rpc.assign_layers(30, 21, [0.5, 0.5]) == [-1] * 10 + [0] * 11 + [1] * 10
    assert rpc.assign_layers(30, 31, [1.0]) == [0] * 31
    assert rpc.assign_layers(30, 0, [1.0]) == [-1] * 31
    # thirds: float32 rounding decides the boundaries, as in llama.cpp
    assert rpc.assign_layers(5, 6, [1 / 3, 1 / 3, 1 / 3]) == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("n_layer, ngl, split", [(0, 1, [1.0]), (4, 2, [])])
def test_split_needs_layers_and_devices(n_layer, ngl, split):
    with pytest.raises(InvalidArgumentError):
        rpc.split_layers(n_layer, 1, split)


# ---------------------------------------------------------------- the build

def test_this_build_has_the_rpc_backend():
    assert rpc.rpc_available()
    rpc.require_rpc()


def test_protocol_version_comes_from_the_installed_header():
    from slmrun.runtime.ggml_backend import _PROTO_FALLBACK, ggml
    header = ggml().lib_dir.parent.parent / "include" / "ggml-rpc.h"
    text = header.read_text()
    major = int(re.search(r"RPC_PROTO_MAJOR_VERSION\s+(\d+)", text).group(1))
    assert ggml().proto_version()[0] == major == _PROTO_FALLBACK[0]


def test_ggml_is_the_instance_libllama_uses():
    # The wheel ships lib/libggml-base.so and .so.0 as two files: opening the wrong one
    # would give a second abort hook that llama.cpp never calls.
    from slmrun.runtime.ggml_backend import ggml
    ggml()
    maps = open("/proc/self/maps").read()
    loaded = {line.split()[-1].rsplit("/", 1)[-1] for line in maps.splitlines() if "libggml-base" in line}
    assert loaded == {"libggml-base.so.0"}


# ---------------------------------------------------------------- slmrun rpc-server

def _run(*args, timeout=60):
    return subprocess.run([*slmrun_cmd(), "rpc-server", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_rpc_server_offers_memory_and_threads_and_stops_on_sigterm(isolated_home):
    server = Server(threads=1).ready()
    out = server.output
    assert f"endpoint : 127.0.0.1:{server.port}" in out
    assert re.search(r"device   : CPU \(.*\): [\d.]+ [GMK]i?B available of [\d.]+ [GMK]i?B", out)
    assert "threads  : 1" in out and "cache    : off" in out
    assert "Starting RPC server v" in out  # llama.cpp's own banner follows ours
    assert not port_is_free(server.port)
    assert server.stop(signal.SIGTERM, timeout=30) == 0
    assert "rpc-server stopped." in server.output
    assert port_is_free(server.port)


def test_rpc_server_stops_on_ctrl_c_with_130(isolated_home):
    server = Server().ready()
    assert server.stop(signal.SIGINT, timeout=30) == 130
    assert port_is_free(server.port)


def test_rpc_server_stops_while_a_client_is_connected(isolated_home):
    server = Server().ready()
    from slmrun.runtime import rpc_wire
    sock = socket.create_connection(("127.0.0.1", server.port))  # the server is now serving it
    assert server.wait_for("Accepted client connection", 30)
    assert server.stop(signal.SIGTERM, timeout=30) == 0
    assert sock.recv(1) == b""  # the kernel closed the server's end with the process
    sock.close()
    assert not rpc_wire.reachable("127.0.0.1", server.port, 1.0)


def test_rpc_server_reports_available_memory_not_all_ram(isolated_home):
    # ggml's CPU device says all physical RAM is free; slmrun's server answers with what is available.
    from slmrun import hardware
    server = Server().ready()
    try:
        _, info = rpc.query_server(rpc.Endpoint("127.0.0.1", server.port), timeout=10)
        (free, total), = info.memory
        assert 0 < free < total <= hardware.detect().ram_total
    finally:
        server.stop()


def test_rpc_server_cache_lives_in_the_slmrun_home(isolated_home):
    server = Server("--cache").ready()
    try:
        cache = isolated_home / "rpc-cache"
        assert f"cache    : {cache}" in server.output
        assert f"local cache    : {cache}" in server.output  # what llama.cpp was given
        assert cache.is_dir()
    finally:
        server.stop()


def test_rpc_server_refuses_a_port_in_use(isolated_home):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = _run("--port", str(port))
    assert r.returncode == 19
    assert _error_line(r.stderr) == f"Error: port {port} on 127.0.0.1 is already in use"
    assert "Hint: Choose another port" in r.stderr
    assert "Starting RPC server" not in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "Error: port 70000 is out of range 1-65535"),
    (["--port", "http"], "Error: port 'http' is not a number"),
    (["--host", "nosuch.invalid"], "Error: cannot serve on 'nosuch.invalid': not an IPv4 address or a known host name"),
    (["--host", "::1"], "Error: cannot serve on '::1': llama.cpp's RPC server listens on IPv4 only"),
    (["--threads", "0"], "Error: --threads must be at least 1, not 0"),
])
def test_rpc_server_bad_input(args, message, isolated_home):
    r = _run(*args, "--port", str(free_port())) if "--port" not in args else _run(*args)
    assert r.returncode == 2, r.stderr
    assert _error_line(r.stderr) == message


def test_rpc_server_beyond_loopback_needs_the_acknowledgement(isolated_home):
    r = _run("--host", "0.0.0.0", "--port", str(free_port()))
    assert r.returncode == 2
    assert "WARNING: Host ('0.0.0.0') is != '127.0.0.1'" in r.stderr
    assert "Never expose the RPC server to an open network!" in r.stderr
    assert _error_line(r.stderr).startswith(
        "Error: refusing to listen on 0.0.0.0 (0.0.0.0) without --i-understand-this-is-unauthenticated")


def test_rpc_server_beyond_loopback_with_the_acknowledgement_warns_and_serves(isolated_home):
    server = Server("--host", "0.0.0.0", "--i-understand-this-is-unauthenticated").ready()
    try:
        assert "Never expose the RPC server to an open network!" in server.output
        assert f"clients use `--rpc THIS-MACHINE'S-ADDRESS:{server.port}`" in server.output
        _, info = rpc.query_server(rpc.Endpoint("127.0.0.1", server.port), timeout=10)
        assert info.memory
    finally:
        assert server.stop() == 0


def test_rpc_server_refuses_an_address_not_on_this_machine(isolated_home):
    r = _run("--host", "192.0.2.1", "--i-understand-this-is-unauthenticated", "--port", str(free_port()))
    assert r.returncode == 19
    assert _error_line(r.stderr) == "Error: 192.0.2.1 is not an address of this machine"


# ---------------------------------------------------------------- servers that are not there

def test_a_server_that_is_not_there_fails_fast_with_its_name():
    port = free_port()
    with pytest.raises(RpcServerError) as e:
        rpc.add_servers(rpc.parse_endpoints(f"127.0.0.1:{port}"), timeout=2)
    assert e.value.message == f"RPC server 127.0.0.1:{port} refused the connection: nothing listens there"
    assert "slmrun rpc-server" in e.value.hint


def _listener(handler):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv


def _refused_by(handler, timeout: float) -> tuple[int, RpcServerError]:
    """(port, error) of add_servers against a fake server whose connections go to ``handler``."""
    srv = _listener(handler)
    port = srv.getsockname()[1]
    try:
        with pytest.raises(RpcServerError) as e:
            rpc.add_servers(rpc.parse_endpoints(f"127.0.0.1:{port}"), timeout=timeout)
        return port, e.value
    finally:
        srv.close()


def test_a_server_that_never_answers_times_out_with_its_name():
    held = []
    port, err = _refused_by(held.append, 1)  # accepts, never answers: what a busy rpc-server looks like
    assert err.message.startswith(f"RPC server 127.0.0.1:{port} accepted but did not answer the "
                                  "handshake within 1 s: it is serving another client")


def test_something_else_on_the_port_is_not_taken_for_a_server():
    def http(conn):
        conn.recv(100)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        conn.close()
    port, err = _refused_by(http, 2)
    assert re.search(rf"RPC server 127.0.0.1:{port} answered with \d+ bytes where 28 "
                     r"were expected \(not an RPC server\?\)", str(err))


def test_a_server_of_another_protocol_version_is_refused():
    import struct

    def old_server(conn):
        conn.recv(1 + 8 + 24)
        conn.sendall(struct.pack("<Q", 28) + bytes([3, 0, 0, 0]) + bytes(24))
        conn.close()
    port, err = _refused_by(old_server, 2)
    assert re.search(rf"RPC server 127.0.0.1:{port} speaks RPC protocol 3.0.0, "
                     r"this llama.cpp speaks \d+\.\d+\.\d+", str(err))


# ---------------------------------------------------------------- a build without the RPC backend

@pytest.fixture
def without_rpc_backend(monkeypatch):
    """What llama-cpp-python built without -DGGML_RPC=ON looks like to slmrun:
    ggml_backend_reg_by_name("RPC") returns NULL."""
    from slmrun.runtime.ggml_backend import ggml
    monkeypatch.setattr(ggml(), "rpc_reg", None)


def test_without_the_rpc_backend_rpc_says_what_to_reinstall(without_rpc_backend):
    from slmrun.errors import RpcUnavailableError
    assert not rpc.rpc_available()
    with pytest.raises(RpcUnavailableError) as e:
        rpc.add_servers(rpc.parse_endpoints("127.0.0.1:50052"))
    assert e.value.message == ("this llama-cpp-python was built without llama.cpp's RPC backend "
                               "(needed for --rpc and rpc-server)")
    assert 'CMAKE_ARGS="-DGGML_RPC=ON" pip install --force-reinstall --no-cache-dir llama-cpp-python' in e.value.hint


def test_without_the_rpc_backend_rpc_server_exits_17(without_rpc_backend, capsys):
    import sys as _sys
    from slmrun.cli import main
    argv = _sys.argv
    _sys.argv = ["slmrun", "rpc-server", "--port", str(free_port())]
    try:
        with pytest.raises(SystemExit) as e:
            main()
    finally:
        _sys.argv = argv
    assert e.value.code == 17
    err = capsys.readouterr().err
    assert _error_line(err) == ("Error: this llama-cpp-python was built without llama.cpp's RPC backend "
                                "(needed for --rpc and rpc-server)")
    assert "Hint: Reinstall it with the RPC backend: CMAKE_ARGS=" in err

