"""`slmrun rpc-server` processes on loopback for the tests and benchmarks/rpc.py."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest


def slmrun_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("slmrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "slmrun"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class Server:
    """One `slmrun rpc-server` child; its output is collected line by line."""

    started: "list[Server]" = []  # every one, so a test's leftovers can be stopped (stop_new)

    def __init__(self, *args: str, port: int | None = None, threads: int = 1, env: dict | None = None,
                 command: list[str] | None = None):
        self.port = port or free_port()
        cmd = command or [*slmrun_cmd(), "rpc-server", "--port", str(self.port), "-t", str(threads), *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
        Server.started.append(self)
        self.lines: list[str] = []
        self._q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._q.put(line)
        self._q.put(None)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            try:
                if self._q.get(timeout=max(0.01, deadline - time.monotonic())) is None:
                    return any(text in line for line in self.lines)
            except queue.Empty:
                return False
        return True

    def wait_for_count(self, text: str, count: int, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while self.output.count(text) < count:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        return True

    def ready(self, timeout: float = 60) -> "Server":
        if not self.wait_for("Listening on", timeout):
            self.stop()
            raise RuntimeError(f"rpc-server did not start:\n{self.output}")
        return self

    def send(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.send(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def stop_new(before: int) -> None:
    """Stop the servers started since ``len(Server.started)`` was ``before`` (a failed test's)."""
    for server in Server.started[before:]:
        if server.proc.poll() is None:
            server.send(signal.SIGCONT)
            server.stop(signal.SIGKILL)


# --- fixtures: import them into a test module (`from rpc_servers import servers, stop_leftover_servers`)

@pytest.fixture(autouse=True)
def stop_leftover_servers():
    """Stop any server a failed test of the module left running."""
    before = len(Server.started)
    yield
    stop_new(before)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two `slmrun rpc-server`s on loopback for the module, sharing one SLMRUN_HOME."""
    home = tmp_path_factory.mktemp("rpc-server-home")
    pair = [Server(env={"SLMRUN_HOME": str(home)}) for _ in range(2)]
    for s in pair:
        s.ready()
    yield pair
    for s in pair:
        s.stop()
