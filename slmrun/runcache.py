"""Facts kept between runs under ``$SLMRUN_HOME/cache/``, each with the key that makes it stale.

A short command (`slmrun run`, `chat`, `show`) re-derives facts that rarely change: a
GGUF's validated header and metadata (gguf_info.read_info: the gguf package's import and
the walk over the tensor table, ~80 ms of a ~300 ms start). A record is a JSON file
holding ``{"key": ..., "value": ...}``; ``get`` returns the value only when the stored
key equals the one asked with, so whatever could change the fact belongs in the key
(for a file: its inode, size, modification and change times, see ``file_key``; the
version of the code that derived it). Anything unreadable is a miss; writing is
atomic (a temporary file renamed) and best-effort (a read-only home caches nothing).
Nothing here is needed for correctness: deleting the folder only costs time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from . import config


def cache_dir() -> Path:
    return config.home() / "cache"


def file_key(path: str | os.PathLike) -> dict:
    """What identifies a file's content without reading it: its device and inode (a file
    replaced by a rename is another file), size, and modification and change times in
    nanoseconds (a write in place moves both; the change time cannot be set back)."""
    st = os.stat(path)
    return {"path": os.path.realpath(path), "dev": st.st_dev, "ino": st.st_ino, "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def _record(kind: str, name: str) -> Path:
    digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:20]
    return cache_dir() / kind / f"{digest}.json"


def get(kind: str, name: str, key: dict):
    """The value stored for ``name`` under ``key``, or None (missing, stale or unreadable)."""
    try:
        record = json.loads(_record(kind, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    return record.get("value")


def put(kind: str, name: str, key: dict, value) -> None:
    """Store ``value`` for ``name`` under ``key``, replacing what was there; errors are ignored."""
    path = _record(kind, name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "value": value}), encoding="utf-8")
        os.replace(tmp, path)
    except (OSError, TypeError, ValueError):
        pass
