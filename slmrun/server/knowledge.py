"""Knowledge bases over HTTP: `slmrun serve --kb NAME` serves NAME as a model, and /v1/rerank.

A chat request (OpenAI's /v1/chat/completions or Ollama's /api/chat) whose ``model`` is a
served knowledge base gets a grounded answer (KnowledgeBase.ask on the last user message),
answered by the server's default model through the model manager. The reply is an ordinary
chat reply; the sources travel in top-level ``sources`` and ``abstained`` fields that clients
ignore, and as footnotes in the text when the request says ``"footnotes": true`` (Ollama:
also ``options.footnotes``). A stream carries the whole answer in one piece: it is quoted
or checked whole before anything is sent.

/v1/rerank (also /rerank, /v1/reranking: llama-server's paths) takes llama-server's and
Jina's shape, ``{"model"?, "query", "documents": [str | {"text"}], "top_n"?, "return_documents"?}``,
and answers ``{"results": [{"index", "relevance_score", "document"?}]}``, best first; the score
is the model's P(yes) that the document answers the query (its own label probabilities).
"""

from __future__ import annotations

import asyncio
import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from ..errors import InvalidArgumentError
from .http import ndjson, read_json, sse
from .translate import model_ref


def served(request: Request, name) -> object | None:
    """The KnowledgeBase a request's model names, when the server serves it."""
    bases = getattr(request.app.state.slmrun, "knowledge", None) or {}
    return bases.get(model_ref(name)) if isinstance(name, str) else None


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidArgumentError("'messages' must be a non-empty list of {role, content} objects")
    return [m for m in messages if isinstance(m, dict)]


def _footnotes(body: dict) -> bool:
    options = body.get("options") if isinstance(body.get("options"), dict) else {}
    return bool(body.get("footnotes") or options.get("footnotes"))


async def _answer(request: Request, kb, body: dict):
    state = request.app.state.slmrun
    request.scope.get("slmrun.log", {})["model"] = f"kb:{kb.name}"
    lease = await state.manager.lease(model_ref(state.default_model))
    try:
        return await asyncio.to_thread(kb.ask_messages, _messages(body), model=lease.model)
    finally:
        lease.release()


async def openai_chat(request: Request, kb, body: dict):
    answer = await _answer(request, kb, body)
    text = answer.with_footnotes() if _footnotes(body) else answer.answer
    base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": kb.name,
            "sources": answer.sources, "abstained": answer.abstained}
    if body.get("stream"):
        async def events():
            for delta, finish in (({"role": "assistant", "content": ""}, None), ({"content": text}, None), ({}, "stop")):
                yield sse({**base, "object": "chat.completion.chunk",
                           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})
            yield "data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    return JSONResponse({**base, "object": "chat.completion",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "logprobs": None, "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})


async def ollama_chat(request: Request, kb, body: dict):
    t0 = time.perf_counter_ns()
    answer = await _answer(request, kb, body)
    text = answer.with_footnotes() if _footnotes(body) else answer.answer
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    done = {"model": kb.name, "created_at": now, "message": {"role": "assistant", "content": "" if body.get("stream", True) else text},
            "done": True, "done_reason": "stop", "total_duration": time.perf_counter_ns() - t0,
            "sources": answer.sources, "abstained": answer.abstained}
    if body.get("stream", True):  # Ollama streams unless told not to
        async def lines():
            yield ndjson({"model": kb.name, "created_at": now, "message": {"role": "assistant", "content": text},
                          "done": False})
            yield ndjson(done)
        return StreamingResponse(lines(), media_type="application/x-ndjson")
    return JSONResponse(done)


def _documents(value) -> list[str]:
    if not isinstance(value, list) or not value:
        raise InvalidArgumentError("'documents' must be a non-empty list of strings (or {\"text\": ...} objects)")
    out = []
    for i, d in enumerate(value):
        text = d.get("text") if isinstance(d, dict) else d
        if not isinstance(text, str) or not text.strip():
            raise InvalidArgumentError(f"documents[{i}] must be a non-empty string")
        out.append(text)
    return out


async def rerank(request: Request):
    from ..knowledge.retrieve import passage_for_rerank, score_passages

    body = await read_json(request)
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise InvalidArgumentError("'query' must be a non-empty string")
    documents = _documents(body.get("documents"))
    top_n = body.get("top_n", len(documents))
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
        raise InvalidArgumentError(f"'top_n' must be a positive integer, got {top_n!r}")
    state = request.app.state.slmrun
    name = body.get("model") or state.default_model
    request.scope.get("slmrun.log", {})["model"] = name
    lease = await state.manager.lease(model_ref(name))
    try:
        texts = [passage_for_rerank(query, None, d) for d in documents]
        scores = await asyncio.to_thread(score_passages, lease.model, texts)
        tokens = await asyncio.to_thread(lambda: sum(len(lease.model.tokenize(t)) for t in texts))
    finally:
        lease.release()
    order = sorted(range(len(documents)), key=lambda i: -scores[i])[:top_n]
    results = []
    for i in order:
        r = {"index": i, "relevance_score": scores[i]}
        if body.get("return_documents", False):
            r["document"] = {"text": documents[i]}
        results.append(r)
    return JSONResponse({"model": lease.entry.key, "object": "list", "results": results,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


routes = [Route(path, rerank, methods=["POST"]) for path in ("/v1/rerank", "/rerank", "/v1/reranking", "/reranking")]
