"""Safetensors files, read without trusting their headers.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header
length N, N bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]},
"__metadata__": {...}}``, then the data, offsets counted from its start. The reference
implementation requires the data to be indexed entirely, without holes or overlaps (so a
file cannot hide a second payload), and so do we.

``read_header`` checks all of it before a byte of tensor data is read, and names the tensor
at fault: a dtype it does not know, a shape whose byte count is not the span its offsets
give, offsets past the end of the file, two tensors sharing bytes, a gap, trailing bytes.
Only then does ``Reader`` hand tensors to the ``safetensors`` library (which checks again);
BF16, which numpy lacks, is widened to F32 here.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import InvalidModelFileError, ModelFileNotFoundError

# dtype -> bytes per element (the reference implementation's Dtype enum).
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
MAX_HEADER = 100_000_000  # the reference implementation refuses larger headers too
_HINT = ("The file is damaged or was not written by a safetensors library; download the model again "
         "(or check where it came from).")


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offsets in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsFile:
    path: Path
    size: int
    tensors: dict[str, TensorEntry]
    metadata: dict = field(default_factory=dict)


def _fail(path: Path, what: str) -> InvalidModelFileError:
    return InvalidModelFileError(f"{path.name}: {what}", hint=_HINT)


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the header names {key!r} twice")
        out[key] = value
    return out


def _ints(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                           for v in value)


def read_header(path: str | Path) -> SafetensorsFile:
    """Parse and check a safetensors header against the file; raise InvalidModelFileError naming the fault."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileNotFoundError(f"no such file: {path}")
    size = path.stat().st_size
    if size < 8:
        raise _fail(path, f"not a safetensors file ({size} bytes is too small for a header)")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER or 8 + n > size:
            raise _fail(path, f"header length {n} runs past the end of the file ({size} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _fail(path, f"the header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise _fail(path, "the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise _fail(path, "__metadata__ is not an object")
    data_start, data_size = 8 + n, size - 8 - n
    tensors: dict[str, TensorEntry] = {}
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _fail(path, f"tensor {name!r}: an entry must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise _fail(path, f"tensor {name!r} has unknown dtype {dtype!r}")
        if not _ints(shape) or len(shape) > 8:
            raise _fail(path, f"tensor {name!r} has an invalid shape {shape!r}")
        if not _ints(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
            raise _fail(path, f"tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if end > data_size:
            raise _fail(path, f"tensor {name!r}: data_offsets [{begin}, {end}] lie past the end of the data "
                              f"({data_size} bytes): the file is truncated or its header lies")
        need = math.prod(shape) * DTYPE_SIZES[dtype]
        if need != end - begin:
            raise _fail(path, f"tensor {name!r}: shape {list(shape)} of {dtype} is {need} bytes but its "
                              f"data_offsets [{begin}, {end}] span {end - begin}")
        tensors[name] = TensorEntry(name, dtype, tuple(shape), data_start + begin, data_start + end)
    at, previous = data_start, None
    for t in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if t.start < at:
            raise _fail(path, f"tensors {previous!r} and {t.name!r} overlap (both claim bytes from "
                              f"{t.start - data_start})")
        if t.start > at:
            raise _fail(path, f"{t.start - at} bytes before tensor {t.name!r} belong to no tensor")
        at, previous = t.end, t.name
    if at != size:
        raise _fail(path, f"{size - at} bytes after the last tensor belong to no tensor")
    return SafetensorsFile(path=path, size=size, tensors=tensors, metadata=metadata)


class Reader:
    """Tensors of one checked file, read through one open handle: ``with Reader(sf) as r: r[name]``."""

    def __init__(self, sf: SafetensorsFile):
        self.sf, self._handle = sf, None

    def __enter__(self) -> "Reader":
        from safetensors import safe_open

        try:
            self._handle = safe_open(str(self.sf.path), framework="numpy")
            self._handle.__enter__()
        except Exception as exc:  # the library's own check disagrees with ours: refuse all the same
            raise _fail(self.sf.path, f"cannot be read: {exc}") from None
        return self

    def __exit__(self, *exc) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.__exit__(None, None, None)

    def __getitem__(self, name: str):
        """One tensor as a numpy array (BF16 widened to float32)."""
        import numpy as np

        t = self.sf.tensors[name]
        if t.dtype == "BF16":  # numpy has no bfloat16: its 16 bits are a float32's upper half
            raw = np.fromfile(self.sf.path, dtype="<u2", count=t.nbytes // 2, offset=t.start)
            return (raw.astype(np.uint32) << 16).view(np.float32).reshape(t.shape)
        try:
            return self._handle.get_tensor(name)
        except Exception as exc:
            raise _fail(self.sf.path, f"tensor {name!r} cannot be read: {exc}") from None
