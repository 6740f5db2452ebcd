"""Files a client sent to `slmrun serve` for /api/create (Ollama's POST /api/blobs/DIGEST):
``blobs/sha256-<hex>`` in the store, named by their SHA-256 and checked against it, moved
in by rename only when whole and right."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from .. import config
from ..errors import ChecksumMismatchError, InvalidArgumentError

_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")


def blobs_dir() -> Path:
    return config.home() / "blobs"


def blob_path(digest: str) -> Path:
    """Where the blob ``sha256:<hex>`` lives (it may not be there); a malformed digest is refused."""
    m = _DIGEST.match(str(digest).strip().lower()) if isinstance(digest, str) else None
    if m is None:
        raise InvalidArgumentError(f"{digest!r} is not a digest", hint='Use "sha256:" and 64 hex digits.')
    return blobs_dir() / f"sha256-{m.group(1)}"


class BlobWriter:
    """Collects a blob's bytes into a staging file; ``finish()`` checks the digest and moves it in."""

    def __init__(self, digest: str):
        self.path = blob_path(digest)
        self.expected = self.path.name.split("-", 1)[1]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{id(self)}.partial")
        self.file = open(self.tmp, "wb")
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.hash.update(chunk)
        self.size += len(chunk)

    def finish(self) -> Path:
        self.file.close()
        actual = self.hash.hexdigest()
        if actual != self.expected:
            self.tmp.unlink(missing_ok=True)
            raise ChecksumMismatchError(f"the blob's SHA-256 is {actual}, not {self.expected}",
                                        hint="Send the file again; nothing was stored.")
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)
