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
from ..errors import InvalidArgumentError
from . import translate
from .http import read_json
from .messages import bad as _bad


def _model(body: dict) -> str:
    name = body.get("model")
    if name is None or name == "":
        return config.embed_model()
    if not isinstance(name, str):
        raise _bad("model", "a string", name)
    return translate.check_name(translate.model_ref(name.strip()))


def _check_count(inputs) -> None:
    limit = config.max_embed_inputs()
    if isinstance(inputs, list) and len(inputs) > limit and not all(isinstance(t, int) for t in inputs):
        raise InvalidArgumentError(f"input has {len(inputs)} items; at most {limit} are taken in one request",
                                   hint="Send them in several requests (SLMRUN_MAX_EMBED_INPUTS raises the limit).")


def _check_dimensions(value, model) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad("dimensions", "a positive integer", value)
    if value != model.n_embd:
        raise InvalidArgumentError(f"{model.name} gives {model.n_embd}-dimensional embeddings and cannot shorten "
                                   f"them to {value} (dimensions)", hint=f"Leave dimensions out, or send {model.n_embd}.")


async def _embed(request: Request, ref: str, inputs, *, normalize: bool, truncate: bool,
                 keep_alive: float | None = None, dimensions=None):
    """Lease the model, embed in a worker thread, release; (lease, Embeddings, seconds)."""
    state = request.app.state.slmrun
    lease = await state.manager.lease(ref, keep_alive=keep_alive)
    note = request.scope.get("slmrun.log", {})
    note["model"] = lease.entry.key
    try:
        _check_dimensions(dimensions, lease.model)
        t0 = time.perf_counter()
        e = await asyncio.to_thread(lease.model.embed, inputs, normalize=normalize, truncate=truncate)
        seconds = time.perf_counter() - t0
    finally:
        lease.release()
    note.update(inputs=len(e), tokens=sum(e.n_tokens))
    state.metrics.embeddings_done(lease.entry.key, len(e), sum(e.n_tokens))
    return lease, e, seconds


# --- OpenAI -------------------------------------------------------------------------------------

async def openai_embeddings(request: Request):
    body = await read_json(request)
    if "input" not in body:
        raise InvalidArgumentError("input is required: a string, a list of strings, or token ids")
    inputs = body["input"]
    if inputs == "" or inputs == []:
        raise InvalidArgumentError("input is empty", hint="Send a non-empty string or list.")
    _check_count(inputs)
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise _bad("encoding_format", '"float" or "base64"', fmt)
    lease, e, _ = await _embed(request, _model(body), inputs, normalize=True, truncate=False,
                               dimensions=body.get("dimensions"))
    if fmt == "base64":  # what the openai client asks for by default: little-endian float32 bytes
        data = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in e.vectors]
    else:
        data = e.tolist()
    n = sum(e.n_tokens)
    return JSONResponse({"object": "list", "model": lease.entry.key,
                         "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(data)],
                         "usage": {"prompt_tokens": n, "total_tokens": n}})


# --- Ollama ---------------------------------------------------------------------------------------

def _ollama_common(body: dict) -> tuple[str, float | None]:
    name = body.get("model")
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgumentError("model is required: a name from /api/tags")
    keep_alive = translate.parse_duration(body["keep_alive"]) if body.get("keep_alive") is not None else None
    translate.ollama_options(body.get("options"))  # checks its shape; sampling options mean nothing here
    return translate.check_name(translate.model_ref(name.strip())), keep_alive


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


async def ollama_embed(request: Request):
    body = await read_json(request)
    ref, keep_alive = _ollama_common(body)
    inputs = body.get("input")
    if inputs is None or inputs == "" or inputs == []:
        return JSONResponse({"model": body["model"], "embeddings": []})
    if not isinstance(inputs, (str, list)) or (isinstance(inputs, list)
                                              and not all(isinstance(x, str) for x in inputs)):
        raise _bad("input", "a string or a list of strings", inputs)
    _check_count(inputs)
    truncate = body.get("truncate", True)
    if not isinstance(truncate, bool):
        raise _bad("truncate", "true or false", truncate)
    t0 = time.perf_counter()
    lease, e, seconds = await _embed(request, ref, inputs, normalize=True, truncate=truncate,
                                     keep_alive=keep_alive, dimensions=body.get("dimensions"))
    return JSONResponse({"model": lease.entry.key, "embeddings": e.tolist(),
                         "total_duration": _ns(time.perf_counter() - t0), "load_duration": _ns(lease.load_s),
                         "prompt_eval_count": sum(e.n_tokens)})


async def ollama_embeddings(request: Request):
    """Ollama's older endpoint: one prompt, the vector as pooled (not normalised)."""
    body = await read_json(request)
    ref, keep_alive = _ollama_common(body)
    prompt = body.get("prompt")
    if prompt is None or prompt == "":
        return JSONResponse({"embedding": []})
    if not isinstance(prompt, str):
        raise _bad("prompt", "a string", prompt)
    _, e, _ = await _embed(request, ref, prompt, normalize=False, truncate=True, keep_alive=keep_alive)
    return JSONResponse({"embedding": e.tolist()[0]})


routes = [
    Route("/v1/embeddings", openai_embeddings, methods=["POST"]),
    Route("/api/embed", ollama_embed, methods=["POST"]),
    Route("/api/embeddings", ollama_embeddings, methods=["POST"]),
]
