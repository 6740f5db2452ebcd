"""OpenAI's API: /v1/chat/completions, /v1/completions, /v1/models.

Shapes follow OpenAI's API reference (as the official ``openai`` package's types spell
them): chat.completion / chat.completion.chunk objects, text_completion, server-sent
events ending in ``data: [DONE]``, usage in a last chunk with ``stream_options.include_usage``.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .. import __version__
from ..errors import ModelNotFoundError, SlmrunError
from . import generation, knowledge, schema, structured, translate
from .http import EngineStream, error_body, sse, wait_or_disconnect

FINGERPRINT = f"slmrun-{__version__}"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _finish(reason: str | None) -> str:
    # "cancelled" only reaches a client the server itself stopped (shutdown past its grace).
    return reason if reason in ("stop", "length", "tool_calls") else "stop"


def usage(stats) -> dict:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.generated_tokens,
            "total_tokens": stats.prompt_tokens + stats.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": stats.cached_tokens}}


def chat_logprobs(model, entries) -> dict | None:
    """The engine's per-token entries (token ids) -> OpenAI's chat logprobs (token text and bytes)."""
    if entries is None:
        return None

    def one(e: dict) -> dict:
        text = model.token_piece(e["token"])
        return {"token": text, "logprob": e["logprob"], "bytes": list(text.encode("utf-8"))}

    return {"content": [{**one(e), "top_logprobs": [one(t) for t in e.get("top_logprobs", [])]}
                        for e in entries], "refusal": None}


def completion_logprobs(model, entries, offset: int) -> dict | None:
    """The legacy completions shape: parallel lists, alternatives as {text: logprob}."""
    if entries is None:
        return None
    tokens, lps, tops, offsets = [], [], [], []
    for e in entries:
        text = model.token_piece(e["token"])
        tokens.append(text)
        lps.append(e["logprob"])
        tops.append({model.token_piece(t["token"]): t["logprob"] for t in e.get("top_logprobs", [])})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


async def _begin(request: Request, body: schema.Body, translated, prefix: str, kind: str):
    """The call (from the validated ``body``), its structured-output plan, the generation
    started, and the fields every reply (or chunk) of it carries."""
    call = translated(body)
    plan = structured.plan_for(call)
    gen = await generation.start(request.app.state.slmrun, call, request, extra=plan.params)
    base = {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "object": kind, "created": int(time.time()),
            "model": gen.key, "system_fingerprint": FINGERPRINT}
    return call, plan, gen, base


async def chat_completions(request: Request):
    body = await schema.parse(request, schema.ChatCompletionRequest)
    kb = knowledge.served(request, body.model)
    if kb is not None:  # `serve --kb NAME`: a grounded answer
        return await knowledge.openai_chat(request, kb, body)
    call, plan, gen, base = await _begin(request, body, translate.openai_chat, "chatcmpl", "chat.completion.chunk")
    if call.stream:
        return EngineStream(gen.response, _chat_chunks(gen, call, plan, base), media_type="text/event-stream",
                            headers={**SSE_HEADERS, **_dropped_header(gen)})
    await wait_or_disconnect(request, gen.response)
    r = gen.response
    message, finish = plan.message(r.text, r.finish_reason)
    return JSONResponse({
        **base, "object": "chat.completion",
        "choices": [{"index": 0, "message": message,
                     "logprobs": chat_logprobs(gen.model, r.logprobs) if call.logprobs is not None else None,
                     "finish_reason": _finish(finish)}],
        "usage": usage(r.stats)}, headers=_dropped_header(gen))


def _dropped_header(gen) -> dict:
    return {"X-Slmrun-Dropped-Messages": str(gen.dropped)} if gen.dropped else {}


async def _chat_chunks(gen, call, plan, base):
    def chunk(delta: dict, finish=None, logprobs=None) -> str:
        c = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}
        if call.include_usage:
            c["usage"] = None
        return sse(c)

    r = gen.response
    try:
        yield chunk({"role": "assistant", "content": ""})
        async for piece in structured.stream_text(r, plan):
            yield chunk({"content": piece})
        message, finish = plan.message(r.text, r.finish_reason)
        if message.get("tool_calls"):  # sent whole, once its arguments are complete
            yield chunk({"tool_calls": [{"index": i, **c} for i, c in enumerate(message["tool_calls"])]})
        lp = chat_logprobs(gen.model, r.logprobs) if call.logprobs is not None else None
        yield chunk({}, finish=_finish(finish), logprobs=lp)
        if call.include_usage:
            yield sse({**base, "choices": [], "usage": usage(r.stats)})
    except SlmrunError as exc:  # after the headers: the error travels as an event
        yield sse(error_body(exc, "/v1")[1])
    yield "data: [DONE]\n\n"


async def completions(request: Request):
    call, plan, gen, base = await _begin(request, await schema.parse(request, schema.CompletionRequest),
                                         translate.openai_completion, "cmpl", "text_completion")
    echo = call.prompt if call.echo and isinstance(call.prompt, str) else ""
    if call.stream:
        return EngineStream(gen.response, _completion_chunks(gen, call, base, echo), media_type="text/event-stream",
                            headers=SSE_HEADERS)
    await wait_or_disconnect(request, gen.response)
    r = gen.response
    lp = completion_logprobs(gen.model, r.logprobs, len(echo)) if call.logprobs is not None else None
    return JSONResponse({**base, "choices": [{"text": echo + r.text, "index": 0, "logprobs": lp,
                                              "finish_reason": _finish(r.finish_reason)}],
                         "usage": usage(r.stats)})


async def _completion_chunks(gen, call, base, echo: str):
    def chunk(text: str, finish=None, logprobs=None) -> str:
        c = {**base, "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}]}
        if call.include_usage:
            c["usage"] = None
        return sse(c)

    r = gen.response
    try:
        if echo:
            yield chunk(echo)
        async for piece in r:
            yield chunk(piece)
        lp = completion_logprobs(gen.model, r.logprobs, len(echo)) if call.logprobs is not None else None
        yield chunk("", finish=_finish(r.finish_reason), logprobs=lp)
        if call.include_usage:
            yield sse({**base, "choices": [], "usage": usage(r.stats)})
    except SlmrunError as exc:
        yield sse(error_body(exc, "/v1")[1])
    yield "data: [DONE]\n\n"


def _model_object(ref: str, created: float) -> dict:
    return {"id": ref, "object": "model", "created": int(created), "owned_by": "slmrun"}


def _models(bases: dict) -> list[dict]:
    """The model objects of every stored and created model, and of each knowledge base served."""
    from .. import store
    from ..custom.catalog import list_rows

    data = [_model_object(m.ref, m.modified) for m in store.list_models()]
    data += [_model_object(r["name"], r["modified"]) for r in list_rows()]
    for name, info in knowledge.listed(bases):  # `serve --kb`: a knowledge base answers as a model
        data.append({**_model_object(name, info["updated"]), "owned_by": "slmrun-knowledge"})
    return data


async def list_models(request: Request):
    data = await asyncio.to_thread(_models, request.app.state.slmrun.knowledge)
    return JSONResponse({"object": "list", "data": data})


async def get_model(request: Request):
    from .. import store
    from ..custom.catalog import list_rows
    from ..store import shown

    ref = request.path_params["model"]

    def stored():
        return ([(m.ref, m.name, m.modified) for m in store.list_models()]
                + [(r["name"], r["name"], r["modified"]) for r in list_rows()])

    for model_id, name, modified in await asyncio.to_thread(stored):
        if ref in (model_id, name):
            return JSONResponse(_model_object(ref, modified))
    kb = knowledge.served(request, ref)
    if kb is not None:
        (_, info), = await asyncio.to_thread(knowledge.listed, {kb.name: kb})
        return JSONResponse({**_model_object(ref, info["updated"]), "owned_by": "slmrun-knowledge"})
    raise ModelNotFoundError(f"no model {shown(ref)} in the store", hint="GET /v1/models lists them.")


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
]
