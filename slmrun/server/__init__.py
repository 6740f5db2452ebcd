"""`slmrun serve`: OpenAI- and Ollama-compatible HTTP over the engine. The only package
that imports the web framework (Starlette), its server (uvicorn) and the request validation
(pydantic), and only when serving.

    app.py          the Starlette app: middleware, /health, /metrics, the chat page, lifespan
    openai_api.py   /v1/chat/completions, /v1/completions, /v1/models
    knowledge.py    knowledge bases served as models (`--kb`), /v1/rerank
    ollama_api.py   /api/chat, /api/generate, /api/tags, /api/show, /api/ps, /api/version, /api/delete
    create.py       /api/create, /api/copy, /api/blobs: models made from Modelfiles (slmrun.custom)
    pull.py         /api/pull's progress events over slmrun's own pull
    generation.py   one generation for either API: lease, fit the history, submit
    structured.py   response_format / format and tools
    schema.py       every request body, declared once (pydantic): types, ranges, unknown fields
    request.py      parse(request, Body): read, validate, the 400 naming the first bad field
    translate.py    both APIs' validated bodies to the engine's terms, keep_alive durations (pure)
    messages.py     both APIs' chat messages to the engine's (pure)
    manager.py      which models are loaded: keep_alive, LRU unload, the memory budget
    http.py         error shapes (no paths), middleware (request id + access log, API key, body
                    cap, the 500 of last resort), streaming
    metrics.py      /metrics in Prometheus' text format
    chat.html       the chat page (one file, no build step, works offline)
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ..errors import InvalidArgumentError


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 11435
    models: tuple[str, ...] = ()  # loaded at start and kept loaded (until asked otherwise)
    default_model: str = "smollm2-135m"  # for requests that name none
    api_key: str = ""
    insecure: bool = False  # serve beyond loopback without a key
    cors: tuple[str, ...] = ()  # origins allowed to call from a browser
    keep_alive: float = 300.0  # seconds an idle model stays loaded
    max_body: int = 4 << 20  # bytes
    max_queue: int = 16  # per model, beyond its slots
    n_ctx: int | None = None  # each slot's context (None: the model's, capped)
    n_parallel: int | None = None  # slots per model (None: the planner's choice)
    n_threads: int | None = None
    memory: int | None = None  # budget for all loaded models together (None: measured at start)
    grace_s: float = 10.0  # SIGTERM: how long in-flight requests may take to finish
    load_kwargs: dict = field(default_factory=dict)  # anything else for slmrun.load()
    allow_paths: bool = False  # /api/create may name files outside the store
    lora: tuple = ()  # (path, scale) LoRA adapters loaded with the -m models
    knowledge: tuple[str, ...] = ()  # knowledge bases served as models (`--kb NAME`)

    def model_load_kwargs(self) -> dict:
        kw = {"n_ctx": self.n_ctx, "n_parallel": self.n_parallel, "n_threads": self.n_threads,
              "max_queue": self.max_queue, **self.load_kwargs}
        return {k: v for k, v in kw.items() if v is not None}


def is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # any other name may resolve to an interface others reach


def check_exposure(host: str, api_key: str, insecure: bool) -> None:
    """Beyond loopback, a server anyone on the network can use needs a key (or an explicit --insecure)."""
    if not is_loopback(host) and not api_key and not insecure:
        raise InvalidArgumentError(
            f"serving on {host} would let anyone who reaches this machine use it without a key",
            hint="Set --api-key KEY (or SLMRUN_API_KEY), or pass --insecure if the network is yours alone.")


def bind(host: str, port: int):
    """The listening socket, bound before the server starts so a taken port is a clear error
    (and port 0 picks a free one: the log line says which)."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise InvalidArgumentError(f"cannot serve on {host!r}: {exc.strerror}",
                                   hint="Use an address of this machine, e.g. 127.0.0.1 or 0.0.0.0.") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise InvalidArgumentError(f"cannot listen on {host}:{port}: {exc.strerror}",
                                   hint="Another server (maybe another `slmrun serve`) has it: stop it, "
                                        "or choose another --port.") from None
    sock.listen(2048)
    return sock


def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests get ``grace_s`` to finish."""
    import logging
    import sys

    from ..runtime.heap import limit_malloc_arenas
    from ..runtime.llama import preload
    limit_malloc_arenas()  # models load and close on many threads here: keep RSS from ratcheting up
    preload()
    import uvicorn

    from .app import create_app

    check_exposure(settings.host, settings.api_key, settings.insecure)
    sock = bind(settings.host, settings.port)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    for name in ("slmrun.server", "slmrun.server.access"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        logger.propagate = False
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(create_app(settings, url=f"http://{shown}:{port}"), access_log=False,
                            log_level="warning", timeout_graceful_shutdown=settings.grace_s, lifespan="on",
                            server_header=False)
    uvicorn.Server(config).run(sockets=[sock])
