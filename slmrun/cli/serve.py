"""`slmrun serve`, and `slmrun ps` / `slmrun stop` that talk to a running server.

The web stack (Starlette, uvicorn) is imported only inside `serve`; `ps` and `stop`
use the standard library's HTTP client.
"""

from __future__ import annotations

import json
import time
from typing import List, Optional

import typer

from .. import config
from . import app, fail
from .rpc import rpc_option

SERVER_UNREACHABLE = 15  # exit code: no server answers at the address


def _address(host: Optional[str], port: Optional[int]) -> tuple[str, int]:
    """--host (HOST or HOST:PORT) and --port over SLMRUN_HOST over 127.0.0.1:11435."""
    try:
        h, p = config.server_address()
        if host:
            h, p = config.split_address(host, default_port=p)
    except ValueError as exc:
        fail(str(exc), code=2)
    if port is not None and not 0 <= port < 65536:
        fail(f"--port must be from 0 to 65535, got {port}", code=2)
    return h, p if port is None else port


@app.command()
def serve(
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", help="Load at start and keep loaded "
                                              "(repeatable; others load on first use). The first is the default."),
    host: Optional[str] = typer.Option(None, "--host", help="Address to bind (default: $SLMRUN_HOST or 127.0.0.1). "
                                       "Anything but loopback needs --api-key or --insecure."),
    port: Optional[int] = typer.Option(None, "--port", "-p", help=f"Port (default {config.DEFAULT_PORT}; 0 picks a "
                                       "free one)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="Require `Authorization: Bearer KEY` "
                                          "(default: $SLMRUN_API_KEY)."),
    insecure: bool = typer.Option(False, "--insecure", help="Serve beyond loopback without a key."),
    cors: Optional[List[str]] = typer.Option(None, "--cors", help="Allow browser pages from ORIGIN "
                                             "(repeatable, '*' for any); off by default."),
    ctx: Optional[int] = typer.Option(None, "--ctx", help="Context per request, in tokens (default: the model's, "
                                      "capped by SLMRUN_MAX_CTX)."),
    parallel: Optional[int] = typer.Option(None, "--parallel", help="Requests each model decodes together "
                                           "(default: as many as memory allows, up to 4)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: the performance cores)."),
    max_queue: Optional[int] = typer.Option(None, "--max-queue", help="Requests that may wait for a slot per model, "
                                            "then 503 (default: $SLMRUN_MAX_QUEUE or 16)."),
    keep_alive: Optional[str] = typer.Option(None, "--keep-alive", help="How long an idle model stays loaded: "
                                             "5m, 1h, 0, -1 = forever (default: $SLMRUN_KEEP_ALIVE or 5m)."),
    max_body: Optional[str] = typer.Option(None, "--max-body", help="Largest request body (default: "
                                           "$SLMRUN_MAX_BODY or 4M)."),
    memory: Optional[str] = typer.Option(None, "--memory", help="Memory all loaded models may use together, "
                                         "e.g. 2G (default: what is available at start, less a reserve)."),
    grace: float = typer.Option(10.0, "--grace", help="On SIGTERM, seconds in-flight requests get to finish."),
    lora: Optional[List[str]] = typer.Option(None, "--lora", help="A LoRA adapter FILE[:SCALE] loaded with the "
                                             "-m models (repeatable); requests choose among them with "
                                             "\"lora\": [{\"id\": N, \"scale\": X}]."),
    allow_paths: bool = typer.Option(False, "--allow-paths", help="Let /api/create name files anywhere on this "
                                     "machine (FROM or adapters); by default only files in the model store."),
    rpc: Optional[str] = rpc_option(),
    spec: str = typer.Option("auto", "--spec", help="Prompt-lookup speculative decoding for every model: auto "
                             "(where the measured step costs say it pays), on, off; a request's "
                             "\"speculative\" field overrides it."),
    kb: Optional[List[str]] = typer.Option(None, "--kb", help="Serve this knowledge base as a model of its name: "
                                           "chat requests naming it get grounded answers (repeatable)."),
):
    """Serve models over HTTP: OpenAI's API under /v1, Ollama's under /api, a chat page at /."""
    from ..errors import InvalidArgumentError
    from ..units import parse_size

    bind_host, bind_port = _address(host, port)
    key = config.api_key() if api_key is None else api_key.strip()
    from ..server import Settings, check_exposure, run
    from ..server.translate import parse_duration

    check_exposure(bind_host, key, insecure)
    keep_s = parse_duration(keep_alive if keep_alive is not None else config.keep_alive_default())
    import math
    import os

    from ..api import MAX_CTX, MAX_PARALLEL

    cores = os.cpu_count() or 1
    for name, value, least, most in (("--parallel", parallel, 1, MAX_PARALLEL), ("--max-queue", max_queue, 0, None),
                                     ("--ctx", ctx, 16, MAX_CTX), ("--threads", threads, 1, cores)):
        if value is not None and value < least:
            raise InvalidArgumentError(f"{name} must be at least {least}, got {value}")
        if value is not None and most is not None and value > most:
            raise InvalidArgumentError(f"{name} must be at most {most}, got {value}")
    if not (math.isfinite(grace) and grace >= 0):
        raise InvalidArgumentError(f"--grace must be a number of seconds >= 0, got {grace}")
    models = tuple(model or ())
    from ..runtime.speculative import check_mode
    spec = check_mode(spec)  # a bad value fails now, not at the first load
    _check_models(models)
    from .run import parse_lora
    adapters = tuple(parse_lora(lora))
    if adapters:
        if not models:
            raise InvalidArgumentError("--lora needs the model it applies to: give it with -m",
                                       hint="Example: slmrun serve -m smollm2-135m --lora style.gguf")
        _check_lora(models, adapters)
    if rpc:
        from .. import remote
        remote.endpoints(rpc)  # a malformed list, or a build without RPC: say so now
    settings = Settings(host=bind_host, port=bind_port, models=models, default_model=config.default_model(),
                        api_key=key, insecure=insecure, cors=tuple(cors or ()), keep_alive=keep_s,
                        max_body=_max_body(parse_size(max_body or config.max_body_default())),
                        max_queue=config.max_queue_default() if max_queue is None else max_queue,
                        n_ctx=ctx, n_parallel=parallel, n_threads=threads,
                        memory=parse_size(memory) if memory else None, grace_s=grace,
                        load_kwargs={**({"rpc": rpc} if rpc else {}), **({"speculative": spec} if spec != "auto" else {})},
                        allow_paths=allow_paths, lora=adapters, knowledge=_check_bases(kb or ()))
    run(settings)


def _check_bases(names) -> tuple[str, ...]:
    """Knowledge bases that do not exist fail now, with the CLI's message."""
    from ..knowledge import knowledge_base

    for name in names:
        knowledge_base(name).close()
    return tuple(names)


def _max_body(size: int) -> int:
    from ..errors import InvalidArgumentError

    if size < 1024:  # smaller refuses any chat request: a typo (--max-body 4 for 4M), not a choice
        raise InvalidArgumentError(f"--max-body must be at least 1K, got {size} bytes", hint="E.g. --max-body 4M.")
    return size


def _check_models(models: tuple[str, ...]) -> None:
    """Unknown or missing -m models fail now, with the CLI's message, not in the server's log."""
    from ..api import resolve

    for ref in models:
        resolve(ref, allow_path=False)


def _check_lora(models: tuple[str, ...], adapters) -> None:
    """A --lora that does not fit a -m model fails now, with the CLI's message."""
    from ..adapter_info import prepare
    from ..api import inspect_file, resolve

    for ref in models:
        prepare(adapters, inspect_file(resolve(ref, allow_path=False)))


# --- talking to a running server -------------------------------------------------------------

def _request(method: str, path: str, body: dict | None, host: Optional[str], port: Optional[int]) -> dict:
    from ..client.served import ServerAnswerError, base_url, request_json

    address = _address(host, port)
    url = base_url(address) + path
    try:
        return request_json(address, method, path, body, timeout=30)
    except ServerAnswerError as exc:
        hint = "Set SLMRUN_API_KEY to the server's key." if exc.status == 401 else ""
        fail(f"the server at {url} answered {exc.status}: {exc.message}", hint, 3 if exc.status == 404 else 1)
    except (OSError, ValueError) as exc:  # ValueError: a body that is no JSON
        fail(f"no slmrun server at {base_url(address)} ({exc})",
             "Start one with `slmrun serve`, or point --host / SLMRUN_HOST at it.", SERVER_UNREACHABLE)


@app.command()
def ps(
    host: Optional[str] = typer.Option(None, "--host", help="The server (default: $SLMRUN_HOST or 127.0.0.1:11435)."),
    port: Optional[int] = typer.Option(None, "--port", "-p"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """List the models a running `slmrun serve` has loaded."""
    from ..units import format_bytes

    models = _request("GET", "/api/ps", None, host, port).get("models", [])
    if as_json:
        typer.echo(json.dumps(models, indent=2))
        return
    if not models:
        typer.echo("No models loaded.")
        return
    rows = [("NAME", "SIZE", "CONTEXT", "SLOTS", "QUEUE", "UNTIL")]
    for m in models:
        extra = m.get("slmrun", {})
        rows.append((m["name"], format_bytes(m.get("size")), str(m.get("context_length", "?")),
                     f"{extra.get('slots_busy', '?')}/{extra.get('slots', '?')} busy", str(extra.get("queue_depth", 0)),
                     _until(m.get("expires_at", ""), extra)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _until(expires_at: str, extra: dict) -> str:
    from datetime import datetime

    if extra.get("keep_alive") == "forever" or expires_at.startswith("9999"):
        return "forever"
    try:
        left = datetime.fromisoformat(expires_at.replace("Z", "+00:00")).timestamp() - time.time()
    except ValueError:
        return expires_at
    if extra.get("in_flight"):
        return "busy"
    return f"{max(0, left) / 60:.0f} minutes from now" if left >= 60 else f"{max(0, left):.0f} seconds from now"


@app.command()
def stop(
    model: str = typer.Argument(..., help="NAME or NAME:QUANT, as `slmrun ps` shows it."),
    host: Optional[str] = typer.Option(None, "--host", help="The server (default: $SLMRUN_HOST or 127.0.0.1:11435)."),
    port: Optional[int] = typer.Option(None, "--port", "-p"),
):
    """Unload a model from a running `slmrun serve` (once its requests finish)."""
    loaded = [m["name"] for m in _request("GET", "/api/ps", None, host, port).get("models", [])]
    if not any(model in (name, name.split(":")[0]) for name in loaded):
        fail(f"{model} is not loaded", f"Loaded: {', '.join(loaded)}." if loaded else "No model is loaded.", 3)
    answer = _request("POST", "/api/generate", {"model": model, "keep_alive": 0}, host, port)
    typer.echo(f"stopped {answer.get('model', model)}")
