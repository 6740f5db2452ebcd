"""The local model store: layout, listing, import, removal, locks and the atomic move.

Layout under ``config.home()``::

    models/<name>/<file>.gguf        the model file (present == installed)
    models/<name>/<file>.gguf.json   what we know of it: quant, sha256, size, source, when
    partial/<name>/                  downloads in progress (same filesystem: os.replace is atomic)
    locks/<name>-<quant>.lock        one puller per file at a time

A file enters ``models/`` only by ``os.replace`` after its checksum was verified, so
the store never holds a half-written model. The sidecar is written before the model
is moved in; a sidecar without its model is ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import config
from .errors import (InsufficientDiskSpaceError, InvalidArgumentError, ModelNotFoundError,
                     StoreLockedError)
from .units import format_bytes

SIDECAR_SUFFIX = ".json"
_HASH_CHUNK = 4 << 20


@dataclass(frozen=True)
class StoredModel:
    name: str
    quant: str
    path: Path
    size: int
    sha256: str | None
    modified: float
    source: str  # "hub:<repo>", "pypi:<package>", "import:<original path>"
    architecture: str | None = None
    kind: str = "generative"  # or "embedding" (recorded at install; older sidecars lack it)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.quant.lower()}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def models_dir() -> Path:
    return config.models_dir()


def model_dir(name: str) -> Path:
    return models_dir() / check_name(name)


def staging_dir(name: str) -> Path:
    path = config.home() / "partial" / check_name(name)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path, *, progress=None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def check_free_space(directory: Path, needed: int, *, what: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    # Keep a margin so a pull never fills the disk to the last byte.
    margin = 64 << 20
    if free < needed + margin:
        raise InsufficientDiskSpaceError(
            f"not enough disk space for {what}: needs {format_bytes(needed + margin)}, "
            f"{format_bytes(free)} free at {directory}")


# --- reading the store ------------------------------------------------------------

def read_sidecar(model_path: Path) -> dict:
    try:
        return json.loads(model_path.with_name(model_path.name + SIDECAR_SUFFIX).read_text())
    except (OSError, ValueError):
        return {}


def _stored(name: str, model_path: Path) -> StoredModel:
    meta = read_sidecar(model_path)
    st = model_path.stat()
    return StoredModel(
        name=name,
        quant=str(meta.get("quant") or "unknown").upper(),
        path=model_path,
        size=st.st_size,
        sha256=meta.get("sha256"),
        modified=st.st_mtime,
        source=str(meta.get("source") or "unknown"),
        architecture=meta.get("architecture"),
        kind=str(meta.get("kind") or "generative"),
    )


def list_models() -> list[StoredModel]:
    """Every model file in the store, sorted by name then quant."""
    root = models_dir()
    if not root.is_dir():
        return []
    found = []
    for sub in sorted(root.iterdir()):
        if not sub.is_dir():
            continue
        for path in sorted(sub.glob("*.gguf")):
            with contextlib.suppress(OSError):  # removed while we looked
                found.append(_stored(sub.name, path))
    return sorted(found, key=lambda m: (m.name, m.quant))


def find(name: str, quant: str | None = None) -> list[StoredModel]:
    """Stored files of a model (all its quants, or the one asked for)."""
    d = model_dir(name)
    quant = check_quant(quant) if quant else None
    if not d.is_dir():
        return []
    out = [_stored(d.name, p) for p in sorted(d.glob("*.gguf"))]
    if quant:
        out = [m for m in out if m.quant == quant]
    return out


# --- writing the store ------------------------------------------------------------

def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def install(tmp_file: Path, *, name: str, filename: str, quant: str, sha256: str,
            source: str, extra: dict | None = None) -> StoredModel:
    """Move a verified file into the store (atomic) and record what we know of it."""
    dest_dir = model_dir(name)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / filename
    meta = {"name": name, "quant": quant.upper(), "sha256": sha256, "size": tmp_file.stat().st_size,
            "source": source, "installed_at": time.time(), **(extra or {})}
    _write_json_atomic(dest.with_name(dest.name + SIDECAR_SUFFIX), meta)
    os.replace(tmp_file, dest)
    with contextlib.suppress(OSError):  # make the rename durable before we report success
        fd = os.open(dest_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return _stored(name, dest)


def remove(name: str, quant: str | None = None) -> list[StoredModel]:
    """Delete a model's files (one quant, or all). Raises when nothing matches."""
    victims = find(name, quant)
    if not victims:
        what = f"{name}:{quant.lower()}" if quant else name
        raise ModelNotFoundError(f"{what} is not in the local store", hint="Run `slmrun list` to see what is.")
    with lock(name, quant or "all"):
        for m in victims:
            m.path.unlink(missing_ok=True)
            m.path.with_name(m.path.name + SIDECAR_SUFFIX).unlink(missing_ok=True)
    d = model_dir(name)
    with contextlib.suppress(OSError):
        d.rmdir()  # only if empty
    return victims


@contextlib.contextmanager
def lock(name: str, quant: str, *, timeout: float = 3600.0):
    """An exclusive inter-process lock for one model file, waiting up to `timeout` seconds.

    filelock's: flock on POSIX, msvcrt on Windows, so the OS releases it when the holder
    exits or crashes.
    """
    from filelock import FileLock, Timeout

    lock_dir = config.home() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    file_lock = FileLock(lock_dir / f"{check_name(name)}-{check_quant(quant).lower()}.lock")
    try:
        file_lock.acquire(timeout=timeout, poll_interval=0.2)
    except Timeout:
        raise StoreLockedError(f"timed out after {timeout:g} s waiting for the lock on "
                               f"{name}:{quant.lower()}") from None
    try:
        yield
    finally:
        file_lock.release()


# A model's name: what a user types, and the name of its directory in the store. The
# registry's names and aliases, `import --name`, and every name looked up in the store are
# checked by this one rule (check_name), before any path is built from it: a name that is
# too long, has other characters, or would leave the store ("..", "/") is refused as such,
# never met as an OSError (ENAMETOOLONG) or a file outside the store.
MODEL_NAME_RULE = "lower-case letters, digits, '.', '_' or '-' (at most 64, not starting with '.', '_' or '-')"
_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
QUANT_RULE = "letters, digits, '_', '.' or '-' (at most 32), e.g. q4_k_m"
_QUANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_SHOWN = 64  # characters of a refused name quoted back


def is_model_name(name) -> bool:
    return isinstance(name, str) and _MODEL_NAME.match(name) is not None


def shorten(text: str) -> str:
    """``text`` for a message, cut when long (a pasted page must not come back whole)."""
    return text if len(text) <= _SHOWN + 16 else f"{text[:_SHOWN]}... ({len(text)} characters)"


def shown(text: str) -> str:
    """``text`` quoted (repr) for a message, cut when long."""
    return repr(text) if len(text) <= _SHOWN + 16 else f"{text[:_SHOWN]!r}... ({len(text)} characters)"


def check_name(name, *, what: str = "model") -> str:
    """A name to look up in the store or to create there -> its canonical form (stripped,
    lower-case). Raises InvalidArgumentError naming the rule; touches no file."""
    if not isinstance(name, str):
        raise InvalidArgumentError(f"a {what} name must be a string, got {type(name).__name__}")
    cleaned = name.strip().lower()
    if not is_model_name(cleaned):
        raise InvalidArgumentError(f"invalid {what} name {shown(name)}", hint=f"Use {MODEL_NAME_RULE}; no '/', no '..'.")
    return cleaned


def check_quant(quant: str) -> str:
    """The quant part of ``name:quant`` -> upper-case; refused when it cannot name a quant."""
    cleaned = quant.strip()
    if not _QUANT.match(cleaned):
        raise InvalidArgumentError(f"invalid quant {shown(quant)}", hint=f"Use {QUANT_RULE}; `slmrun list` shows "
                                                                         "the local ones.")
    return cleaned.upper()


def check_store_name(name: str) -> str:
    """A name the user gives to `import --name`: it becomes a directory in the store."""
    return check_name(name)
