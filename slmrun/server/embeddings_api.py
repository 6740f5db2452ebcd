"""Embeddings over HTTP, on the same model manager and engines as chat: OpenAI's
POST /v1/embeddings, Ollama's POST /api/embed and its older POST /api/embeddings.

What each API does with the edge cases, as their references and servers do:
- an empty input: OpenAI refuses it (400); Ollama answers an empty list (`embeddings: []`,
  or `embedding: []` on the older endpoint) without loading anything;
- an input longer than the model's context: OpenAI refuses it (400, context_length_exceeded);
  Ollama cuts it unless `truncate: false`;
- vectors: L2-normalised, except on Ollama's older /api/embeddings, which returns them as pooled;
- `dimensions`: accepted when it equals the model's own size (no model here was trained to be
  shortened, Matryoshka-style); any other value is a 400 naming the size.
"""

from __future__ import annotations

import asyncio
import base64
import time

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .. import config
from . import schema, translate
from .http import FastJSONResponse
from .request import RequestError


def _model(name: str | None) -> str:
    return translate.model_ref(name.strip()) if name and name.strip() else config.embed_model()


def _check_count(inputs) -> None:
    limit = config.max_embed_inputs()
    if isinstance(inputs, list) and len(inputs) > limit and not all(isinstance(t, int) for t in inputs):
        raise RequestError(f"input has {len(inputs)} items; at most {limit} are taken in one request", param="input",
                           hint="Send them in several requests (SLMRUN_MAX_EMBED_INPUTS raises the limit).")


def _check_dimensions(value, model) -> None:
    if value is not None and value != model.n_embd:
        raise RequestError(f"{model.name} gives {model.n_embd}-dimensional embeddings and cannot shorten "
                           f"them to {value} (dimensions)", param="dimensions",
                           hint=f"Leave dimensions out, or send {model.n_embd}.")


INLINE_CHARS = 2048  # inputs up to this many characters in all are tokenized on the event loop


def _short(inputs) -> bool:
    if isinstance(inputs, str):
        return len(inputs) <= INLINE_CHARS
    total = 0
    for item in inputs:
        total += len(item) if isinstance(item, (str, list)) else 1
        if total > INLINE_CHARS:
            return False
    return True


async def _embed(request: Request, ref: str, inputs, *, normalize: bool, truncate: bool,
                 keep_alive: float | None = None, dimensions=None):
    """Lease the model, embed on its engine, release; (lease, Embeddings, seconds)."""
    state = request.app.state.slmrun
    lease = await state.manager.lease(ref, keep_alive=keep_alive)
    note = request.scope.get("slmrun.log", {})
    note["model"] = lease.entry.key
    try:
        _check_dimensions(dimensions, lease.model)
        t0 = time.perf_counter()
        model = lease.model
        if _short(inputs):  # tokenizing a few hundred characters costs less than a thread hop
            future = model.embed_future(inputs, normalize=normalize, truncate=truncate)
        else:  # long inputs tokenize in a worker, off the event loop
            future = await asyncio.to_thread(model.embed_future, inputs, normalize=normalize, truncate=truncate)
        e = await asyncio.wrap_future(future)
        seconds = time.perf_counter() - t0
    finally:
        lease.release()
    note.update(inputs=len(e), tokens=sum(e.n_tokens))
    state.metrics.embeddings_done(lease.entry.key, len(e), sum(e.n_tokens))
    return lease, e, seconds


# --- OpenAI -------------------------------------------------------------------------------------

async def openai_embeddings(request: Request):
    body = await schema.parse(request, schema.EmbeddingsRequest)
    inputs = body.input
    if inputs == "" or inputs == []:
        raise RequestError("input is empty", param="input", hint="Send a non-empty string or list.")
    _check_count(inputs)
    fmt = body.encoding_format or "float"
    lease, e, _ = await _embed(request, _model(body.model), inputs, normalize=True, truncate=False,
                               dimensions=body.dimensions)
    if fmt == "base64":  # what the openai client asks for by default: little-endian float32 bytes
        data = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in e.vectors]
    else:
        data = list(e.vectors)  # rows as float32 arrays: FastJSONResponse writes them directly
    n = sum(e.n_tokens)
    return FastJSONResponse({"object": "list", "model": lease.entry.key,
                         "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(data)],
                         "usage": {"prompt_tokens": n, "total_tokens": n}})


# --- Ollama ---------------------------------------------------------------------------------------

def _keep_alive(body) -> float | None:
    return translate.parse_duration(body.keep_alive) if body.keep_alive is not None else None


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


async def ollama_embed(request: Request):
    body = await schema.parse(request, schema.EmbedRequest)
    if body.input is None or body.input == "" or body.input == []:
        return JSONResponse({"model": body.model or config.embed_model(), "embeddings": []})
    _check_count(body.input)
    t0 = time.perf_counter()
    lease, e, _ = await _embed(request, _model(body.model), body.input, normalize=True,
                               truncate=body.truncate is not False, keep_alive=_keep_alive(body),
                               dimensions=body.dimensions)
    return FastJSONResponse({"model": lease.entry.key, "embeddings": e.vectors,
                             "total_duration": _ns(time.perf_counter() - t0), "load_duration": _ns(lease.load_s),
                             "prompt_eval_count": sum(e.n_tokens)})


async def ollama_embeddings(request: Request):
    """Ollama's older endpoint: one prompt, the vector as pooled (not normalised)."""
    body = await schema.parse(request, schema.LegacyEmbeddingsRequest)
    if not body.prompt:
        return JSONResponse({"embedding": []})
    _, e, _ = await _embed(request, _model(body.model), body.prompt, normalize=False, truncate=True,
                           keep_alive=_keep_alive(body))
    return FastJSONResponse({"embedding": e.vectors[0]})


routes = [
    Route("/v1/embeddings", openai_embeddings, methods=["POST"]),
    Route("/api/embed", ollama_embed, methods=["POST"]),
    Route("/api/embeddings", ollama_embeddings, methods=["POST"]),
]
