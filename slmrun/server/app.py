"""The Starlette app: middleware, /health, /metrics, the chat page, and the lifespan that
starts the model manager (and loads the -m models) and unloads everything at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..errors import SlmrunError
from . import create, embeddings_api, knowledge, ollama_api, openai_api
from .http import (AccessLogMiddleware, ApiKeyMiddleware, BodyLimitMiddleware, HTTPError, InternalErrorMiddleware,
                   error_response, scrub)
from .manager import ModelManager
from .metrics import Metrics

log = logging.getLogger("slmrun.server")


@dataclass
class State:
    settings: object
    manager: ModelManager
    metrics: Metrics
    default_model: str
    knowledge: dict = field(default_factory=dict)  # name -> KnowledgeBase (`serve --kb`)
    ready: bool = False  # the -m models are loaded
    preload_errors: dict = field(default_factory=dict)


async def health(request: Request):
    state: State = request.app.state.slmrun
    body = {"status": "ok" if state.ready else "loading", "loaded": [m.key for m in state.manager.loaded()],
            "loading": state.manager.loading}
    if state.preload_errors:
        body.update(status="error", errors=state.preload_errors)
    return JSONResponse(body, status_code=200 if state.ready and not state.preload_errors else 503)


async def metrics(request: Request):
    from ..hardware import process_rss

    state: State = request.app.state.slmrun
    text = state.metrics.render(state.manager.loaded(), state.manager.counters, process_rss())
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


_PAGE: str | None = None


async def chat_page(request: Request):
    global _PAGE
    if _PAGE is None:
        _PAGE = resources.files("slmrun.server").joinpath("chat.html").read_text(encoding="utf-8")
    return HTMLResponse(_PAGE, headers={"Cache-Control": "no-cache"})


async def favicon(request: Request):
    return Response(status_code=204)


async def _on_error(request: Request, exc: Exception):
    return error_response(exc, request.url.path)


async def _on_http_exception(request: Request, exc: HTTPException):
    what = {404: f"no such endpoint: {request.method} {request.url.path}",
            405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return error_response(HTTPError(exc.status_code, what, code=code, headers=dict(exc.headers or {})),
                          request.url.path)


async def _preload(state: State) -> None:
    for ref in state.settings.models:
        try:
            lease = await state.manager.lease(ref)
            lease.release()
        except SlmrunError as exc:
            log.error("could not load %s: %s%s", ref, exc.message, f" ({exc.hint})" if exc.hint else "")
            state.preload_errors[ref] = scrub(exc.message)  # /health is open to anyone who can connect
        except Exception as exc:  # a bug of ours: say so, keep serving the other models
            log.exception("could not load %s", ref)
            state.preload_errors[ref] = f"internal error ({type(exc).__name__}): the server's log has the details"
    state.ready = True


def create_app(settings, *, url: str | None = None) -> Starlette:
    metrics_ = Metrics()
    manager = ModelManager(keep_alive=settings.keep_alive, load_kwargs=settings.model_load_kwargs(),
                           memory_budget=settings.memory, pinned=tuple(settings.models))
    state = State(settings=settings, manager=manager, metrics=metrics_,
                  default_model=settings.models[0] if settings.models else settings.default_model)
    if settings.knowledge:
        from ..knowledge import knowledge_base
        state.knowledge = {name: knowledge_base(name) for name in settings.knowledge}  # missing: fails now

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await manager.start()
        # -m names resolve to keys now, so the pins hold whatever quant the name picks.
        pinned = set()
        for ref in settings.models:
            try:
                pinned.add(await asyncio.to_thread(manager.resolve, ref))
            except SlmrunError:
                pass  # _preload reports it
        manager.pinned = pinned
        manager.lora, manager.lora_keys = tuple(settings.lora), set(pinned) if settings.lora else set()
        preload = asyncio.create_task(_preload(state))
        if url:
            log.info("slmrun serve on %s (OpenAI: %s/v1, Ollama: %s/api, chat page: %s/)%s", url, url, url, url,
                     "; API key required" if settings.api_key else "")
        try:
            yield
        finally:
            preload.cancel()
            log.info("shutting down: unloading %d model(s)", len(manager.loaded()))
            await manager.close()
            for kb in state.knowledge.values():
                kb.close()

    middleware = [Middleware(AccessLogMiddleware, metrics=metrics_)]
    if settings.cors:
        from starlette.middleware.cors import CORSMiddleware
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(settings.cors), allow_methods=["*"],
                                     allow_headers=["*"], max_age=600))
    if settings.api_key:
        middleware.append(Middleware(ApiKeyMiddleware, key=settings.api_key))
    middleware.append(Middleware(BodyLimitMiddleware, limit=settings.max_body))
    middleware.append(Middleware(InternalErrorMiddleware))
    routes = [Route("/", chat_page, methods=["GET", "HEAD"]), Route("/favicon.ico", favicon),
              Route("/health", health), Route("/metrics", metrics),
              *openai_api.routes, *ollama_api.routes, *embeddings_api.routes, *create.routes, *knowledge.routes]
    # Any other exception is a bug: InternalErrorMiddleware logs it once and answers 500.
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={SlmrunError: _on_error, HTTPError: _on_error, HTTPException: _on_http_exception})
    app.state.slmrun = state
    return app
