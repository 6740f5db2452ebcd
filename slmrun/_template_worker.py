"""The chat-template worker: a separate process that renders GGUF chat templates.

Started by slmrun/template_sandbox.py as ``python -I _template_worker.py MEMORY_BYTES
[PATH...]``; imports only the standard library and jinja2 (never slmrun). A template
is code from a stranger, so it runs here, not in the process that holds the model:

* jinja2's ImmutableSandboxedEnvironment stops attribute walks to ``os``, ``__globals__``
  and the like;
* on Linux RLIMIT_AS caps this process's memory, so an allocation past it is a
  MemoryError here, never an out-of-memory kill of the model's process;
* SIGALRM (POSIX) interrupts a render at its deadline, keeping the worker warm; the
  parent kills the worker if it does not answer shortly after (a long C-level call);
* the output is counted while it streams (Template.generate()), and a sequence
  repeated past the bound is refused before it is allocated.

Protocol on stdin/stdout: frames of a 4-byte big-endian length and UTF-8 JSON.
Request ``{"key", "template" (only when the worker has not seen the key), "vars",
"limit", "timeout"}``; reply ``{"ok": text}`` or ``{"err": kind, "msg": text}``.
"""

import gc
import json
import os
import signal
import struct
import sys

_CACHE_SIZE = 16


class _Deadline(BaseException):
    """Raised by SIGALRM; a BaseException so a template's own error handling cannot eat it."""


class _TooBig(Exception):
    pass


def _limit_memory(headroom: int) -> None:
    try:
        import resource
        with open("/proc/self/statm") as f:
            now = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        cap = now + headroom
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    except (ImportError, OSError, ValueError):  # not Linux: the timeout and output bound remain
        pass


def _environment(limit_box):
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Env(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*"])

        def call_binop(self, context, operator, left, right):
            # 'x' * 10**10 would allocate before any output is counted: refuse it first.
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > limit_box[0]:
                        raise _TooBig(f"a sequence repeated to {len(seq) * n} items")
            return super().call_binop(context, operator, left, right)

    def raise_exception(message):
        raise TemplateError(message)

    env = Env(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env


def _render(template, variables: dict, limit: int) -> str:
    parts, size = [], 0
    for chunk in template.generate(**variables):
        size += len(chunk.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise _TooBig(f"output past {limit} bytes")
        parts.append(chunk)
    return "".join(parts)


def _handle(req: dict, env, cache: dict, limit_box) -> dict:
    from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError

    key = req["key"]
    template = cache.get(key)
    if template is None:
        if req.get("template") is None:
            return {"err": "unknown", "msg": key}
        try:
            template = env.from_string(req["template"])
        except TemplateSyntaxError as exc:
            return {"err": "compile", "msg": f"{exc.message} (line {exc.lineno})"}
        except Exception as exc:  # noqa: BLE001 - anything the compiler throws is the template's fault
            return {"err": "compile", "msg": f"{type(exc).__name__}: {exc}"}
        if len(cache) >= _CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[key] = template
    limit_box[0] = int(req["limit"])
    timer = hasattr(signal, "setitimer")
    if timer:
        signal.setitimer(signal.ITIMER_REAL, float(req["timeout"]))
    try:
        return {"ok": _render(template, req["vars"], limit_box[0])}
    except _Deadline:
        return {"err": "timeout", "msg": ""}
    except MemoryError:
        return {"err": "memory", "msg": ""}
    except _TooBig as exc:
        return {"err": "output", "msg": str(exc)}
    except SecurityError as exc:
        return {"err": "unsafe", "msg": str(exc)}
    except RecursionError:
        return {"err": "error", "msg": "it recursed too deeply"}
    except TemplateError as exc:
        return {"err": "raised", "msg": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a template error of any kind is reported, not fatal
        return {"err": "error", "msg": f"{type(exc).__name__}: {exc}"}
    finally:
        if timer:
            signal.setitimer(signal.ITIMER_REAL, 0)


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _write(fd: int, obj: dict) -> None:
    data = json.dumps(obj).encode("ascii")  # \u escapes carry any str, lone surrogates too
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def main(argv: list[str]) -> None:
    headroom, extra_paths = int(argv[1]), argv[2:]
    sys.path[:0] = [p for p in extra_paths if p not in sys.path]
    fd_in, fd_out = os.dup(0), os.dup(1)
    # Stray prints (a jinja2 warning) must never reach the protocol channel.
    os.dup2(2, 1)
    if hasattr(signal, "SIGALRM"):
        def on_alarm(signum, frame):
            raise _Deadline()
        signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent; it decides
    limit_box = [1 << 20]
    env = _environment(limit_box)
    env.from_string("{{ x }}").render(x=1)  # import everything rendering needs before the cap
    _limit_memory(headroom)
    cache: dict = {}
    _write(fd_out, {"ready": os.getpid()})
    while True:
        head = _read_exact(fd_in, 4)
        if head is None:
            return  # the parent closed the pipe (or died): leave
        body = _read_exact(fd_in, struct.unpack(">I", head)[0])
        if body is None:
            return
        try:
            reply = _handle(json.loads(body), env, cache, limit_box)
        except MemoryError:
            reply = {"err": "memory", "msg": ""}
        except _Deadline:  # the alarm fired just as the render ended
            reply = {"err": "timeout", "msg": ""}
        if "err" in reply:
            # A failed render's traceback keeps its frames (and whatever they built) in a
            # reference cycle: free it now, not at some later collection.
            gc.collect()
        try:
            _write(fd_out, reply)
        except MemoryError:
            _write(fd_out, {"err": "memory", "msg": ""})


if __name__ == "__main__":
    main(sys.argv)
