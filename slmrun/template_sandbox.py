"""GGUF chat templates rendered where they cannot hurt: a bounded worker process.

A chat template is Jinja2 code from whoever made the GGUF. jinja2's sandbox stops
escapes, but not a loop that never ends or a string that fills the memory, and a
render runs on every chat turn. So templates render in one long-lived worker
(slmrun/_template_worker.py), started on the first render, reused after, with the
compiled templates cached there:

* time: the worker stops a render at ``timeout`` itself (SIGALRM) and stays warm; one
  that does not answer ``GRACE`` seconds later (stuck in a C call) is killed and
  reaped, and the next render starts a fresh one;
* memory: RLIMIT_AS on Linux, ``memory`` bytes above what the worker needs idle;
* output: counted while it streams, at most ``output_limit()`` bytes.

Any of these gives a one-line ChatTemplateError naming the model file. The cost is
an IPC round trip per render (benchmarks/template_render.py measures it); a render
asked for twice in a row (ChatSession counts the prompt's tokens, then sends it) is
answered from a small cache of the worker's own answers, which is exactly as safe.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import struct
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

from .errors import ChatTemplateError, TemplateMemoryError, TemplateOutputError, TemplateTimeoutError

DEFAULT_TIMEOUT = 2.0  # seconds a render may take
GRACE = 1.0  # more seconds for the worker to report its own deadline before it is killed
MEMORY = 256 << 20  # bytes a render may allocate (Linux)
STARTUP_TIMEOUT = 30.0  # a cold start on a loaded Raspberry Pi; normally ~0.1 s
_ANSWERS = 8  # renders remembered


def output_limit(n_ctx: int | None, input_bytes: int) -> int:
    """Bytes a render may write: a few times the context (~4 bytes a token), plus room
    for a history longer than the context (it is trimmed after being rendered)."""
    return 16 * (n_ctx or 8192) + 2 * input_bytes + (64 << 10)


class ChatTemplate(str):
    """A GGUF's chat template text that knows its model file (for messages) and context
    (for the output bound); passes everywhere a ``str`` does."""

    def __new__(cls, text: str, *, origin: str | None = None, n_ctx: int | None = None):
        self = super().__new__(cls, text)
        self.origin, self.n_ctx = origin, n_ctx
        return self


class _Dead(Exception):
    pass


class _Late(Exception):
    pass


class TemplateSandbox:
    """One worker process and the renders sent to it (thread-safe, one at a time)."""

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT, memory: int = MEMORY):
        self.timeout, self.memory = timeout, memory
        self._lock = threading.Lock()
        self._proc = None
        self._ready = False
        self._known: set[str] = set()  # template keys the current worker has compiled
        self._answers: OrderedDict = OrderedDict()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the worker now (it imports jinja2 while the caller does other work)."""
        with self._lock:
            self._spawn_if_needed()

    def render(self, template: str, variables: dict, *, limit: int, origin: str | None = None) -> str:
        key = hashlib.sha256(template.encode("utf-8", "surrogatepass")).hexdigest()
        body = json.dumps(variables, sort_keys=True)
        memo = (key, limit, body)
        with self._lock:
            if memo in self._answers:
                self._answers.move_to_end(memo)
                return self._answers[memo]
            try:
                reply = self._ask(key, template, body, limit, origin)
            except BaseException:  # Ctrl-C mid-render: its late answer must not become the next one's
                self._stop(kill=True)
                raise
            if "ok" in reply:
                self._answers[memo] = reply["ok"]
                if len(self._answers) > _ANSWERS:
                    self._answers.popitem(last=False)
                return reply["ok"]
        raise _error(reply, origin, timeout=self.timeout, memory=self.memory, limit=limit)

    def close(self) -> None:
        with self._lock:
            self._stop(kill=False)

    # --- the worker --------------------------------------------------------------------
    def _ask(self, key: str, template: str, body: str, limit: int, origin: str | None) -> dict:
        for attempt in range(3):
            fresh = self._spawn_if_needed()
            send_template = key not in self._known
            head = {"key": key, "template": template if send_template else None, "limit": limit,
                    "timeout": self.timeout}
            request = json.dumps(head)[:-1] + ', "vars": ' + body + "}"
            try:
                self._wait_ready()
                self._send(request.encode("ascii"))
            except _Dead:  # it died while idle (killed from outside?): once more with a new one
                self._stop(kill=True)
                if fresh:
                    return {"err": "crash", "msg": "the renderer did not start"}
                continue
            except _Late:
                self._stop(kill=True)
                return {"err": "crash", "msg": "the renderer did not start in time"}
            try:
                reply = json.loads(self._receive(time.monotonic() + self.timeout + GRACE))
            except _Late:
                self._stop(kill=True)  # stuck past its own alarm: only a kill stops it
                return {"err": "timeout", "msg": ""}
            except _Dead:
                self._stop(kill=True)
                return {"err": "crash", "msg": "the renderer died"}
            if reply.get("err") == "unknown":  # it forgot the template (its cache is small)
                self._known.discard(key)
                continue
            if send_template or "ok" in reply:
                self._known.add(key)
            if reply.get("err") == "compile":
                self._known.discard(key)
            return reply
        return {"err": "crash", "msg": "the renderer kept failing"}

    def _spawn_if_needed(self) -> bool:
        if self._proc is not None and self._proc.poll() is None and self._owner == os.getpid():
            return False
        if self._proc is not None and self._owner == os.getpid():
            self._stop(kill=True)
        import subprocess
        from importlib.util import find_spec

        from . import config

        # -I: no user site, no PYTHON* variables, no script directory on sys.path; jinja2
        # and markupsafe are found where this process found them.
        paths = []
        for mod in ("jinja2", "markupsafe"):
            spec = find_spec(mod)
            if spec is not None and spec.origin:
                paths.append(str(Path(spec.origin).parent.parent))
        cmd = [sys.executable, "-I", str(Path(__file__).with_name("_template_worker.py")), str(self.memory),
               *dict.fromkeys(paths)]
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
            stderr=None if config.debug() else subprocess.DEVNULL,
            start_new_session=os.name == "posix")  # Ctrl-C in a terminal is for us, not for it
        self._owner, self._ready, self._known = os.getpid(), False, set()
        self._reader = _Reader(self._proc.stdout)
        return True

    def _wait_ready(self) -> None:
        if not self._ready:
            json.loads(self._receive(time.monotonic() + STARTUP_TIMEOUT))
            self._ready = True

    def _send(self, data: bytes) -> None:
        data = struct.pack(">I", len(data)) + data
        fd = self._proc.stdin.fileno()
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError:  # BrokenPipeError and friends: the worker is gone
            raise _Dead() from None

    def _receive(self, deadline: float) -> bytes:
        n = struct.unpack(">I", self._reader.read(4, deadline))[0]
        return self._reader.read(n, deadline)

    def _stop(self, *, kill: bool) -> None:
        proc, self._proc, self._known = self._proc, None, set()
        if proc is None or self._owner != os.getpid():
            return  # a worker started by the process we were forked from is not ours
        try:
            if not kill:
                proc.stdin.close()  # it leaves at end of input
                try:
                    proc.wait(timeout=1.0)
                except Exception:  # noqa: BLE001 - busy or stuck: kill it below
                    pass
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)  # reaped: nothing is left running
        except OSError:
            pass
        finally:
            for pipe in (proc.stdin, proc.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass


class _Reader:
    """Reads the worker's pipe with a deadline: poll() on POSIX, a thread elsewhere."""

    def __init__(self, pipe):
        self.fd = pipe.fileno()
        try:
            import select
            self.poller = select.poll()
            self.poller.register(self.fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        except (ImportError, AttributeError):  # Windows: no poll() on pipes
            import queue
            self.poller, self.chunks = None, queue.Queue()
            threading.Thread(target=self._pump, daemon=True).start()
        self.pending = b""

    def _pump(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except OSError:
                chunk = b""
            self.chunks.put(chunk)
            if not chunk:
                return

    def read(self, n: int, deadline: float) -> bytes:
        while len(self.pending) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Late()
            if self.poller is not None:
                if not self.poller.poll(left * 1000):
                    raise _Late()
                chunk = os.read(self.fd, 1 << 16)
            else:
                import queue
                try:
                    chunk = self.chunks.get(timeout=left)
                except queue.Empty:
                    raise _Late() from None
            if not chunk:
                raise _Dead()
            self.pending += chunk
        out, self.pending = self.pending[:n], self.pending[n:]
        return out


def _error(reply: dict, origin: str | None, *, timeout: float, memory: int, limit: int) -> ChatTemplateError:
    kind = reply.get("err")
    detail = " ".join(str(reply.get("msg") or "").split())[:200]  # one line, whatever the template said
    who = f"{origin}: its chat template" if origin else "the model's chat template"
    if kind == "timeout":
        return TemplateTimeoutError(f"{who} was still rendering after {timeout:g} s and was stopped")
    if kind == "memory":
        return TemplateMemoryError(f"{who} needed more than {memory >> 20} MiB of memory and was stopped")
    if kind == "output":
        return TemplateOutputError(f"{who} wrote more than {limit} bytes ({detail}) and was stopped")
    message = {
        "compile": f"{who} does not compile: {detail}",
        "unsafe": f"{who} tried something unsafe and was stopped: {detail}",
        "raised": f"{who} refused the conversation: {detail}",
        "crash": f"{who} could not be rendered: {detail}",
    }.get(kind, f"{who} failed: {detail}")
    return ChatTemplateError(message)


# --- the process-wide sandbox -----------------------------------------------------------

_default: TemplateSandbox | None = None
_default_lock = threading.Lock()


def sandbox() -> TemplateSandbox:
    global _default
    with _default_lock:
        if _default is None:
            _default = TemplateSandbox()
        return _default


def _close_default() -> None:
    if _default is not None:
        _default.close()


def _forget_after_fork() -> None:
    # A forked child must not share the parent's pipes; it starts its own worker.
    global _default, _default_lock
    _default, _default_lock = None, threading.Lock()


atexit.register(_close_default)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
