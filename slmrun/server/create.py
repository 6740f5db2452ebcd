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
from . import schema
from .http import ndjson

log = logging.getLogger("slmrun.server")

# Ollama's /api/create fields slmrun cannot honour: refused by name, never silently ignored.
_UNSUPPORTED = {
    "quantize": "quantize is not supported here: create FROM a quant that is already in the store "
                "(`slmrun quantize` makes one)",
    "quantization": "quantization is not supported here: create FROM a quant that is already in the store",
    "modelfile": "modelfile (Ollama's older form of /api/create) is not supported: send its instructions as "
                 "fields (from, system, parameters, messages, adapters, template, license)",
    "path": "path (Ollama's older form of /api/create) is not supported: send from and the other fields",
    "draft_files": "draft_files is not supported by slmrun",
    "remote_host": "remote_host is not supported by slmrun",
    "renderer": "renderer is not supported by slmrun",
    "parser": "parser is not supported by slmrun",
}


def _digest_file(value: str, field: str) -> str:
    """The stored blob a ``files``/``adapters`` entry names, as a path; 400 if not uploaded."""
    from ..custom.blobs import blob_path

    try:
        path = blob_path(value)
    except InvalidArgumentError as exc:
        raise schema.RequestError(f"{field}: {exc.message}", param=field, hint=exc.hint) from None
    if not path.is_file():
        raise schema.RequestError(f"{field}: no blob {value} on this server", param=field,
                                  hint=f"Upload the file first: POST /api/blobs/{value}.")
    return str(path)


def modelfile_from_body(body):
    """(name, Modelfile) from /api/create's validated body (schema.CreateRequest, or a dict);
    what the declaration leaves (parameters by the Modelfile's table, blobs, the fields
    slmrun cannot honour) checked here, each refusal naming its field."""
    from ..custom import parameters as P
    from ..custom.modelfile import Adapter, Modelfile

    body = body if isinstance(body, schema.CreateRequest) else schema.validate(schema.CreateRequest, body)
    name = (body.model or body.name or "").strip()
    if not name:
        raise schema.RequestError("model is required: the name of the model to create", param="model",
                                  code="missing_required_parameter")
    for key, why in _UNSUPPORTED.items():
        if getattr(body, key) not in (None, "", [], {}):
            raise schema.RequestError(why, param=key, hint=f"Leave {key} out.")
    src, files = body.from_, body.files
    if files:
        if len(files) != 1:
            raise schema.bad("files", 'one GGUF file: {"model.gguf": "sha256:..."}', files)
        if src:
            raise schema.RequestError("give from or files, not both", param="files")
        (fname, digest), = files.items()
        src = _digest_file(digest, f"files[{fname!r}]")
    if not src or not src.strip():
        raise schema.RequestError("from (a model name) or files (an uploaded GGUF) is required", param="from",
                                  code="missing_required_parameter")
    params: dict = {}
    for key, value in (body.parameters or {}).items():
        try:
            if key == "stop":
                values = [value] if isinstance(value, str) else value
                if not isinstance(values, list):
                    raise schema.bad("parameters.stop", "a string or a list of strings", value)
                params["stop"] = tuple(P.convert("stop", v) for v in values)
            else:
                params[key] = P.convert(key, value)
        except ModelfileError as exc:
            raise schema.RequestError(f"parameters: {exc.message}", param=f"parameters.{key}",
                                      hint=exc.hint) from None
    license_ = body.license or ()
    mf = Modelfile(from_=src.strip(), parameters=params, system=body.system,
                   messages=tuple({"role": m.role, "content": m.content} for m in body.messages or ()),
                   adapters=tuple(Adapter(_digest_file(d, f"adapters[{k!r}]")) for k, d in (body.adapters or {}).items()),
                   license=(license_,) if isinstance(license_, str) else tuple(license_),
                   template=body.template or None)
    return name, mf


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
    body = await schema.parse(request, schema.CreateRequest)
    name, mf = modelfile_from_body(body)
    statuses: list[str] = []
    model = await asyncio.to_thread(create_model, name, mf, allow_paths=state.settings.allow_paths,
                                    progress=statuses.append)
    await _forget(state, model.name)
    log.info("created %s FROM %s", model.name, model.from_)
    if body.stream is False:
        return JSONResponse({"status": "success"})

    async def lines():
        for status in statuses:
            yield ndjson({"status": status})
    from .ollama_api import _StreamOnly
    return _StreamOnly(lines())


async def copy(request: Request):
    from ..custom.catalog import copy as copy_model
    from .translate import model_ref

    state = request.app.state.slmrun
    body = await schema.parse(request, schema.CopyRequest)  # names checked: never a path
    src, dst = model_ref(body.source.strip()), model_ref(body.destination.strip())
    for key, value in (("source", src), ("destination", dst)):
        if not value:
            raise schema.RequestError(f"{key} is required: a model name", param=key,
                                      code="missing_required_parameter")
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
