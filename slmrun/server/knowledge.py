"""Knowledge bases over HTTP: `slmrun serve --kb NAME` serves NAME as a model, and /v1/rerank.

A chat request (OpenAI's /v1/chat/completions or Ollama's /api/chat), validated as any other
(schema.py), whose ``model`` is a served knowledge base gets a grounded answer
(KnowledgeBase.ask on the last user message), answered by the server's default model, and
the question embedded by the base's embedding model, both leased from the model manager like
any request's model (a base built with a .gguf path loads that file itself). The reply is an
ordinary chat reply; the sources travel in top-level ``sources`` and ``abstained`` fields
that clients ignore, and as footnotes in the text when the request says ``"footnotes": true``
(Ollama: also ``options.footnotes``). A stream carries the whole answer in one piece: it is
quoted or checked whole before anything is sent.

/v1/rerank (also /rerank, /v1/reranking, /reranking: llama-server's paths) takes
llama-server's and Jina's shape, ``{"model"?, "query", "documents": [str | {"text"}],
"top_n"?, "return_documents"?}``, and answers ``{"results": [{"index", "relevance_score",
"document"?}]}``, best first. The score is a generative model's P(yes) that the document
answers the query (its own label probabilities), or an embedding model's cosine.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from .. import config
from . import schema
from .http import ndjson, sse
from .messages import chat_messages
from .request import RequestError
from .translate import model_ref

RERANK_PATHS = ("/v1/rerank", "/rerank", "/v1/reranking", "/reranking")


def served(request: Request, name) -> object | None:
    """The KnowledgeBase a request's ``model`` names, when the server serves it."""
    bases = getattr(request.app.state.slmrun, "knowledge", None) or {}
    if not bases or not isinstance(name, str):
        return None
    return bases.get(model_ref(name.strip().lower()))


def listed(bases: dict) -> list[tuple[str, dict]]:
    """(name, info) of each served knowledge base, for the model lists (worker thread: it reads
    their databases)."""
    return [(name, kb.info()) for name, kb in sorted(bases.items())]


def question_of(messages: list, api: str) -> str:
    """The last user message's text: the question (a small model answers best from one
    question and its passages; earlier turns are not re-sent)."""
    turns = chat_messages(messages, api=api)
    for i in range(len(turns) - 1, -1, -1):
        if turns[i]["role"] == "user":
            if not turns[i]["content"].strip():
                raise RequestError(f"messages[{i}].content is empty: there is no question to answer",
                                   param=f"messages[{i}].content")
            return turns[i]["content"]
    raise RequestError("messages has no user message: a knowledge base answers the last one", param="messages",
                       hint='End the messages with {"role": "user", "content": "..."}.')


def _footnotes(body) -> bool:
    options = getattr(body, "options", None)
    return bool(body.footnotes or (options is not None and options.footnotes))


async def _answer(request: Request, kb, question: str):
    from ..api import looks_like_path

    state = request.app.state.slmrun
    request.scope.get("slmrun.log", {})["model"] = f"kb:{kb.name}"
    lease = await state.manager.lease(model_ref(state.default_model))
    embed = None
    try:
        if kb.embed_model and not looks_like_path(kb.embed_model):
            embed = await state.manager.lease(kb.embed_model)
        return await asyncio.to_thread(kb.ask, question, model=lease.model,
                                       embed_with=embed.model if embed is not None else None)
    finally:
        lease.release()
        if embed is not None:
            embed.release()


async def openai_chat(request: Request, kb, body: schema.ChatCompletionRequest):
    answer = await _answer(request, kb, question_of(body.messages, "openai"))
    text = answer.with_footnotes() if _footnotes(body) else answer.answer
    base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": kb.name,
            "sources": answer.sources, "abstained": answer.abstained}
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    if body.stream:
        with_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def events():
            for delta, finish in (({"role": "assistant", "content": ""}, None), ({"content": text}, None), ({}, "stop")):
                yield sse({**base, "object": "chat.completion.chunk",
                           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})
            if with_usage:
                yield sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
            yield "data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    return JSONResponse({**base, "object": "chat.completion",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "logprobs": None, "finish_reason": "stop"}], "usage": usage})


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def ollama_chat(request: Request, kb, body: schema.OllamaChatRequest):
    if not body.messages:  # Ollama's way to load a model: nothing to load here
        return JSONResponse({"model": kb.name, "created_at": _now(), "message": {"role": "assistant", "content": ""},
                             "done_reason": "load", "done": True})
    t0 = time.perf_counter_ns()
    answer = await _answer(request, kb, question_of(body.messages, "ollama"))
    text = answer.with_footnotes() if _footnotes(body) else answer.answer
    stream = body.stream is not False  # Ollama streams unless told not to
    done = {"model": kb.name, "created_at": _now(), "message": {"role": "assistant", "content": "" if stream else text},
            "done": True, "done_reason": "stop", "total_duration": time.perf_counter_ns() - t0,
            "sources": answer.sources, "abstained": answer.abstained}
    if stream:
        async def lines():
            yield ndjson({"model": kb.name, "created_at": done["created_at"],
                          "message": {"role": "assistant", "content": text}, "done": False})
            yield ndjson(done)
        return StreamingResponse(lines(), media_type="application/x-ndjson")
    return JSONResponse(done)


async def rerank(request: Request):
    from ..errors import ContextOverflowError
    from ..knowledge.retrieve import cosine_scores, passage_for_rerank, score_passages

    body = await schema.parse(request, schema.RerankRequest)
    documents = [d if isinstance(d, str) else d.text for d in body.documents]
    limit = config.max_embed_inputs()
    if len(documents) > limit:
        raise RequestError(f"documents has {len(documents)} items; at most {limit} are taken in one request",
                           param="documents", hint="Send them in several requests (SLMRUN_MAX_EMBED_INPUTS "
                                                   "raises the limit).")
    state = request.app.state.slmrun
    name = body.model.strip() if body.model and body.model.strip() else state.default_model
    lease = await state.manager.lease(model_ref(name))
    request.scope.get("slmrun.log", {})["model"] = lease.entry.key
    model = lease.model
    try:
        if model.is_embedding_model:
            scores = await asyncio.to_thread(cosine_scores, model, body.query, documents)
            texts = [body.query, *documents]
        else:
            texts = [passage_for_rerank(body.query, None, d) for d in documents]
            scores = await asyncio.to_thread(score_passages, model, texts)
        tokens = await asyncio.to_thread(lambda: sum(len(model.tokenize(t)) for t in texts))
    except ContextOverflowError as exc:
        longest = max(range(len(documents)), key=lambda i: len(documents[i]))
        param = "query" if len(body.query) >= len(documents[longest]) else f"documents[{longest}]"
        raise RequestError(f"{param} is too long for {lease.entry.key}'s context: {exc.message}", param=param,
                           code="context_length_exceeded", hint="Send shorter passages.") from None
    finally:
        lease.release()
    top_n = body.top_n or len(documents)
    order = sorted(range(len(documents)), key=lambda i: -scores[i])[:top_n]
    results = []
    for i in order:
        r = {"index": i, "relevance_score": scores[i]}
        if body.return_documents:
            r["document"] = {"text": documents[i]}
        results.append(r)
    return JSONResponse({"model": lease.entry.key, "object": "list", "results": results,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


routes = [Route(path, rerank, methods=["POST"]) for path in RERANK_PATHS]
