"""llama.cpp's own quantizer (``llama_model_quantize``), with progress and its error text.

llama.cpp logs one line per tensor as it writes it (``[  12/ 272] blk.0.attn_q.weight ...``,
src/llama-quant.cpp); a log callback installed for the call counts them for the progress
display and keeps the error line (``failed to quantize: ...``) for the exception. A dry run
(``dry_run``) computes the output's size without writing anything: the disk check before
the real run uses it. An importance matrix goes in as llama.cpp's C array of
``llama_model_imatrix_data`` (name, values, count; a NULL name ends it).

The call blocks its thread until the file is written; slmrun.quantizer runs it on a worker
thread so Ctrl-C still reaches the caller.
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
from pathlib import Path
from typing import Callable, Mapping

from ..errors import InvalidArgumentError, QuantizeError

_TENSOR_LINE = re.compile(rb"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")
_QUANT_SIZE = re.compile(rb"quant size\s*=\s*([0-9.]+) MiB")
_FAILED = re.compile(rb"failed to quantize: (.*)")
_LOG_LOCK = threading.Lock()  # llama.cpp has one log callback per process


def ftype_of(quant: str) -> int:
    """llama.cpp's llama_ftype for a quant name ("Q4_K_M" -> 15)."""
    import llama_cpp

    name = quant.strip().upper()
    value = getattr(llama_cpp, "LLAMA_FTYPE_ALL_F32" if name == "F32" else f"LLAMA_FTYPE_MOSTLY_{name}", None)
    if not isinstance(value, int):
        raise InvalidArgumentError(f"llama.cpp has no file type {quant!r}")
    return value


class _Log:
    """The log callback for one quantize call: tensors done, the size a dry run reports, the error."""

    def __init__(self, on_tensor, echo: bool):
        import llama_cpp

        self.on_tensor, self.echo = on_tensor, echo
        self.size_mib: float | None = None
        self.error: str | None = None
        self.tensors = 0
        self._line = b""

        def cb(level, text, user_data):
            try:
                self.feed(text or b"")
            except Exception:  # never raise into C
                pass
        self.c_callback = llama_cpp.llama_log_callback(cb)

    def feed(self, text: bytes) -> None:
        if self.echo:
            os.write(2, text)
        self._line += text
        while b"\n" in self._line:
            line, self._line = self._line.split(b"\n", 1)
            self._parse(line)
        m = _TENSOR_LINE.match(self._line)  # a tensor's line is written in two pieces: count it now
        if m and int(m.group(1)) > self.tensors:
            self._tensor(m)

    def _tensor(self, m) -> None:
        self.tensors = int(m.group(1))
        if self.on_tensor:
            self.on_tensor(self.tensors, int(m.group(2)), m.group(3).decode("utf-8", "replace"))

    def _parse(self, line: bytes) -> None:
        m = _TENSOR_LINE.match(line)
        if m and int(m.group(1)) > self.tensors:
            self._tensor(m)
        if (s := _QUANT_SIZE.search(line)) is not None:
            self.size_mib = float(s.group(1))
        if (f := _FAILED.search(line)) is not None:
            self.error = f.group(1).decode("utf-8", "replace").strip()


def _imatrix_array(imatrix: Mapping[str, "object"]):
    """llama.cpp's NULL-terminated array of (name, float*, count), and what keeps it alive."""
    import llama_cpp
    import numpy as np

    keep = []
    arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
    for i, (name, values) in enumerate(imatrix.items()):
        data = np.ascontiguousarray(values, dtype=np.float32)
        raw = name.encode("utf-8")
        keep += [data, raw]
        arr[i].name = raw
        arr[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = data.size
    arr[len(imatrix)].name = None
    return arr, keep


def quantize_file(src: Path, dst: Path, quant: str, *, allow_requantize: bool = False, n_threads: int = 0,
                  imatrix: Mapping[str, "object"] | None = None, dry_run: bool = False,
                  on_tensor: Callable[[int, int, str], None] | None = None, echo: bool = False) -> int | None:
    """Write ``src`` quantized to ``quant`` at ``dst`` with llama.cpp's quantizer; with
    ``dry_run`` write nothing and return the size llama.cpp computes for the tensors
    (bytes, to ~10 KiB). ``on_tensor(done, total, name)`` as each tensor is written.
    Raises QuantizeError with llama.cpp's reason; ``dst`` may then hold a partial file
    (the caller removes it). ``echo``: copy llama.cpp's log to stderr."""
    import llama_cpp

    from .llama import _ensure_backend, set_llama_log
    from . import llama as llama_module

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype_of(quant)
    params.allow_requantize = bool(allow_requantize)
    params.nthread = int(n_threads)
    params.dry_run = bool(dry_run)
    keep = None
    if imatrix:
        params.imatrix, keep = _imatrix_array(imatrix)  # noqa: F841  (keep: alive through the call)
    log = _Log(on_tensor, echo)
    _ensure_backend()
    with _LOG_LOCK:
        llama_cpp.llama_log_set(log.c_callback, ctypes.c_void_p(0))
        try:
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
        finally:
            llama_module._log_enabled = None  # put slmrun's own callback back
            set_llama_log(echo)
    del keep
    if rc != 0:
        raise QuantizeError(f"llama.cpp could not quantize {Path(src).name} to {quant}: "
                            f"{log.error or 'no reason given'}")
    if dry_run:
        return int(log.size_mib * (1 << 20)) if log.size_mib is not None else None
    return None
