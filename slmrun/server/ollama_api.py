"""Ollama's API: /api/chat, /api/generate (NDJSON streams), /api/tags, /api/show, /api/ps,
/api/version, /api/pull, /api/delete; shapes as Ollama's docs/api.md gives them."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..errors import SlmrunError
from . import generation, knowledge, schema, structured, translate
from .http import EngineStream, error_body, ndjson, wait_or_disconnect

log = logging.getLogger("slmrun.server")
NDJSON = "application/x-ndjson"


def now_iso(ts: float | None = None) -> str:
    t = datetime.now(timezone.utc) if ts is None else datetime.fromtimestamp(ts, timezone.utc)
    return t.isoformat().replace("+00:00", "Z")


def ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _done_fields(gen, reason: str) -> dict:
    s = gen.response.stats
    return {"done": True, "done_reason": reason if reason in ("stop", "length") else "stop",
            "total_duration": ns(s.total_s + gen.load_s), "load_duration": ns(gen.load_s),
            "prompt_eval_count": s.prompt_tokens, "prompt_eval_duration": ns(s.prompt_s),
            "eval_count": s.generated_tokens, "eval_duration": ns(s.gen_s),
            # not Ollama's (its clients ignore it): the engine's Stats, and the oldest turns left out
            # to fit the context, for `slmrun run` and `slmrun chat` answered by this server (slmrun/client)
            "slmrun": {"stats": s.to_dict(), "dropped": gen.dropped}}


# Ollama's options that choose how a model is loaded: here the server's command line does.
LOAD_TIME = frozenset({"num_ctx", "num_batch", "num_thread", "num_gpu", "main_gpu", "use_mmap", "use_mlock",
                       "numa", "low_vram", "vocab_only", "f16_kv", "num_keep", "logits_all"})


def _warn_ignored(ignored: list[str]) -> None:
    load = [k for k in ignored if k in LOAD_TIME]
    other = [k for k in ignored if k not in LOAD_TIME]
    if load:
        log.warning("ignoring options %s: the server's command line sets how models load", ", ".join(load))
    if other:
        log.warning("ignoring options %s: not supported here", ", ".join(other))


def _name(body: schema.NamedRequest) -> str:
    name = (body.model or body.name or "").strip()
    if not name:
        raise schema.RequestError("model is required: a name from /api/tags", param="model",
                                  code="missing_required_parameter")
    return translate.model_ref(name)


async def _load_or_unload(state, call, empty: dict):
    """An empty prompt (or no messages) loads the model; with keep_alive 0 it unloads it."""
    ref = translate.model_ref(call.model or state.default_model)
    if call.keep_alive == 0:
        key = await asyncio.to_thread(state.manager.resolve, ref)
        await state.manager.unload(key)
        reason = "unload"
    else:
        lease = await state.manager.lease(ref, keep_alive=call.keep_alive)
        key = lease.entry.key
        lease.release()
        reason = "load"
    return JSONResponse({"model": key, "created_at": now_iso(), **empty, "done_reason": reason, "done": True})


async def chat(request: Request):
    state = request.app.state.slmrun
    body = await schema.parse(request, schema.OllamaChatRequest)
    kb = knowledge.served(request, body.model)
    if kb is not None:  # `serve --kb NAME`: a grounded answer
        return await knowledge.ollama_chat(request, kb, body)
    call, ignored = translate.ollama_chat(body)
    _warn_ignored(ignored)
    empty = {"message": {"role": "assistant", "content": ""}}
    if not call.messages:
        return await _load_or_unload(state, call, empty)
    plan = structured.plan_for(call)
    gen = await generation.start(state, call, request, extra=plan.params)

    def final(streamed: bool) -> dict:
        r = gen.response
        message, finish = plan.message(r.text, r.finish_reason)
        return {"model": gen.key, "created_at": now_iso(),
                "message": _ollama_message(message, text_sent=streamed),
                **_done_fields(gen, "stop" if finish == "tool_calls" else finish)}

    if call.stream:
        async def chunks():
            r = gen.response
            try:
                async for piece in structured.stream_text(r, plan):
                    yield ndjson({"model": gen.key, "created_at": now_iso(),
                                  "message": {"role": "assistant", "content": piece}, "done": False})
                yield ndjson(final(True))
            except SlmrunError as exc:
                yield ndjson(error_body(exc, "/api")[1])
        return EngineStream(gen.response, chunks(), media_type=NDJSON)
    await wait_or_disconnect(request, gen.response)
    return JSONResponse(final(False))


def _ollama_message(message: dict, *, text_sent: bool) -> dict:
    """OpenAI-style message -> Ollama's: tool-call arguments as objects; the content empty in
    a stream's last line when the text went out already."""
    import json

    out = {"role": "assistant", "content": "" if text_sent and not message.get("tool_calls") else
           message.get("content") or ""}
    calls = message.get("tool_calls")
    if calls:
        out["tool_calls"] = [{"function": {"name": c["function"]["name"],
                                           "arguments": json.loads(c["function"]["arguments"])}} for c in calls]
    return out


async def generate(request: Request):
    state = request.app.state.slmrun
    call, ignored = translate.ollama_generate(await schema.parse(request, schema.GenerateRequest))
    _warn_ignored(ignored)
    if not call.prompt and not call.context:
        return await _load_or_unload(state, call, {"response": ""})
    plan = structured.plan_for(call)
    gen = await generation.start(state, call, request, extra=plan.params)

    def final(text: str) -> dict:
        r = gen.response
        out = {"model": gen.key, "created_at": now_iso(), "response": text, **_done_fields(gen, r.finish_reason)}
        if gen.prompt_tokens is not None:
            out["context"] = list(gen.prompt_tokens) + r.tokens
        return out

    if call.stream:
        async def chunks():
            r = gen.response
            try:
                async for piece in r:
                    yield ndjson({"model": gen.key, "created_at": now_iso(), "response": piece, "done": False})
                yield ndjson(final(""))
            except SlmrunError as exc:
                yield ndjson(error_body(exc, "/api")[1])
        return EngineStream(gen.response, chunks(), media_type=NDJSON)
    await wait_or_disconnect(request, gen.response)
    return JSONResponse(final(gen.response.text))


# --- models -----------------------------------------------------------------------------------

_FACTS: dict[tuple[str, float], dict] = {}


def _facts(stored) -> dict:
    """GGUF facts of a stored file, read once per file version (tags are listed often)."""
    from ..gguf_info import read_info

    key = (str(stored.path), stored.modified)
    facts = _FACTS.get(key)
    if facts is None:
        try:
            info = read_info(stored.path)
            facts = {"family": info.architecture, "n_params": info.n_params, "context_length": info.context_length}
        except SlmrunError:
            facts = {"family": stored.architecture or "unknown", "n_params": 0, "context_length": None}
        _FACTS[key] = facts
    return facts


def _details(stored) -> dict:
    from .manager import _param_size

    f = _facts(stored)
    return {"parent_model": "", "format": "gguf", "family": f["family"], "families": [f["family"]],
            "parameter_size": _param_size(f["n_params"]) if f["n_params"] else "", "quantization_level": stored.quant}


def _tags() -> dict:
    from .. import store
    from ..custom.catalog import list_rows

    models = [{"name": m.ref, "model": m.ref, "modified_at": now_iso(m.modified), "size": m.size,
               "digest": m.sha256 or "", "details": _details(m)} for m in store.list_models()]
    for r in list_rows():  # created models: Ollama's clients expect a tag, and send it back
        name = f"{r['name']}:latest"
        models.append({"name": name, "model": name, "modified_at": now_iso(r["modified"]), "size": r["size"],
                       "digest": "", "details": {"parent_model": r["from"], "format": "gguf", "family": "",
                                                 "families": [], "parameter_size": "",
                                                 "quantization_level": r["quant"]}})
    return {"models": models}


def _knowledge_tags(bases: dict) -> list[dict]:
    """`serve --kb`: each knowledge base listed as a model."""
    return [{"name": name, "model": name, "modified_at": now_iso(info["updated"]), "size": info["size_bytes"],
             "digest": "", "details": {"parent_model": "", "format": "slmrun-knowledge", "family": "knowledge",
                                       "families": ["knowledge"], "parameter_size": "", "quantization_level": ""}}
            for name, info in knowledge.listed(bases)]


async def tags(request: Request):
    out = await asyncio.to_thread(_tags)
    bases = request.app.state.slmrun.knowledge
    if bases:
        out["models"] += await asyncio.to_thread(_knowledge_tags, bases)
    return JSONResponse(out)


def _show(ref: str) -> dict:
    from .. import api

    r = api.resolve(ref, allow_path=False)
    info = api.inspect_file(r)
    arch = info.architecture
    d = api.describe(r.key, verify=False)
    model_info = {"general.architecture": arch, "general.parameter_count": info.n_params,
                  f"{arch}.context_length": info.context_length, f"{arch}.embedding_length": info.embedding_length,
                  f"{arch}.block_count": info.block_count, f"{arch}.attention.head_count": info.head_count,
                  f"{arch}.attention.head_count_kv": info.head_count_kv, f"{arch}.vocab_size": info.vocab_size}
    stored = r.stored
    details = _details(stored) if stored is not None else {"format": "gguf", "family": arch, "families": [arch],
                                                            "parameter_size": "", "quantization_level": info.quant}
    out = {"license": d.get("license", ""), "modelfile": f"# slmrun model\nFROM {r.name}:{(r.quant or info.quant).lower()}\n",
           "parameters": "", "template": info.chat_template or "", "details": details, "model_info": model_info,
           "capabilities": structured.capabilities(), "modified_at": now_iso(stored.modified if stored else None)}
    if r.custom is not None:  # a created model: its Modelfile's settings
        from ..custom import manifest
        from ..custom.catalog import modelfile_text
        from ..custom.parameters import describe

        c = r.custom
        made = manifest.read(c.name)
        out.update(modelfile=modelfile_text(c.name), parameters=describe(c.parameters), system=c.system or "",
                   details={**details, "parent_model": c.base},
                   modified_at=now_iso(made.modified if made else None))
        if c.template is not None:
            out["template"] = c.template
        if c.messages:
            out["messages"] = [dict(m) for m in c.messages]
    return out


async def show(request: Request):
    return JSONResponse(await asyncio.to_thread(_show, _name(await schema.parse(request, schema.NamedRequest))))


async def ps(request: Request):
    manager = request.app.state.slmrun.manager
    out = []
    for m in manager.loaded():
        st = m.model.status()
        if m.in_flight:
            until = time.time() + m.keep_alive if m.keep_alive != float("inf") else None
        else:
            left = m.expires_at - time.monotonic()
            until = time.time() + left if left != float("inf") else None
        expires = now_iso(until) if until is not None else "9999-12-31T23:59:59Z"
        d = m.details
        out.append({"name": m.key, "model": m.key, "size": m.bytes, "digest": d.get("digest") or "",
                    "details": {"parent_model": "", "format": "gguf", "family": d.get("family"),
                                "families": [d.get("family")], "parameter_size": d.get("parameter_size"),
                                "quantization_level": d.get("quantization_level")},
                    "expires_at": expires, "size_vram": 0, "context_length": m.model.n_ctx,
                    "slmrun": {"slots": st["n_parallel"], "slots_busy": st["slots_busy"],
                               "queue_depth": st["queue_depth"], "in_flight": m.in_flight,
                               "keep_alive": translate.format_duration(m.keep_alive),
                               "loaded_at": now_iso(m.loaded_at),
                               # serve --lora's adapters, applied by default: a `slmrun run` of its own differs
                               "lora": [{"path": str(path), "scale": scale} for path, scale in manager.lora]
                               if m.key in manager.lora_keys else []}})
    return JSONResponse({"models": out})


async def version(request: Request):
    return JSONResponse({"version": __version__})


async def delete(request: Request):
    from .. import api

    state = request.app.state.slmrun
    ref = _name(await schema.parse(request, schema.NamedRequest))
    removed = await asyncio.to_thread(api.remove, ref)
    gone = {m.ref for m in removed}
    for entry in state.manager.loaded():
        if entry.key in gone:
            await state.manager.unload(entry.key)
    state.manager.forget_names()
    return Response(status_code=200)


async def pull(request: Request):
    from .pull import pull_events

    state = request.app.state.slmrun
    body = await schema.parse(request, schema.PullRequest)
    ref = _name(body)
    stream = body.stream is not False
    events = pull_events(ref, on_done=state.manager.forget_names)
    first = await events.__anext__()  # an unknown name fails here, as a 404, before any stream starts
    if not stream:
        last = first
        async for last in events:
            if "error" in last:
                break
        if "error" in last:
            return JSONResponse(last, status_code=last.pop("_status", 500))
        return JSONResponse({"status": "success"})

    async def lines():
        yield ndjson(first)
        async for event in events:
            event.pop("_status", None)
            yield ndjson(event)
    return _StreamOnly(lines())


class _StreamOnly(EngineStream):
    """A stream with no generation behind it (a pull keeps going if the client leaves)."""

    class _Nothing:
        def cancel(self) -> None:
            pass

    def __init__(self, chunks):
        super().__init__(self._Nothing(), chunks, media_type=NDJSON)


routes = [
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/tags", tags, methods=["GET"]),
    Route("/api/show", show, methods=["POST"]),
    Route("/api/ps", ps, methods=["GET"]),
    Route("/api/version", version, methods=["GET"]),
    Route("/api/pull", pull, methods=["POST"]),
    Route("/api/delete", delete, methods=["DELETE"]),
]
