"""`slmrun serve` as the tests run it: a real subprocess on 127.0.0.1 (port 0: the server
picks a free port and its log line says which), with its own store."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from conftest import slmrun_cmd

_URL = re.compile(r"slmrun serve on (http://\S+) ")


def server_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLMRUN_", "HF_"))}
    env.update(SLMRUN_HOME=str(home), XDG_CONFIG_HOME=str(home / "config"), HF_HUB_OFFLINE="1", **extra)
    return env


def store_model(home: Path, gguf: Path, name: str) -> None:
    """Import ``gguf`` into the store at ``home`` as ``slmrun import --link`` does."""
    from slmrun import api

    saved = os.environ.get("SLMRUN_HOME")
    os.environ["SLMRUN_HOME"] = str(home)
    try:
        api.import_model(gguf, name=name, link=True)
    finally:
        if saved is None:
            del os.environ["SLMRUN_HOME"]
        else:
            os.environ["SLMRUN_HOME"] = saved


class Server:
    def __init__(self, home: Path, *args: str, env: dict | None = None, wait_healthy: bool = True,
                 timeout: float = 120.0):
        self.home = home
        self.lines: list[str] = []
        cmd = [*slmrun_cmd(), "serve", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env={**server_env(home), **(env or {})})
        self._got_url = threading.Event()
        self.url = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._got_url.wait(timeout) or not self.url:
            self.stop()
            raise RuntimeError(f"slmrun serve did not start: {self.log}")
        if wait_healthy:
            self.wait_healthy(timeout)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            m = _URL.search(line)
            if m and not self.url:
                self.url = m.group(1)
                self._got_url.set()
        self._got_url.set()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def get(self, path: str, *, headers: dict | None = None) -> tuple[int, object, bytes]:
        return self.request("GET", path, headers=headers)

    def post(self, path: str, body, *, headers: dict | None = None) -> tuple[int, object, bytes]:
        return self.request("POST", path, body, headers=headers)

    def request(self, method: str, path: str, body=None, *, headers: dict | None = None,
                timeout: float = 120.0) -> tuple[int, object, bytes]:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.headers, r.read()  # the headers: a case-insensitive mapping
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def json(self, method: str, path: str, body=None, **kw):
        status, _, data = self.request(method, path, body, **kw)
        return status, json.loads(data) if data else None

    def wait_healthy(self, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"slmrun serve exited ({self.proc.returncode}): {self.log}")
            status, body = self.json("GET", "/health")
            if status == 200:
                return body
            time.sleep(0.1)
        raise RuntimeError(f"slmrun serve never became healthy: {self.log}")

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "the condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; server log:\n{self.log}")

    def loaded(self) -> list[dict]:
        return self.json("GET", "/api/ps")[1]["models"]

    def wait_exit(self, timeout: float = 60.0) -> int:
        """The exit status, once the process has ended and its last log lines are read."""
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code

    def stop(self, sig=signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.wait_exit()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
