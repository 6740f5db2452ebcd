"""HTTP plumbing shared by both APIs: errors in each API's shape, JSON bodies, the ASGI
middleware (API key, body cap, access log) and a streaming response that cancels its
generation the moment the client goes away."""

from __future__ import annotations

import hmac
import json
import logging
import time

import asyncio
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from .. import errors as E

access_log = logging.getLogger("slmrun.server.access")


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
    (E.ChatFormatError, 400, "unsupported_model"),
    (E.ModelNotFoundError, 404, "model_not_found"), (E.ModelNotPulledError, 404, "model_not_found"),
    (E.UnknownQuantError, 404, "model_not_found"),
    (E.QueueFullError, 503, "server_busy"), (E.ModelClosedError, 503, "model_unloaded"),
    (E.RpcServerError, 502, "rpc_server_failed"),
    (E.StoreLockedError, 409, "model_busy"),
    (E.DownloadError, 502, "download_failed"), (E.ChecksumMismatchError, 502, "checksum_mismatch"),
    (E.InsufficientDiskSpaceError, 507, "insufficient_storage"),
    (E.InsufficientMemoryError, 500, "insufficient_memory"),
    (E.StructuredOutputError, 500, "invalid_output"),
    (E.KnowledgeBaseNotFoundError, 404, "model_not_found"), (E.KnowledgeBaseError, 500, "knowledge_base_error"),
)
RETRY_AFTER_S = 1  # a slot frees when any one request ends; small models end them quickly


def status_of(exc: BaseException) -> tuple[int, str | None, dict]:
    if isinstance(exc, HTTPError):
        return exc.status, exc.code, exc.headers
    for cls, status, code in STATUS:
        if isinstance(exc, cls):
            headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else {}
            return status, code, headers
    return 500, "internal_error", {}


def message_of(exc: BaseException) -> str:
    if isinstance(exc, E.SlmrunError):
        return f"{exc.message}. {exc.hint}" if exc.hint else exc.message
    if isinstance(exc, HTTPError):
        return exc.message
    return f"internal error: {type(exc).__name__}: {exc}"


def is_openai(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def error_body(exc: BaseException, path: str) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) in the API's own error shape."""
    status, code, headers = status_of(exc)
    message = message_of(exc)
    if is_openai(path):
        kind = "server_error" if status >= 500 else (
            "authentication_error" if status == 401 else "invalid_request_error")
        return status, {"error": {"message": message, "type": kind, "param": None, "code": code}}, headers
    return status, {"error": message}, headers


def error_response(exc: BaseException, path: str) -> JSONResponse:
    status, body, headers = error_body(exc, path)
    if status >= 500 and not isinstance(exc, (E.SlmrunError, HTTPError)):
        logging.getLogger("slmrun.server").exception("internal error on %s", path, exc_info=exc)
    return JSONResponse(body, status_code=status, headers=headers)


async def read_json(request: Request) -> dict:
    body = await request.body()
    if not body.strip():
        raise HTTPError(400, "the request body is empty: send a JSON object", code="invalid_json")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise HTTPError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise HTTPError(400, "the request body must be a JSON object", code="invalid_json")
    return data


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
    """Refuses bodies over ``limit`` bytes: by Content-Length at once, else while reading."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
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


class AccessLogMiddleware:
    """One line per request when its response ends: client, method, path, status, seconds,
    and what the route noted (model, tokens) in ``scope["slmrun.log"]``; counts for /metrics."""

    def __init__(self, app, metrics=None):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]
        note: dict = {}
        scope["slmrun.log"] = note

        async def watch(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            dt = time.perf_counter() - t0
            client = scope.get("client") or ("-", 0)
            describe = note.pop("_describe", None)
            if describe is not None:
                note.update(describe())
            extra = "".join(f" {k}={v}" for k, v in note.items())
            path = scope["path"] + (f"?{scope['query_string'].decode()}" if scope.get("query_string") else "")
            access_log.info('%s "%s %s" %d %.3fs%s', client[0], scope["method"], path, status[0], dt, extra)
            if self.metrics is not None:
                self.metrics.request_done(scope["path"], status[0], dt)
