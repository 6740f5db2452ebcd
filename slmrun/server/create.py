"""Ollama's model-making routes: POST /api/create (its JSON form), POST /api/copy, and
HEAD/POST /api/blobs/DIGEST (the files a client sends for ``files`` and ``adapters``, which
is how `ollama create` sends a local GGUF). A request names files only inside the store
(blobs, or a path under it) unless the server was started with --allow-paths."""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import InvalidArgumentError, ModelfileError
from .http import ndjson, read_json
from .messages import bad

log = logging.getLogger("slmrun.server")


def _digest_file(value, field: str) -> str:
    """The stored blob a ``files``/``adapters`` entry names, as a path; 400 if not uploaded."""
    from ..custom.blobs import blob_path

    if not isinstance(value, str):
        raise bad(field, 'a digest such as "sha256:..."', value)
    path = blob_path(value)
    if not path.is_file():
        raise InvalidArgumentError(f"{field}: no blob {value} on this server",
                                   hint=f"Upload the file first: POST /api/blobs/{value}.")
    return str(path)


def modelfile_from_body(body: dict):
    """(name, Modelfile) from /api/create's JSON; every field checked (400s name it)."""
    from ..custom import parameters as P
    from ..custom.modelfile import ROLES, Adapter, Modelfile

    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgumentError("model is required: the name of the model to create")
    if body.get("quantize") or body.get("quantization"):
        raise InvalidArgumentError("quantize is not supported: slmrun does not convert weights",
                                   hint="Pull or import the quant you want and create FROM it.")
    for key in ("draft_files", "remote_host", "renderer", "parser"):
        if body.get(key):
            raise InvalidArgumentError(f"{key} is not supported by slmrun", hint=f"Leave {key} out.")
    src, files = body.get("from"), body.get("files")
    if files:
        if not isinstance(files, dict) or len(files) != 1:
            raise bad("files", "one GGUF file: {\"model.gguf\": \"sha256:...\"}", files)
        if src:
            raise InvalidArgumentError("give from or files, not both")
        (fname, digest), = files.items()
        src = _digest_file(digest, f"files[{fname!r}]")
    if not isinstance(src, str) or not src.strip():
        raise InvalidArgumentError("from (a model name) or files (an uploaded GGUF) is required")
    params: dict = {}
    raw_params = body.get("parameters") or {}
    if not isinstance(raw_params, dict):
        raise bad("parameters", "an object", raw_params)
    for key, value in raw_params.items():
        try:
            if key == "stop":
                values = [value] if isinstance(value, str) else value
                if not isinstance(values, list):
                    raise bad("parameters.stop", "a string or a list of strings", value)
                params["stop"] = tuple(P.convert("stop", v) for v in values)
            else:
                params[key] = P.convert(key, value)
        except ModelfileError as exc:
            raise ModelfileError(f"parameters: {exc.message}", hint=exc.hint) from None
    messages = body.get("messages") or []
    if not isinstance(messages, list):
        raise bad("messages", "a list of {role, content}", messages)
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise bad(f"messages[{i}]", "{role: system | user | assistant, content: string}", m)
    adapters = body.get("adapters") or {}
    if not isinstance(adapters, dict):
        raise bad("adapters", '{"adapter.gguf": "sha256:..."}', adapters)
    license_ = body.get("license") or ()
    license_ = (license_,) if isinstance(license_, str) else license_
    if not isinstance(license_, (list, tuple)) or not all(isinstance(x, str) for x in license_):
        raise bad("license", "a string or a list of strings", body.get("license"))
    for key in ("system", "template"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise bad(key, "a string", body[key])
    mf = Modelfile(from_=src.strip(), parameters=params, system=body.get("system"),
                   messages=tuple({"role": m["role"], "content": m["content"]} for m in messages),
                   adapters=tuple(Adapter(_digest_file(d, f"adapters[{k!r}]")) for k, d in adapters.items()),
                   license=tuple(license_), template=body.get("template") or None)
    return name.strip(), mf


async def _forget(state, name: str) -> None:
    """After a create, copy or delete: names resolve anew, and loaded models built on ``name``
    (or named so) unload, so the next request sees the new settings."""
    from ..custom.resolve import chain

    state.manager.forget_names()
    for entry in state.manager.loaded():
        try:
            built_on = {m.name for m in await asyncio.to_thread(chain, entry.key)}
        except ModelfileError:
            built_on = set()
        if entry.key == name or name in built_on:
            await state.manager.unload(entry.key)


async def create(request: Request):
    from ..custom.catalog import create as create_model

    state = request.app.state.slmrun
    body = await read_json(request)
    name, mf = modelfile_from_body(body)
    statuses: list[str] = []
    model = await asyncio.to_thread(create_model, name, mf, allow_paths=state.settings.allow_paths,
                                    progress=statuses.append)
    await _forget(state, model.name)
    log.info("created %s FROM %s", model.name, model.from_)
    if body.get("stream", True) is False:
        return JSONResponse({"status": "success"})

    async def lines():
        for status in statuses:
            yield ndjson({"status": status})
    from .ollama_api import _StreamOnly
    return _StreamOnly(lines())


async def copy(request: Request):
    from ..custom.catalog import copy as copy_model
    from .translate import check_name, model_ref

    state = request.app.state.slmrun
    body = await read_json(request)
    src, dst = body.get("source"), body.get("destination")
    for key, value in (("source", src), ("destination", dst)):
        if not isinstance(value, str) or not value.strip():
            raise bad(key, "a model name", value)
    src, dst = check_name(model_ref(src.strip())), check_name(model_ref(dst.strip()))
    made = await asyncio.to_thread(copy_model, src, dst)
    await _forget(state, made.name)
    return Response(status_code=200)


async def blob_head(request: Request):
    from ..custom.blobs import blob_path

    path = blob_path(request.path_params["digest"])
    return Response(status_code=200 if path.is_file() else 404)


async def blob_post(request: Request):
    from ..custom.blobs import BlobWriter
    from ..errors import ChecksumMismatchError

    writer = BlobWriter(request.path_params["digest"])
    if writer.path.is_file():
        writer.abort()
        return Response(status_code=200)
    try:
        async for chunk in request.stream():
            writer.write(chunk)
        await asyncio.to_thread(writer.finish)
    except ChecksumMismatchError as exc:
        raise InvalidArgumentError(f"digest mismatch: {exc.message}", hint=exc.hint) from None
    except BaseException:
        writer.abort()
        raise
    return Response(status_code=201)


routes = [
    Route("/api/create", create, methods=["POST"]),
    Route("/api/copy", copy, methods=["POST"]),
    Route("/api/blobs/{digest}", blob_head, methods=["HEAD"]),
    Route("/api/blobs/{digest}", blob_post, methods=["POST"]),
]
