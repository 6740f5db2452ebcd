"""A local stand-in for the Hugging Face Hub, for tests that must not touch the internet.

Two stdlib HTTP servers on 127.0.0.1 (port 0), each in a daemon thread:

* the *hub* answers ``HEAD``/``GET /{owner}/{name}/resolve/{revision}/{filename}`` the
  way huggingface.co does for LFS files: a 302 to the CDN carrying ``X-Repo-Commit``,
  ``ETag``/``X-Linked-Etag`` (the SHA-256) and ``X-Linked-Size``; errors carry
  ``X-Error-Code`` like the real hub's (401 RepoNotFound, 404 RevisionNotFound,
  404 EntryNotFound), and ``/api/agent-harnesses`` gets the empty registry (counted, so tests can
  prove nobody asked);
* the *cdn* (another port, so another origin: huggingface_hub does not follow a HEAD
  redirect to a foreign host, it reads the metadata off the 302, as with the real
  CDN) serves ``/cdn/<sha256>`` with ``Accept-Ranges: bytes`` and answers
  ``Range: bytes=N-`` (or ``N-M``) with 206 + ``Content-Range``.

Fault knobs (all thread-safe, settable while the server runs):
``cut_next_get(file, after)`` closes the connection after ``after`` body bytes of
the next body GET, once; ``fail_next_get(file, status)`` answers the next body GET
with an error, once; ``fail(file, status)`` makes the hub answer every request for
the file with ``status`` (``None`` clears it); ``corrupt(file)`` serves different
bytes of the same length under the right SHA-256; ``delay_per_chunk`` slows every
body; ``ignore_range`` answers Range requests with 200 and the whole file. ``hits`` records every request (method, path, Range header, status).

Usage::

    with HubServer({"owner/repo": {"m.gguf": data}}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

AGENT_HARNESSES = {"standardEnvVars": [], "harnesses": {}}


@dataclass(frozen=True)
class Hit:
    server: str  # "hub" or "cdn"
    method: str
    path: str
    filename: str | None
    range: str | None
    status: int
    t: float  # time.monotonic() when the answer started


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class HubServer:
    CHUNK = 16 << 10

    def __init__(self, repos: dict[str, dict[str, bytes]] | None = None, *, lfs_redirect: bool = True):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: dict[str, str] = {}
        self.lfs_redirect = lfs_redirect
        self.delay_per_chunk = 0.0
        self.ignore_range = False  # answer 200 + the whole file to a Range request (some CDNs do)
        self.hits: list[Hit] = []
        self._lock = threading.Lock()
        self._script: dict[str, list[tuple[str, int]]] = {}  # per-file actions for the next body GETs
        self._status: dict[str, int] = {}
        self._corrupt: set[str] = set()
        for repo, files in (repos or {}).items():
            for name, data in files.items():
                self.add(repo, name, data)
        self._hub = _Server(("127.0.0.1", 0), self._handler("hub"))
        self._cdn = _Server(("127.0.0.1", 0), self._handler("cdn"))
        self._threads: list[threading.Thread] = []

    # --- content --------------------------------------------------------------------

    def add(self, repo: str, filename: str, data: bytes) -> str:
        """Publish a file; returns its SHA-256."""
        with self._lock:
            self.repos.setdefault(repo, {})[filename] = bytes(data)
            self.commits.setdefault(repo, hashlib.sha1(repo.encode()).hexdigest())
        return hashlib.sha256(data).hexdigest()

    def sha256(self, filename: str) -> str:
        return hashlib.sha256(self._find(filename)[1]).hexdigest()

    def _find(self, filename: str) -> tuple[str, bytes]:
        for repo, files in self.repos.items():
            if filename in files:
                return repo, files[filename]
        raise KeyError(filename)

    def _by_sha(self, sha: str) -> tuple[str, bytes] | None:
        with self._lock:
            for files in self.repos.values():
                for name, data in files.items():
                    if hashlib.sha256(data).hexdigest() == sha:
                        return name, data
        return None

    # --- fault knobs ----------------------------------------------------------------

    def cut_next_get(self, filename: str, after: int) -> None:
        with self._lock:
            self._script.setdefault(filename, []).append(("cut", after))

    def fail_next_get(self, filename: str, status: int) -> None:
        with self._lock:
            self._script.setdefault(filename, []).append(("status", status))

    def fail(self, filename: str, status: int | None) -> None:
        with self._lock:
            if status is None:
                self._status.pop(filename, None)
            else:
                self._status[filename] = status

    def corrupt(self, filename: str, on: bool = True) -> None:
        with self._lock:
            (self._corrupt.add if on else self._corrupt.discard)(filename)

    def _next_action(self, filename: str) -> tuple[str, int] | None:
        with self._lock:
            queue = self._script.get(filename)
            return queue.pop(0) if queue else None

    # --- what was asked -------------------------------------------------------------

    def requests(self, *, filename: str | None = None, method: str | None = None) -> list[Hit]:
        with self._lock:
            return [h for h in self.hits if (filename is None or h.filename == filename)
                    and (method is None or h.method == method)]

    def body_gets(self, filename: str) -> list[Hit]:
        """GETs that were answered with (some of) the file's bytes."""
        return [h for h in self.requests(filename=filename, method="GET") if h.status in (200, 206)]

    def ranges(self, filename: str) -> list[str]:
        return [h.range for h in self.requests(filename=filename, method="GET") if h.range]

    def api_calls(self) -> list[Hit]:
        return [h for h in self.requests() if h.path.startswith("/api/")]

    # --- lifecycle ------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def start(self) -> "HubServer":
        for srv in (self._hub, self._cdn):
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self.delay_per_chunk = 0.0  # let slowed handlers finish quickly
        for srv in (self._hub, self._cdn):
            srv.shutdown()
            srv.server_close()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- HTTP -----------------------------------------------------------------------

    def _handler(self, role: str):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "fakehub/1.0"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._route(head=True)

            def do_GET(self):
                self._route(head=False)

            # -- helpers
            def _record(self, filename, status):
                with hub._lock:
                    hub.hits.append(Hit(role, self.command, self.path, filename, self.headers.get("Range"), status,
                                         time.monotonic()))

            def _send(self, status, headers=None, body=b"", *, head=False, filename=None):
                self._record(filename, status)
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body and not head:
                    self.wfile.write(body)

            def _json(self, status, obj, *, head, headers=None, filename=None):
                h = {"Content-Type": "application/json", **(headers or {})}
                self._send(status, h, json.dumps(obj).encode(), head=head, filename=filename)

            def _route(self, *, head):
                path = urlsplit(self.path).path
                if role == "cdn":
                    m = re.fullmatch(r"/cdn/([0-9a-f]{64})", path)
                    found = hub._by_sha(m.group(1)) if m else None
                    if found is None:
                        return self._json(404, {"error": "not found"}, head=head)
                    return self._serve_bytes(found[0], found[1], {}, head=head)
                if path == "/api/agent-harnesses":
                    return self._json(200, AGENT_HARNESSES, head=head)
                if path.startswith("/api/"):
                    return self._json(404, {"error": "not implemented by the test hub"}, head=head)
                parts = path.lstrip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return self._json(404, {"error": "not found"}, head=head)
                repo = unquote(parts[0]) + "/" + unquote(parts[1])
                revision = unquote(parts[3])
                filename = "/".join(unquote(p) for p in parts[4:])
                self._resolve(repo, revision, filename, head=head)

            def _resolve(self, repo, revision, filename, *, head):
                with hub._lock:
                    files = hub.repos.get(repo)
                    commit = hub.commits.get(repo)
                    forced = hub._status.get(filename)
                if files is None:  # the real hub says 401 (missing and private repos look alike)
                    return self._json(401, {"error": "Repository not found"}, head=head, filename=filename,
                                      headers={"X-Error-Code": "RepoNotFound",
                                               "X-Error-Message": "Repository not found"})
                if revision not in ("main", commit):
                    return self._json(404, {"error": "Invalid rev id"}, head=head, filename=filename,
                                      headers={"X-Error-Code": "RevisionNotFound",
                                               "X-Error-Message": "Invalid rev id: " + revision})
                if filename not in files:
                    return self._json(404, {"error": "Entry not found"}, head=head, filename=filename,
                                      headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit,
                                               "X-Error-Message": "Entry not found"})
                if forced:
                    return self._json(forced, {"error": f"injected {forced}"}, head=head, filename=filename)
                data = files[filename]
                sha = hashlib.sha256(data).hexdigest()
                meta = {"X-Repo-Commit": commit, "ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"',
                        "X-Linked-Size": str(len(data))}
                if hub.lfs_redirect:
                    meta["Location"] = f"{hub.cdn}/cdn/{sha}?filename={quote(filename)}"
                    return self._send(302, meta, head=head, filename=filename)
                self._serve_bytes(filename, data, meta, head=head)

            def _serve_bytes(self, filename, data, extra, *, head):
                size = len(data)
                headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
                           "ETag": f'"{hashlib.sha256(data).hexdigest()}"', **extra}
                action = None if head else hub._next_action(filename)
                if action and action[0] == "status":
                    return self._json(action[1], {"error": f"injected {action[1]}"}, head=head, filename=filename)
                if filename in hub._corrupt:
                    mid = size // 2
                    data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:]
                start, end, status = 0, size - 1, 200
                rng = self.headers.get("Range")
                if rng and not hub.ignore_range:
                    m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
                    if not m or int(m.group(1)) >= size:
                        return self._send(416, {"Content-Range": f"bytes */{size}"}, head=head, filename=filename)
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
                self._record(filename, status)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                if head:
                    return
                body = memoryview(data)[start:end + 1]
                limit = action[1] if action and action[0] == "cut" else None
                sent = 0
                try:
                    while sent < len(body):
                        n = min(hub.CHUNK, len(body) - sent)
                        if limit is not None:
                            n = min(n, limit - sent)
                            if n <= 0:
                                break
                        self.wfile.write(body[sent:sent + n])
                        sent += n
                        if hub.delay_per_chunk:
                            time.sleep(hub.delay_per_chunk)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                    return
                if limit is not None:  # the "network" drops: close without finishing the body
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        return Handler
