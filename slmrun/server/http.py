"""HTTP plumbing shared by both APIs: errors in each API's shape (with no path of this
machine in them), the ASGI middleware (request ids and the access log, API key, body cap,
the last resort for bugs) and a streaming response that cancels its generation the moment
the client goes away."""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import sys
import time
import uuid

import asyncio
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from .. import errors as E

access_log = logging.getLogger("slmrun.server.access")
log = logging.getLogger("slmrun.server")


class HTTPError(Exception):
    """An error of the HTTP layer itself (not the library's): bad JSON, no key, too big."""

    def __init__(self, status: int, message: str, *, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


# (library error, HTTP status, OpenAI's error code); first match wins.
STATUS = (
    (E.ContextOverflowError, 400, "context_length_exceeded"),
    (E.InvalidSchemaError, 400, "invalid_schema"), (E.UnsupportedSchemaError, 400, "unsupported_schema"),
    (E.InvalidGrammarError, 400, "invalid_grammar"),
    (E.InvalidArgumentError, 400, "invalid_value"),
    (E.ChatFormatError, 400, "unsupported_model"), (E.ModelCapabilityError, 400, "unsupported_model"),
    (E.ModelNotFoundError, 404, "model_not_found"), (E.ModelNotPulledError, 404, "model_not_found"),
    (E.UnknownQuantError, 404, "model_not_found"),
    (E.QueueFullError, 503, "server_busy"), (E.ModelClosedError, 503, "model_unloaded"),
    (E.RpcServerError, 502, "rpc_server_failed"),
    (E.StoreLockedError, 409, "model_busy"), (E.ModelInUseError, 409, "model_in_use"),
    (E.InvalidAdapterError, 400, "invalid_adapter"), (E.ModelFileNotFoundError, 404, "file_not_found"),
    (E.DownloadError, 502, "download_failed"), (E.ChecksumMismatchError, 502, "checksum_mismatch"),
    (E.InsufficientDiskSpaceError, 507, "insufficient_storage"),
    # The request is fine and no retry will make the model fit: not the client's fault (no
    # 4xx), not a bug (no 500), not a passing overload (503 is QueueFullError's, with
    # Retry-After). 507 "the server cannot store what the request needs", as for the disk.
    (E.InsufficientMemoryError, 507, "insufficient_memory"),
    # A model's output that failed the final check (a tool call cut by a stop string, say):
    # OpenAI answers this 500 "The model produced invalid content", llama-server 500 when its
    # tool-call parser fails. A retry samples anew, so 5xx is right; it is logged, not a bug.
    (E.StructuredOutputError, 500, "invalid_output"),
    (E.KnowledgeBaseNotFoundError, 404, "model_not_found"), (E.KnowledgeBaseError, 500, "knowledge_base_error"),
)
RETRY_AFTER_S = 1  # a slot frees when any one request ends; small models end them quickly


def status_of(exc: BaseException) -> tuple[int, str | None, dict]:
    if isinstance(exc, HTTPError):
        return exc.status, exc.code, exc.headers
    if isinstance(exc, InternalError):
        return 500, "internal_error", {}
    for cls, status, code in STATUS:
        if isinstance(exc, cls):
            headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else {}
            return status, code, headers
    return 500, "internal_error", {}


class InternalError(Exception):
    """What a client is told of a bug: nothing but the id of the log line that has the rest."""

    def __init__(self, request_id: str):
        super().__init__(f"internal error (request id {request_id}): the server's log has the details")
        self.request_id = request_id


def _roots() -> list[tuple[str, str]]:
    """(directory, what a client is shown instead), longest first: where this machine keeps
    models and its home, which no client needs to know."""
    from .. import config

    named = [(config.models_dir(), "<models>"), (config.home(), "<SLMRUN_HOME>"), (sys.prefix, "<python>"),
             (sys.base_prefix, "<python>"), (os.path.expanduser("~"), "~")]
    try:
        named.append((os.getcwd(), "<cwd>"))
    except OSError:  # the directory it started in is gone
        pass
    out = {}
    for path, label in named:
        for variant in {str(path), os.path.realpath(path)}:
            if len(variant.rstrip("/")) > 1:  # never "/" itself
                out.setdefault(variant.rstrip("/"), label)
    return sorted(out.items(), key=lambda kv: -len(kv[0]))


def scrub(text: str) -> str:
    """``text`` with every path under this machine's known roots cut to the root's label (the
    last step before a message leaves: library messages name models, not files, but a file's
    path can still ride along in an OS error)."""
    for root, label in _roots():
        if root in text:
            text = re.sub(re.escape(root) + r"(?![\w.-])", label, text)  # not /root in /rootfs
    return text


def message_of(exc: BaseException) -> str:
    if isinstance(exc, E.SlmrunError):
        text = f"{exc.message}. {exc.hint}" if exc.hint else exc.message
    elif isinstance(exc, (HTTPError, InternalError)):
        text = str(exc) if isinstance(exc, InternalError) else exc.message
    else:
        text = "internal error: the server's log has the details"
    return scrub(text)


def is_openai(path: str) -> bool:
    # /rerank and /reranking: llama-server's aliases of /v1/rerank, answered in its (OpenAI's) shape
    return path == "/v1" or path.startswith("/v1/") or path in ("/rerank", "/reranking")


def error_body(exc: BaseException, path: str) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) in the API's own error shape."""
    status, code, headers = status_of(exc)
    message = message_of(exc)
    if is_openai(path):
        kind = "server_error" if status >= 500 else (
            "authentication_error" if status == 401 else "invalid_request_error")
        code = getattr(exc, "code", None) if isinstance(exc, E.InvalidArgumentError) and \
            getattr(exc, "code", None) else code
        return status, {"error": {"message": message, "type": kind, "param": getattr(exc, "param", None),
                                  "code": code}}, headers
    return status, {"error": message}, headers


def error_response(exc: BaseException, path: str) -> JSONResponse:
    status, body, headers = error_body(exc, path)
    if isinstance(exc, E.StructuredOutputError):
        log.warning("%s: %s", path, exc.message)
    return JSONResponse(body, status_code=status, headers=headers)


class FastJSONResponse(JSONResponse):
    """JSON through orjson: numpy arrays as they are (float32 vectors written as float32, the
    shortest text that reads back to the same value) and ~10x faster than json.dumps for an
    embedding response's hundreds of floats (benchmarks/EMBEDDINGS.md)."""

    def render(self, content) -> bytes:
        import orjson

        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def sse(obj) -> str:
    return f"data: {dumps(obj)}\n\n"


def ndjson(obj) -> str:
    return dumps(obj) + "\n"


# --- generations and disconnects ------------------------------------------------------------

class EngineStream(StreamingResponse):
    """Streams ``chunks`` while watching for the client to leave; however it ends (done,
    disconnect, server shutdown), the generation is cancelled if still running, so its
    slot is free at once. (Starlette only watches for disconnects on ASGI < 2.4 servers.)"""

    def __init__(self, generation, chunks, *, media_type: str, headers: dict | None = None):
        super().__init__(chunks, media_type=media_type, headers=headers)
        self.generation = generation

    async def __call__(self, scope, receive, send) -> None:
        async def watch() -> None:
            await self.listen_for_disconnect(receive)
            self.generation.cancel()  # the stream then ends by itself; nobody reads it any more

        watcher = asyncio.ensure_future(watch())
        try:
            await self.stream_response(send)
        finally:
            watcher.cancel()
            self.generation.cancel()  # a no-op once it has ended


async def wait_or_disconnect(request: Request, generation) -> None:
    """Await a generation; a client that leaves meanwhile cancels it (its slot frees at once)."""
    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        generation.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        await generation
    except BaseException:
        generation.cancel()
        raise
    finally:
        watcher.cancel()


# --- middleware (plain ASGI) -------------------------------------------------------------------

def _send_error(exc: HTTPError, scope):
    status, body, headers = error_body(exc, scope.get("path", ""))
    return JSONResponse(body, status_code=status, headers=headers)


class ApiKeyMiddleware:
    """``Authorization: Bearer KEY`` on every route but the chat page and /health (compared in
    constant time). CORS preflights pass: the CORS middleware outside answers them."""

    OPEN = ("/", "/health", "/favicon.ico")

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.OPEN or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                given = token.strip() if scheme.lower() == b"bearer" else b""
            elif name == b"x-api-key" and not given:
                given = value.strip()
        if not hmac.compare_digest(given, self.key):
            err = HTTPError(401, "a valid API key is required: send `Authorization: Bearer KEY`"
                            if not given else "the API key is not valid", code="invalid_api_key",
                            headers={"WWW-Authenticate": "Bearer"})
            return await _send_error(err, scope)(scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses bodies over ``limit`` bytes: by Content-Length at once, else while reading.
    Uploads of model files (/api/blobs) are checked by their digest instead."""

    EXEMPT = ("/api/blobs/",)

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(self.EXEMPT):
            return await self.app(scope, receive, send)
        too_big = HTTPError(413, f"the request body is over the server's limit of {self.limit} bytes "
                                 "(slmrun serve --max-body)", code="request_too_large")
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                return await _send_error(too_big, scope)(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise too_big
            return message

        return await self.app(scope, limited, send)


class InternalErrorMiddleware:
    """The last resort, innermost: an exception no handler took is a bug. Its traceback goes
    to the server's log once, with the request id; the client gets a 500 that says only that
    id (or, when the response had begun, its end)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watch(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            rid = scope.get("slmrun.request_id") or new_request_id()
            log.error("internal error (request id %s) on %s %s", rid, scope["method"], scope["path"], exc_info=exc)
            if not started:
                await error_response(InternalError(rid), scope["path"])(scope, receive, send)
            else:  # a stream already under way: end it (its client sees the reply stop)
                await send({"type": "http.response.body", "body": b"", "more_body": False})


def new_request_id() -> str:
    return uuid.uuid4().hex[:12]


class AccessLogMiddleware:
    """Gives every request an id (``X-Request-Id`` on its response, ``scope["slmrun.request_id"]``)
    and writes one line when its response ends: client, method, path, status, seconds, and
    what the route noted (model, tokens) in ``scope["slmrun.log"]``; counts for /metrics."""

    def __init__(self, app, metrics=None):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]
        note: dict = {}
        scope["slmrun.log"] = note
        rid = scope["slmrun.request_id"] = new_request_id()

        async def watch(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            dt = time.perf_counter() - t0
            client = scope.get("client") or ("-", 0)
            describe = note.pop("_describe", None)
            if describe is not None:
                note.update(describe())
            if status[0] >= 500:
                note["id"] = rid
            extra = "".join(f" {k}={v}" for k, v in note.items())
            path = scope["path"] + (f"?{scope['query_string'].decode()}" if scope.get("query_string") else "")
            access_log.info('%s "%s %s" %d %.3fs%s', client[0], scope["method"], path, status[0], dt, extra)
            if self.metrics is not None:
                self.metrics.request_done(scope["path"], status[0], dt)
