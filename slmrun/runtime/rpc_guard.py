"""What happens when an RPC server fails after llama.cpp has connected to it.

llama.cpp cannot recover: when a server's socket breaks (the server was killed, the
machine rebooted) its dispatcher thread calls GGML_ABORT ("Remote RPC server crashed or
returned malformed response", ggml-rpc.cpp), which prints a backtrace (attaching gdb
when it is installed) and calls abort(); the process dies with SIGABRT. When a server
stops answering without closing (frozen, or gone with no reset reaching us) llama.cpp
waits forever. Python cannot catch either: there is no exception to unwind through C++.

So slmrun:
- hooks ggml's abort callback: an abort raised inside ggml-rpc becomes an
  ``RpcServerError`` naming the server(s) no longer reachable, handed to the failure
  handler (default: the one-line error on stderr and exit status 1, the way the CLI
  reports errors; the CLI installs its own to pick the exit code). Any other ggml abort
  is printed and left to abort as before.
- offers a watchdog (``Watchdog``) for each evaluation step: past its deadline the
  handler gets an error naming the servers the step was waiting on.

A handler that returns instead of exiting keeps the process alive only when the failure
came from one of llama.cpp's own threads (the RPC dispatcher, where a dead server is
noticed while evaluating) or from the watchdog: such a llama.cpp thread is then parked
forever, and the thread that was evaluating never returns from llama.cpp, so that model
is lost (its memory too; freeing it would talk to the dead server). A failure raised in
a thread that called into llama.cpp (a connect during load) ends in ggml's abort() after
the handler returns.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Callable

from ..errors import RpcServerError

Handler = Callable[[RpcServerError], None]


def _print_and_exit(err: RpcServerError) -> None:
    text = f"Error: {err.message}\n" + (f"Hint: {err.hint}\n" if err.hint else "")
    os.write(2, text.encode("utf-8", "replace"))
    os._exit(1)


def _to_owners(err: RpcServerError) -> None:
    """The default: the models that depend on the failed servers end their requests with
    ``err`` and refuse new ones (their ``on_failure``); the process lives on. With no such
    model (a failure while loading, before one exists) print and exit."""
    named = set(getattr(err, "servers", ()) or ())
    owners = [o for o in list(_endpoints_in_use) if getattr(o, "on_failure", None) is not None
              and (not named or named & {label for label, _, _ in o.endpoints})]
    if not owners:
        _print_and_exit(err)
    for owner in owners:
        owner.on_failure(err)


_handler: Handler = _to_owners
_state = threading.Lock()
_installed = None  # the ctypes callback, kept alive
_endpoints_in_use: "weakref.WeakSet" = weakref.WeakSet()  # objects with .endpoints: [(label, ip, port)]
_reporting = threading.Lock()  # one report at a time when several threads fail at once


def set_failure_handler(handler: Handler | None) -> Handler:
    """Who hears of a failed server (None: the default, which fails the requests of the models
    on it and keeps the process, or prints and exits 1 when no model is there to tell);
    returns the previous one."""
    global _handler
    previous, _handler = _handler, handler or _to_owners
    return previous


def track(owner) -> None:
    """Count ``owner.endpoints`` among the servers this process depends on (weakly)."""
    _endpoints_in_use.add(owner)


def _in_use() -> list[tuple[str, str, int]]:
    seen, out = set(), []
    for owner in list(_endpoints_in_use):
        for ep in owner.endpoints:
            if ep not in seen:
                seen.add(ep)
                out.append(ep)
    return out


def fail(err: RpcServerError) -> None:
    """Hand ``err`` to the handler; if it returns, park the calling thread when it is one of
    llama.cpp's (returning into ggml_abort would abort the process)."""
    with _reporting:
        try:
            _handler(err)
        except BaseException:  # noqa: BLE001 — an exception cannot cross into C
            pass
    me = threading.current_thread()
    # A C++ thread (ggml's dispatcher), or an engine thread inside llama_decode: that model is
    # lost either way (its requests have been ended), and returning would abort the process.
    if isinstance(me, threading._DummyThread) or me.name.startswith("slmrun-engine"):
        _park()


def _park() -> None:
    while True:
        time.sleep(3600)


def lost_error(detail: str, *, endpoints: list[tuple[str, str, int]] | None = None,
               probe_timeout: float = 1.0) -> RpcServerError:
    """The error for a failure seen on the way back from llama.cpp, naming the servers
    that no longer accept connections (a live one's kernel accepts even while it is busy)."""
    from .rpc_wire import peer_closed, reachable

    endpoints = _in_use() if endpoints is None else endpoints
    # First: our connection to it was closed from its end (a killed server's kernel closes
    # its sockets; ours waits in CLOSE_WAIT). Looked at a few times: the close may still
    # be on its way when llama.cpp notices the failure.
    dead: list[str] = []
    for _ in range(4):
        dead = [label for label, ip, port in endpoints if peer_closed(ip, port)]
        if dead:
            break
        time.sleep(0.25)
    # Then one connection attempt each (never more: each waits in a busy server's accept
    # queue, which holds one, and a full queue would make a live server look dead).
    if not dead:
        dead = [label for label, ip, port in endpoints if not reachable(ip, port, probe_timeout)]
    if dead:
        who = "RPC server " + ", ".join(dead) if len(dead) == 1 else "RPC servers " + ", ".join(dead)
        return _naming(RpcServerError(f"{who} went away mid-run ({detail}); llama.cpp cannot go on without it",
                                      hint="Restart it (`slmrun rpc-server` on that machine), then run again."),
                       dead)
    names = ", ".join(label for label, _, _ in endpoints) or "unknown"
    return RpcServerError(f"an RPC server failed mid-run ({detail}); servers in use: {names}",
                          hint="Check each server's own output, restart the one that failed, then run again.")


def _naming(err: RpcServerError, servers: list[str]) -> RpcServerError:
    err.servers = list(servers)  # which owners it concerns (_to_owners)
    return err


def _on_abort(message: bytes) -> None:
    text = (message or b"").decode("utf-8", "replace").strip()
    if "ggml-rpc" not in text:
        os.write(2, (text + "\n").encode())  # not ours: say it as ggml would, then ggml aborts
        return
    detail = text.split(": ", 1)[-1].strip()  # drop "path/ggml-rpc.cpp:547: "
    fail(lost_error(detail))


def install() -> None:
    """Hook ggml's abort callback (once per process)."""
    global _installed
    with _state:
        if _installed is not None:
            return
        from .ggml_backend import ABORT_CALLBACK, ggml
        _installed = ABORT_CALLBACK(_on_abort)
        ggml().set_abort_callback(_installed)


class Watchdog:
    """A deadline for code that waits on RPC servers: ``with dog: llama_decode(...)``.

    One thread per watchdog, started on first use; ``kick()`` moves the deadline on (call it
    from a load progress callback). Past the deadline the failure handler gets an error
    naming ``endpoints``."""

    def __init__(self, endpoints: list[tuple[str, str, int]], timeout: float, what: str = "an evaluation step"):
        self.endpoints, self.timeout, self.what = endpoints, timeout, what
        self._deadline: float | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def __enter__(self):
        with self._cond:
            self._deadline = time.monotonic() + self.timeout
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="slmrun-rpc-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
        return self

    def kick(self) -> None:
        with self._cond:
            if self._deadline is not None:
                self._deadline = time.monotonic() + self.timeout

    def __exit__(self, *exc) -> None:
        with self._cond:
            self._deadline = None
            self._cond.notify()

    def _error(self) -> RpcServerError:
        from .rpc_wire import awaiting_reply, own_connections

        err = lost_error(f"no answer within {self.timeout:g} s during {self.what}", endpoints=self.endpoints)
        if not err.message.startswith("an RPC server failed"):
            return err  # one no longer accepts connections: gone
        # All still accept (their kernels do even when the process is frozen): name the
        # ones whose connection has a request out and no reply since.
        stuck = [label for label, ip, port in self.endpoints
                 if any(awaiting_reply(fd) for fd in own_connections(ip, port))] or \
            [label for label, _, _ in self.endpoints]
        who = f"RPC server {stuck[0]}" if len(stuck) == 1 else "RPC servers " + ", ".join(stuck)
        return _naming(RpcServerError(f"{who} gave no answer within {self.timeout:g} s during {self.what}: "
                                      "stuck, or far too slow",
                                      hint="Check that server; raise SLMRUN_RPC_TIMEOUT if a slow device "
                                           "needs longer."), stuck)

    def _watch(self) -> None:
        while True:
            with self._cond:
                while self._deadline is None:
                    self._cond.wait()
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
            fail(self._error())
            with self._cond:
                self._deadline = None
