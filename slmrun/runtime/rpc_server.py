"""Serve this machine's device over llama.cpp's RPC protocol (what tools/rpc/rpc-server.cpp does).

``ggml_backend_rpc_start_server`` binds, then serves one client at a time, forever; it
returns only when it could not start. So ``RpcServer.start()`` runs it on a daemon
thread and the caller (the CLI) owns the process: it waits, and exits on a signal (the
kernel closes the listening socket with the process, and the port is free again at
once: llama.cpp binds with SO_REUSEADDR).

Differences from llama.cpp's rpc-server, on purpose:
- the CPU device reports the memory actually available (``memory()``, e.g. MemAvailable
  under the cgroup cap) instead of ggml's "all physical RAM is free", so clients split
  by what this machine can hold;
- bind problems (port taken, address not on this machine) are found before the C call,
  which would only print "Failed to create server socket".
"""

from __future__ import annotations

import ctypes
import errno
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import InvalidArgumentError, RpcBindError

# llama.cpp's own warning (rpc-server.cpp), printed for any host but 127.0.0.1.
UNSAFE_WARNING = """\
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
WARNING: Host ('{host}') is != '127.0.0.1'
         Never expose the RPC server to an open network!
         This is an experimental feature and is not secure!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"""


@dataclass(frozen=True)
class Offer:
    """One device the server offers."""
    name: str
    description: str
    free: int
    total: int


def resolve_bind_host(host: str) -> str:
    """The IPv4 address to bind (llama.cpp's server takes dotted IPv4 only; names are resolved here)."""
    host = host.strip()
    if not host or ":" in host:
        raise InvalidArgumentError(f"cannot serve on {host!r}: llama.cpp's RPC server listens on IPv4 only",
                                   hint="Give an IPv4 address of this machine, e.g. --host 192.168.1.20.")
    try:
        return socket.gethostbyname(host)
    except (socket.gaierror, UnicodeError):
        raise InvalidArgumentError(f"cannot serve on {host!r}: not an IPv4 address or a known host name",
                                   hint="Give an IPv4 address of this machine, e.g. --host 192.168.1.20.") from None


def check_bindable(ip: str, port: int) -> None:
    """Raise RpcBindError if ip:port cannot be listened on (taken, or not an address here)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as llama.cpp will
    try:
        s.bind((ip, port))
        s.listen(1)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise RpcBindError(f"port {port} on {ip} is already in use") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise RpcBindError(f"{ip} is not an address of this machine",
                               hint="Give one of this machine's own addresses (`ip addr`), or 0.0.0.0 for all.") from None
        if exc.errno == errno.EACCES:
            raise RpcBindError(f"not allowed to listen on port {port} (ports below 1024 need privileges)",
                               hint="Choose a port of 1024 or more, e.g. --port 50052.") from None
        raise RpcBindError(f"cannot listen on {ip}:{port}: {exc.strerror or exc}") from None
    finally:
        s.close()


def _is_listening(ip: str, port: int) -> bool:
    # Binding fails once another socket listens there (SO_REUSEADDR or not); nothing is sent.
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((ip, port))
        return False
    except OSError as exc:
        return exc.errno == errno.EADDRINUSE
    finally:
        s.close()


def _line_buffer_c_stdout() -> None:
    """llama.cpp's server prints with printf: line-buffer C's stdout so its lines arrive in
    order with ours when stdout is a pipe or a file."""
    try:
        libc = ctypes.CDLL(None)
        stdout = ctypes.c_void_p.in_dll(libc, "stdout")
        libc.setvbuf.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t]
        libc.setvbuf(stdout, None, 1, 0)  # _IOLBF
    except (OSError, ValueError, AttributeError):
        pass  # not glibc-like: only the order of the log lines suffers


class RpcServer:
    """This machine's devices, ready to serve on ip:port."""

    def __init__(self, ip: str, port: int, *, threads: int, cache_dir: Path | None = None,
                 memory: Callable[[], tuple[int, int]] | None = None):
        from .ggml_backend import DEVICE_TYPE_CPU, MemoryReportingDevice, START_SERVER, ggml
        from .rpc import require_rpc

        require_rpc()
        if threads < 1:
            raise InvalidArgumentError(f"threads must be at least 1, not {threads}")
        self.ip, self.port, self.threads, self.cache_dir = ip, port, threads, cache_dir
        g = ggml()
        self._start = g.rpc_proc("ggml_backend_rpc_start_server", START_SERVER)
        self._wrappers = []
        handles = []
        for dev in g.server_devices():
            if memory is not None and g.dev_type(dev) == DEVICE_TYPE_CPU:
                wrapper = MemoryReportingDevice(dev, memory)
                self._wrappers.append(wrapper)
                handles.append(wrapper.handle)
            else:
                handles.append(dev)
        self._handles = (ctypes.c_void_p * len(handles))(*handles)
        self.offers = []
        for h in handles:
            free, total = ctypes.c_size_t(), ctypes.c_size_t()
            g.dev_memory(h, ctypes.byref(free), ctypes.byref(total))
            self.offers.append(Offer((g.dev_name(h) or b"").decode(), (g.dev_description(h) or b"").decode(),
                                     free.value, total.value))
        self.thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.ip}:{self.port}"

    def start(self, ready_timeout: float = 10.0) -> None:
        """Serve on a daemon thread; return once the port listens (RpcBindError if it never does)."""
        check_bindable(self.ip, self.port)
        if self.cache_dir is not None:
            Path(self.cache_dir).mkdir(parents=True, exist_ok=True)
        _line_buffer_c_stdout()
        cache = str(self.cache_dir).encode() if self.cache_dir is not None else None
        args = (self.endpoint.encode(), cache, self.threads, len(self._handles), self._handles)
        self.thread = threading.Thread(target=self._start, args=args, name="slmrun-rpc-server", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + ready_timeout
        while not _is_listening(self.ip, self.port):
            if not self.thread.is_alive():
                raise RpcBindError(f"llama.cpp's RPC server could not start on {self.endpoint} "
                                   "(its own message is above)")
            if time.monotonic() > deadline:
                raise RpcBindError(f"llama.cpp's RPC server did not start listening on {self.endpoint} "
                                   f"within {ready_timeout:g} s")
            time.sleep(0.02)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops (it only does when it fails); False on timeout."""
        assert self.thread is not None
        self.thread.join(timeout)
        return not self.thread.is_alive()
