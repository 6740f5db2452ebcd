"""``slmrun quantize SRC --to TYPE``: a new quant of a model, made here by llama.cpp's own
quantizer (runtime/quantize.py), into the store like a pull.

From an unquantized GGUF (F32, F16, BF16) to any type the planner knows; from a quantized
one only when asked (``allow_requantize``), with a warning, since the new file carries the
old quant's loss as well as its own. The result is written in the store's staging folder,
checked (gguf_info.read_info: it must be a valid GGUF of the asked type), hashed and moved
in by ``store.install``: a failure at any step (a full disk included) leaves nothing in the
store and removes the partial file. Before it starts, llama.cpp's dry run tells the output's
size and the disk must have room for it.
"""

from __future__ import annotations

import errno
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import store
from .errors import InsufficientDiskSpaceError, InvalidArgumentError, QuantizeError, UnknownQuantError

UNQUANTIZED = frozenset({"F32", "F16", "BF16"})


@dataclass(frozen=True)
class Source:
    path: Path
    name: str  # the store name the result goes under
    quant: str
    info: object  # gguf_info.GGUFInfo
    sidecar: dict


def known_types() -> tuple[str, ...]:
    """The types `--to` takes: those the planner has facts for, best quality first."""
    from .planner import QUALITY_ORDER
    return QUALITY_ORDER


def check_target(source_quant: str, target: str, *, allow_requantize: bool) -> list[str]:
    """Refuse what llama.cpp should not be asked for; return the warnings for what it may do."""
    wanted = target.strip().upper()
    src = source_quant.strip().upper()
    if wanted not in known_types():
        raise UnknownQuantError(f"cannot quantize to {target!r}: not a type slmrun knows",
                                hint=f"Use one of: {', '.join(sorted(known_types()))}.")
    if wanted == src:
        raise InvalidArgumentError(f"the source is already {src}: there is nothing to quantize",
                                   hint="Name another type with --to.")
    if src in UNQUANTIZED:
        return []
    if wanted in UNQUANTIZED:
        raise InvalidArgumentError(
            f"a {src} source cannot give {wanted}: its weights keep only what {src} kept, so the result would "
            f"be a larger file of {src}'s quality",
            hint="Quantize from an F16, BF16 or F32 GGUF of the model to get a full-precision file.")
    if not allow_requantize:
        raise InvalidArgumentError(
            f"the source is already quantized ({src}): quantizing it again to {wanted} adds {wanted}'s loss to "
            f"{src}'s", hint="Quantize from an F16, BF16 or F32 GGUF, or pass --allow-requantize to do it anyway.")
    return [f"re-quantizing {src} to {wanted}: the result carries {src}'s loss as well as {wanted}'s; from an "
            "F16, BF16 or F32 file it would be better"]


def output_filename(src_filename: str, src_quant: str, target: str) -> str:
    """The source's file name with its quant replaced (``Model.Q4_1.gguf`` -> ``Model.Q2_K.gguf``),
    or the new quant added before ``.gguf``."""
    stem = src_filename[:-5] if src_filename.lower().endswith(".gguf") else src_filename
    pattern = re.compile(r"([.\-_])" + re.escape(src_quant) + r"$", re.IGNORECASE)
    if pattern.search(stem):
        return pattern.sub(lambda m: m.group(1) + target.upper(), stem) + ".gguf"
    return f"{stem}.{target.upper()}.gguf"


def _source(ref: str, name: str | None) -> Source:
    from . import api

    resolved = api.resolve(ref)
    info = api.inspect_file(resolved)
    if resolved.stored is not None and name is None:
        store_name = resolved.name
    else:
        store_name = store.check_store_name(name or resolved.path.name.split(".")[0])
    sidecar = store.read_sidecar(resolved.path) if resolved.stored is not None else {}
    return Source(path=resolved.path, name=store_name, quant=info.quant.upper(), info=info, sidecar=sidecar)


def quantize(src: str, to: str, *, allow_requantize: bool = False, name: str | None = None,
             imatrix: str | Path | None = None, n_threads: int | None = None, force: bool = False,
             progress: Callable[[int, int, str], None] | None = None,
             warn: Callable[[str], None] | None = None) -> store.StoredModel:
    """Quantize ``src`` (a stored model ``NAME:QUANT`` or a .gguf path) to ``to`` with llama.cpp's
    quantizer and add it to the store as ``NAME:to`` (``name`` for a file from outside the
    store; default: its file name up to the first dot). ``imatrix``: an importance matrix
    (llama-imatrix's GGUF) to weight the rounding by. ``force`` replaces a stored file of
    that quant. ``progress(done, total, tensor)``; ``warn(message)`` (default: warnings.warn)."""
    from .gguf_contents import read_imatrix
    from .gguf_info import read_info
    from .runtime.quantize import quantize_file

    source = _source(src, name)
    target = to.strip().upper()
    for message in check_target(source.quant, target, allow_requantize=allow_requantize):
        (warn or (lambda m: warnings.warn(m, stacklevel=3)))(message)
    matrix = read_imatrix(imatrix) if imatrix is not None else None
    existing = store.find(source.name, target)
    if existing and not force:
        raise InvalidArgumentError(f"{source.name}:{target.lower()} is already in the store",
                                   hint=f"Use it as it is, remove it first (`slmrun rm {source.name}:{target.lower()}`), "
                                        "or pass --force to replace it.")
    filename = output_filename(source.path.name, source.quant, target)
    threads = n_threads or _threads()
    with store.lock(source.name, target):
        staging = store.staging_dir(source.name)
        tmp = staging / (filename + ".incomplete")
        tmp.unlink(missing_ok=True)
        try:
            size = quantize_file(source.path, tmp, target, allow_requantize=True, n_threads=threads,
                                 imatrix=matrix, dry_run=True)
            store.check_free_space(staging, size or source.info.size, what=f"{source.name}:{target.lower()}")
            _run(lambda: quantize_file(source.path, tmp, target, allow_requantize=True, n_threads=threads,
                                       imatrix=matrix, on_tensor=progress, echo=_debug()))
            info = read_info(tmp)
            if info.quant.upper() != target:
                raise QuantizeError(f"llama.cpp wrote a {info.quant} file where {target} was asked for")
            digest = store.sha256_file(tmp)
            extra = {"architecture": info.architecture, "filename": filename,
                     "quantized_from": {"quant": source.quant, "file": source.path.name,
                                        "sha256": source.sidecar.get("sha256")},
                     **({"imatrix": Path(imatrix).name} if imatrix is not None else {}),
                     **({"prompt_format": source.sidecar["prompt_format"]}
                        if source.sidecar.get("prompt_format") else {})}
            stored = store.install(tmp, name=source.name, filename=filename, quant=target, sha256=digest,
                                   source=f"quantize:{source.name}:{source.quant.lower()}", extra=extra)
            for old in existing:  # --force: the file it replaced, when its name differs
                if old.path.name != filename:
                    old.path.unlink(missing_ok=True)
                    old.path.with_name(old.path.name + store.SIDECAR_SUFFIX).unlink(missing_ok=True)
            return stored
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, QuantizeError):
                _explain_disk(exc, staging)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC and not isinstance(exc, InsufficientDiskSpaceError):
                raise InsufficientDiskSpaceError(f"the disk filled while storing {source.name}:{target.lower()}: "
                                                 f"nothing was stored ({exc.strerror})") from exc
            raise


def _run(fn) -> None:
    """``fn()`` on a worker thread, waited for here so Ctrl-C reaches this thread at once (llama.cpp's
    quantizer cannot be interrupted; it finishes writing a file the caller then removes)."""
    box: dict = {}

    def target():
        try:
            fn()
        except BaseException as exc:  # handed to the waiting thread
            box["error"] = exc
    worker = threading.Thread(target=target, name="slmrun-quantize", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
    if "error" in box:
        raise box["error"]


def _explain_disk(exc: QuantizeError, directory: Path) -> None:
    """llama.cpp reports a failed write as an iostream error: say when the disk is the likely cause."""
    import shutil

    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return
    if "iostream" in str(exc) or free < (64 << 20):
        from .units import format_bytes
        exc.hint = (f"Writing the file failed; {format_bytes(free)} is free at {directory}. If the disk is full, "
                    "free some space (or point SLMRUN_HOME at a larger disk) and run it again.")


def _threads() -> int:
    from .api import default_threads
    return default_threads()


def _debug() -> bool:
    from . import config
    return config.debug()
