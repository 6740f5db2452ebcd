"""Model files from the Hugging Face Hub, or any server that speaks its protocol (HF_ENDPOINT).

The only module of slmrun that imports huggingface_hub, and only inside ``fetch``, so
the offline paths (run, chat, bench, load) never load it. The network is huggingface_hub's
own code: ``get_hf_file_metadata`` for the HEAD (HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE,
proxies, the redirect to the CDN, the LFS SHA-256 in X-Linked-Etag) and
``file_download.http_get`` for the body (its tqdm bar; it retries a dropped connection
with ``Range: bytes=N-`` within the call).

Why not ``hf_hub_download``: in huggingface_hub 2.x it downloads into a process-unique
temp file and deletes it on any failure (``_download_to_tmp_and_move``, in both local_dir
and cache_dir modes), so a download cut at 1.9 of 2 GB starts again from zero. We keep
the partial file ourselves, in the store's staging directory, named after the file and
its hub ETag, and hand its size to ``http_get`` as ``resume_size``: the next pull resumes.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import (ChecksumMismatchError, DownloadError, InsufficientDiskSpaceError, OfflineError,
                      RemoteFileNotFoundError)
from ..store import check_free_space, sha256_file

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_BY_HAND = "without a network, copy the .gguf over by hand and run `slmrun import PATH`."


def _env_true(name: str) -> bool:  # huggingface_hub's own reading of boolean variables
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub():
    """Import huggingface_hub; keep it from making any request but the file's."""
    from huggingface_hub import constants, file_download, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers
    from huggingface_hub.utils.tqdm import silent_tqdm

    # Building the user agent calls detect_agent(), which fetches {ENDPOINT}/api/agent-harnesses
    # once a day unless telemetry is off (utils/_headers.py). A pull promises one file and
    # nothing else, so we turn it off, unless the user set one of its variables either way.
    if not any(v in os.environ for v in ("HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY", "DO_NOT_TRACK")):
        constants.HF_HUB_DISABLE_TELEMETRY = True
    # http_get writes (and a resume restarts) in whole chunks of this size: bytes of a chunk
    # cut half way are lost. 10 MB is a minute of a slow link; 1 MB costs nothing in speed.
    constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, 1 << 20)
    return constants, file_download.http_get, get_hf_file_metadata, hf_hub_url, build_hf_headers, silent_tqdm


def _check_safe(file) -> None:
    # A FileSource can be built without the registry's parser; we build paths from these
    # fields, so run the registry's own checks again here.
    from ..registry import check_model_filename, check_repo

    where = f"hub source {file.repo!r}/{file.filename!r}"
    check_model_filename(file.filename or "", where)
    check_repo(file.repo or "", where)


def fetch(file, staging: Path, *, progress: bool = True) -> tuple[Path, str]:
    """Download ``file`` (resuming a partial one) into ``staging``; return (verified path, sha256)."""
    _check_safe(file)
    what = f"{file.repo}/{file.filename} (revision {file.revision})"
    # Read at call time (huggingface_hub reads both once, at import): HF_HUB_OFFLINE=1 must
    # stop us before anything is imported or asked, and HF_ENDPOINT is passed explicitly.
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        raise OfflineError(f"cannot download {what}: offline mode is on (HF_HUB_OFFLINE)",
                           hint=f"Unset HF_HUB_OFFLINE to download it; {_BY_HAND}")
    constants, http_get, get_metadata, hub_url, build_headers, silent_tqdm = _hub()
    endpoint = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or constants.ENDPOINT
    where = f"{what} from {endpoint}"
    url = hub_url(file.repo, file.filename, revision=file.revision, endpoint=endpoint)
    try:
        meta = get_metadata(url, endpoint=endpoint, library_name="slmrun", library_version=_version())
    except Exception as exc:
        _reraise(exc, where)
    if not meta.commit_hash or not meta.etag:
        raise DownloadError(f"{endpoint} answered for {what} without X-Repo-Commit/ETag headers: "
                            "it does not look like a Hugging Face Hub",
                            hint="Check HF_ENDPOINT and your proxy settings.")

    hub_sha = meta.etag if _SHA256.match(meta.etag) else None  # LFS files: the SHA-256 of the content
    exact = file.size if file.size and not file.size_is_estimate else None
    size = meta.size or exact
    # Registry and hub disagree before a byte is fetched: say so now, not after 2 GB.
    if (file.sha256 and hub_sha and hub_sha != file.sha256) or (exact and meta.size and meta.size != exact):
        raise ChecksumMismatchError(
            f"{where}: the hub has {f'SHA-256 {hub_sha}' if hub_sha else 'a file'} ({meta.size} bytes), "
            f"the registry expects "
            f"{file.sha256 or 'any'} ({exact or '?'} bytes); nothing was downloaded",
            hint="The file on the hub has changed: pin the registry entry to a revision, or update it.")
    expected = file.sha256 or hub_sha

    # One partial per (file, remote version): a newer upstream file never resumes an older one.
    key = hashlib.sha256(meta.etag.encode()).hexdigest()[:16]
    partial = staging / f"{file.filename}.{key}.incomplete"
    for stale in staging.glob(glob.escape(file.filename) + ".*.incomplete"):
        if stale != partial:
            stale.unlink(missing_ok=True)
    have = partial.stat().st_size if partial.exists() else 0
    if size and have > size:
        partial.unlink()
        have = 0
    if size:
        check_free_space(staging, size - have, what=f"{file.filename} ({size - have} bytes left to fetch)")

    headers = build_headers(library_name="slmrun", library_version=_version())
    if _origin(meta.location) != _origin(url):
        headers.pop("authorization", None)  # the CDN's URL is signed; the token stays on the hub
    try:
        with open(partial, "ab") as f:
            http_get(meta.location, f, resume_size=have, headers=headers, expected_size=size,
                     displayed_filename=file.filename, tqdm_class=None if progress else silent_tqdm)
    except Exception as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if not (status == 416 and have):  # 416 on a resume of unknown size: we already had it all
            if size and partial.exists() and partial.stat().st_size > size:
                partial.unlink()  # more bytes than the file has: not resumable
            _reraise(exc, where, partial)

    # A second pass over the file rather than hashing as http_get writes: it hashes what is
    # on disk, including bytes from earlier runs, and survives http_get rewinding on a 200.
    actual_size = partial.stat().st_size
    digest = sha256_file(partial)
    if (expected and digest != expected) or (exact and actual_size != exact):
        partial.unlink(missing_ok=True)
        raise ChecksumMismatchError(
            f"{where}: the download has SHA-256 {digest} ({actual_size} bytes), expected "
            f"{expected or 'any'} ({exact or size or '?'} bytes); it was deleted")
    return partial, digest


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("slmrun")
    except Exception:
        return "unknown"


def _reraise(exc: Exception, where: str, partial: Path | None = None):
    err = _translate(exc, where, partial)
    if err is exc:
        raise exc  # not a failure we know how to explain: as it is
    raise err from exc


def _translate(exc: Exception, where: str, partial: Path | None = None) -> Exception:
    """huggingface_hub's and httpx's errors -> slmrun's, each with the next step."""
    import httpx2
    from huggingface_hub import errors as hf

    have = partial.stat().st_size if partial is not None and partial.exists() else 0
    kept = f"; {have} bytes are kept and the next pull resumes from there" if have else ""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, hf.OfflineModeIsEnabled):
        return OfflineError(f"cannot download {where}: huggingface_hub's offline mode is on",
                            hint=f"Unset HF_HUB_OFFLINE (it is read when huggingface_hub is imported); {_BY_HAND}")
    if isinstance(exc, hf.GatedRepoError):
        return DownloadError(f"{where}: the repo is gated (HTTP {status})",
                             hint="Accept the model's license on the hub, then set HF_TOKEN.")
    if isinstance(exc, (hf.RepositoryNotFoundError, hf.RevisionNotFoundError, hf.RemoteEntryNotFoundError)) \
            or status == 404:
        if isinstance(exc, hf.RepositoryNotFoundError):  # the hub answers 401 for private ones too
            return RemoteFileNotFoundError(
                f"{where}: the hub has no such repository (HTTP {status})",
                hint="The registry entry may be out of date; if the repo is private, set HF_TOKEN.")
        kind = "revision" if isinstance(exc, hf.RevisionNotFoundError) else "file"
        return RemoteFileNotFoundError(f"{where}: the hub has no such {kind} (HTTP {status})")
    if status in (401, 403):
        return DownloadError(f"{where}: access denied (HTTP {status})",
                             hint="Set HF_TOKEN to a token that may read this repo.")
    if isinstance(exc, hf.HfHubHTTPError):
        return DownloadError(f"{where}: the server answered HTTP {status}{kept}")
    if isinstance(exc, httpx2.ProxyError):
        return DownloadError(f"{where}: the proxy refused the connection: {exc}",
                             hint="Check HTTPS_PROXY / HTTP_PROXY / NO_PROXY.")
    if isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout)) or (
            partial is None and isinstance(exc, httpx2.TransportError)):
        return OfflineError(f"cannot reach {where}: {exc}{kept}",
                            hint=f"Check the network (and HF_ENDPOINT), then pull again; {_BY_HAND}")
    if isinstance(exc, httpx2.TransportError):
        return DownloadError(f"the download of {where} was interrupted: {exc}{kept}")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientDiskSpaceError(f"the disk filled up while downloading {where}{kept}")
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):  # http_get: short body
        return DownloadError(f"the download of {where} ended early{kept}")
    return exc
