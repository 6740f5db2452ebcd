"""Reads and validates GGUF files before llama.cpp sees them.

llama.cpp trusts a GGUF's counts and offsets; a truncated or corrupt file can make it
read past the end or abort the process. So we check the header, every metadata
entry, every tensor's shape and type, and that all tensor data lies inside the file,
and raise ``InvalidModelFileError`` naming what is wrong.

The format's constants (value types, quant block sizes, file types) come from the
``gguf`` package. We do not use ``gguf.GGUFReader`` itself: it materialises every
element of the tokenizer arrays and takes ~1.6 s on the 98 MB default model, on
every load; this reader skips array bodies and takes tens of milliseconds. What it finds
in a file that passed is kept between runs (runcache, keyed by the file's inode, size and
times and by READER_VERSION), so the next start of the same file skips the walk and the
import of gguf and numpy (~80 ms; benchmarks/STARTUP.md).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field, fields
from pathlib import Path

from . import runcache
from .errors import InvalidModelFileError, ModelFileNotFoundError
from .shape import ENCODER_ARCHS, ModelShape

# Bump when read_info derives anything differently: records cached by an older reader are stale.
READER_VERSION = 2
MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4
# Generous ceilings: real models have a few thousand tensors and < 100 keys.
MAX_TENSORS = 1 << 20
MAX_KV = 1 << 16

# GGUFValueType -> struct format for the scalar types (STRING=8 and ARRAY=9 are special).
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
           10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_CONTROL, _USER_DEFINED = 3, 4  # llama_token_type values in tokenizer.ggml.token_type
_MARK_STRIDE = 256  # skip_strings notes every 256th string's offset in the token list
_MAX_SPECIAL = 1 << 16  # Gemma 3 has ~6k special tokens; a vocabulary of only "special" ones is odd


# general.pooling_type values (llama.h enum llama_pooling_type).
POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]  # ggml's order (ne0 first)
    type: str  # "F32", "Q8_0", ...
    offset: int  # absolute, in the file
    nbytes: int


@dataclass(frozen=True, kw_only=True)
class GGUFInfo(ModelShape):
    path: Path
    size: int
    version: int
    name: str
    quant: str  # "Q4_K_M", from general.file_type (or the dominant tensor type)
    tensor_count: int
    chat_template: str | None
    license: str | None
    metadata: dict = field(default_factory=dict, repr=False)  # scalars; arrays as their length
    special_tokens: tuple[str, ...] = field(default=(), repr=False)  # CONTROL/USER_DEFINED token texts
    tensors: tuple[TensorInfo, ...] = field(default=(), repr=False)

    @property
    def weights_bytes(self) -> int:
        return self.size

    @property
    def pooling(self) -> str | None:
        """{arch}.pooling_type by name ("mean", "cls", "last", "rank", "none"); None when absent."""
        value = self.metadata.get(f"{self.architecture}.pooling_type")
        return POOLING_NAMES.get(value, "unknown") if isinstance(value, int) else None

    @property
    def causal(self) -> bool:
        """{arch}.attention.causal (llama.cpp's default: true)."""
        value = self.metadata.get(f"{self.architecture}.attention.causal")
        return value if isinstance(value, bool) else True


class _Cursor:
    """Bounds-checked reads over a buffer: every overrun becomes a clear error."""

    def __init__(self, buf, size: int, path: Path):
        self.buf, self.size, self.pos, self.path = buf, size, 0, path

    def fail(self, what: str) -> InvalidModelFileError:
        return InvalidModelFileError(f"{self.path.name}: {what} (at byte {self.pos} of {self.size})")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"file is truncated or corrupt: {what} runs past the end")

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return value

    def string(self, what: str) -> str:
        n = self.unpack("<Q", what)
        self.need(n, what)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None

    def skip_strings(self, count: int, what: str, marks: list[int] | None = None) -> None:
        """Walk past ``count`` strings; ``marks`` gets the offset of every _MARK_STRIDE-th."""
        # Each string is an 8-byte length then bytes; at least 8 bytes apiece.
        self.need(count * 8, what)
        buf, pos, end = self.buf, self.pos, self.size
        unpack = struct.Struct("<Q").unpack_from
        for start in range(0, count, _MARK_STRIDE):
            if marks is not None:
                marks.append(pos)
            for _ in range(min(_MARK_STRIDE, count - start)):
                if pos + 8 > end:
                    self.pos = pos
                    raise self.fail(f"file is truncated or corrupt: {what} runs past the end")
                pos += 8 + unpack(buf, pos)[0]
        if pos > end:
            self.pos = end
            raise self.fail(f"file is truncated or corrupt: {what} runs past the end")
        self.pos = pos

    def value(self, vtype: int, key: str, *, depth: int = 0):
        if vtype in _SCALAR:
            return self.unpack(_SCALAR[vtype], f"value of {key}")
        if vtype == _STRING:
            return self.string(f"value of {key}")
        if vtype == _ARRAY and depth == 0:
            etype = self.unpack("<I", f"array type of {key}")
            count = self.unpack("<Q", f"array length of {key}")
            if etype in _SCALAR:
                n = struct.calcsize(_SCALAR[etype]) * count
                self.need(n, f"array {key}")
                if count <= 16:  # small arrays are kept (e.g. per-layer head counts)
                    fmt = "<" + _SCALAR[etype][1] * count
                    items = list(struct.unpack_from(fmt, self.buf, self.pos))
                    self.pos += n
                    return items
                skipped = _ArrayLen(count, offset=self.pos, etype=etype)
                self.pos += n
                return skipped
            if etype == _STRING:
                skipped = _ArrayLen(count, offset=self.pos, etype=etype)
                self.skip_strings(count, f"array {key}", marks=skipped.marks)
                return skipped
            if etype == _ARRAY:
                raise self.fail(f"nested arrays in {key} are not supported")
            raise self.fail(f"array {key} has unknown element type {etype}")
        raise self.fail(f"metadata {key} has unknown value type {vtype}")


class _ArrayLen(int):
    """The length of an array we skipped, kept so callers can count tokens; where it
    lies, so a few of its elements can be read later without materialising it."""

    def __new__(cls, count: int, *, offset: int = 0, etype: int = 0):
        self = super().__new__(cls, count)
        self.offset, self.etype, self.marks = offset, etype, []
        return self


def _special_tokens(buf, meta: dict) -> tuple[str, ...]:
    """The text of the vocabulary's CONTROL and USER_DEFINED tokens (``<|im_start|>``...).

    Reads the int32 type array in one go and walks the token strings only near those
    tokens, from the offsets skip_strings marked: ~1 ms on the default model's 49152
    tokens, where decoding the whole list would take ~30 ms.
    """
    tokens, types = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.token_type")
    if (not isinstance(tokens, _ArrayLen) or not isinstance(types, _ArrayLen) or tokens.etype != _STRING
            or types.etype != 5 or int(types) != int(tokens) or not tokens.marks):
        return ()
    import numpy as np

    kinds = np.frombuffer(buf, dtype="<i4", count=int(types), offset=types.offset)
    wanted = np.flatnonzero((kinds == _CONTROL) | (kinds == _USER_DEFINED))[:_MAX_SPECIAL].tolist()
    unpack = struct.Struct("<Q").unpack_from
    out, at, pos = [], -1, 0
    for i in wanted:
        if at < 0 or i - at > _MARK_STRIDE:  # jump to the mark before token i
            at = i - i % _MARK_STRIDE
            pos = tokens.marks[at // _MARK_STRIDE]
        while at < i:
            pos += 8 + unpack(buf, pos)[0]
            at += 1
        n = unpack(buf, pos)[0]
        if n <= 256:  # turn markers are short; a long "special" token is not one
            out.append(bytes(buf[pos + 8:pos + 8 + n]).decode("utf-8", "replace"))
    return tuple(out)


def _file_type_name(code) -> str | None:
    import gguf
    try:
        name = gguf.LlamaFileType(int(code)).name
    except (ValueError, TypeError):
        return None
    return {"ALL_F32": "F32"}.get(name, name.removeprefix("MOSTLY_"))


def _shorten(text: str) -> str:
    from .store import shorten
    return shorten(text)


def read_info(path: str | Path, *, cache: bool = True) -> GGUFInfo:
    """Parse and validate a GGUF file's header, metadata and tensor table; a file that passed
    before, unchanged since, is answered from the run cache (``cache=False``: always read)."""
    path = Path(path)
    key = None
    if cache:
        try:
            key = {**runcache.file_key(path), "reader": READER_VERSION}
        except (OSError, ValueError):
            key = None  # missing or unreadable: the full read says what is wrong
        else:
            hit = runcache.get("gguf", key["path"], key)
            info = _from_record(path, hit) if hit is not None else None
            if info is not None:
                return info
    info = _read_info(path)
    if key is not None:
        runcache.put("gguf", key["path"], key, _to_record(info))
    return info


def _to_record(info: GGUFInfo) -> dict:
    record = {f.name: getattr(info, f.name) for f in fields(info) if f.name not in ("path", "metadata")}
    record["special_tokens"] = list(info.special_tokens)
    record["tensors"] = [[x.name, list(x.dims), x.type, x.offset, x.nbytes] for x in info.tensors]
    record["metadata"] = {k: ({"array": [int(v), v.offset, v.etype]} if isinstance(v, _ArrayLen) else v)
                          for k, v in info.metadata.items()}
    return record


def _from_record(path: Path, record) -> GGUFInfo | None:
    """The GGUFInfo a record holds; None for one this reader cannot use (it is then re-read)."""
    try:
        meta = {}
        for k, v in record["metadata"].items():
            if isinstance(v, dict):
                count, offset, etype = v["array"]
                v = _ArrayLen(count, offset=offset, etype=etype)
            meta[k] = v
        values = {f.name: record[f.name] for f in fields(GGUFInfo) if f.name not in ("path", "metadata")}
        values["special_tokens"] = tuple(values["special_tokens"])
        values["tensors"] = tuple(TensorInfo(n, tuple(d), ty, off, nb) for n, d, ty, off, nb in values["tensors"])
        return GGUFInfo(path=path, metadata=meta, **values)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


@dataclass(frozen=True)
class RawGGUF:
    """What a validated GGUF of any kind (a model, a LoRA adapter) holds: its metadata and
    its tensors (shapes in ggml order, types, where their data lies)."""

    path: Path
    size: int
    version: int
    metadata: dict
    tensors: tuple[TensorInfo, ...]
    special_tokens: tuple[str, ...] = ()


def read_raw(path: str | Path) -> RawGGUF:
    """Parse and validate a GGUF file's header, metadata and tensor table (any kind of GGUF;
    never cached: read_info is the model's, with the run cache)."""
    import gguf

    path = Path(path)
    try:
        if not path.exists():
            raise ModelFileNotFoundError(f"no such file: {_shorten(str(path))}")
        if path.is_dir():
            raise InvalidModelFileError(f"{path} is a directory, not a .gguf file",
                                        hint="Give the path of a .gguf file.")
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except OSError as exc:  # a name too long for the filesystem, no permission, ...: said, not raised as is
        raise ModelFileNotFoundError(f"cannot read {_shorten(str(path))}: {exc.strerror or exc}",
                                     hint="Check the path and its permissions.") from None
    if size < 24:
        raise InvalidModelFileError(f"{path.name}: not a GGUF file ({size} bytes is too small for a header)")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf, size, path)
        if bytes(buf[:4]) != MAGIC:
            hint = ("This looks like a PyTorch/safetensors or text file; convert it with llama.cpp's "
                    "convert_hf_to_gguf.py, or download a .gguf build.")
            raise InvalidModelFileError(f"{path.name}: not a GGUF file (wrong magic {bytes(buf[:4])!r})", hint=hint)
        cur.pos = 4
        version = cur.unpack("<I", "version")
        if version not in SUPPORTED_VERSIONS:
            raise InvalidModelFileError(
                f"{path.name}: GGUF version {version} is not supported (only {SUPPORTED_VERSIONS})",
                hint="Re-convert the model with a current llama.cpp.")
        n_tensors = cur.unpack("<Q", "tensor count")
        n_kv = cur.unpack("<Q", "metadata count")
        # Each entry takes at least this many bytes, so counts beyond the file are lies.
        if n_tensors > MAX_TENSORS or n_tensors * 32 > size:
            raise cur.fail(f"absurd tensor count {n_tensors}")
        if n_kv > MAX_KV or n_kv * 13 > size:
            raise cur.fail(f"absurd metadata count {n_kv}")

        meta: dict = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            vtype = cur.unpack("<I", f"type of {key}")
            meta[key] = cur.value(vtype, key)
        specials = _special_tokens(buf, meta)

        alignment = meta.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise cur.fail(f"general.alignment {alignment!r} is not a power of two")

        tensors = []
        for i in range(n_tensors):
            name = cur.string(f"tensor #{i} name")
            n_dims = cur.unpack("<I", f"dims of {name}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise cur.fail(f"tensor {name} has {n_dims} dimensions")
            dims = [cur.unpack("<Q", f"shape of {name}") for _ in range(n_dims)]
            ttype = cur.unpack("<I", f"type of {name}")
            offset = cur.unpack("<Q", f"offset of {name}")
            tensors.append((name, dims, ttype, offset))

        data_start = -(-cur.pos // alignment) * alignment
        infos = []
        for name, dims, ttype, offset in tensors:
            try:
                block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ttype)]
            except (ValueError, KeyError):
                raise cur.fail(f"tensor {name} has unknown type {ttype}") from None
            count = 1
            for d in dims:
                count *= d
            if count <= 0 or dims[0] % block:
                raise cur.fail(f"tensor {name} has an invalid shape {dims}")
            nbytes = count // block * type_size
            if offset % alignment or data_start + offset + nbytes > size:
                raise InvalidModelFileError(
                    f"{path.name}: file is truncated or corrupt: tensor {name} lies past the end "
                    f"({data_start + offset + nbytes} > {size} bytes)")
            infos.append(TensorInfo(name, tuple(dims), gguf.GGMLQuantizationType(ttype).name,
                                    data_start + offset, nbytes))
    return RawGGUF(path=path, size=size, version=version, metadata=meta, tensors=tuple(infos),
                   special_tokens=specials)


def _read_info(path: Path) -> GGUFInfo:
    raw = read_raw(path)
    size, version, meta, specials, infos = raw.size, raw.version, raw.metadata, raw.special_tokens, raw.tensors
    n_params = 0
    type_bytes: dict[str, int] = {}
    for t in infos:
        count = 1
        for d in t.dims:
            count *= d
        n_params += count
        type_bytes[t.type] = type_bytes.get(t.type, 0) + t.nbytes
    if meta.get("general.type") == "adapter":
        raise InvalidModelFileError(f"{path.name} is a LoRA adapter, not a model",
                                    hint="Load a model and apply the adapter to it: --lora FILE "
                                         "(or ADAPTER FILE in a Modelfile, lora= in load()).")
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise InvalidModelFileError(f"{path.name}: metadata has no general.architecture")

    def arch_int(key: str, default: int = 0) -> int:
        v = meta.get(f"{arch}.{key}", default)
        if isinstance(v, list):  # per-layer values (some archs): the largest is what memory needs
            v = max(v) if v else default
        return int(v) if isinstance(v, (int, float)) else default

    n_embd = arch_int("embedding_length")
    n_head = arch_int("attention.head_count")
    if n_embd <= 0 or n_head <= 0:
        raise InvalidModelFileError(f"{path.name}: metadata lacks {arch}.embedding_length or .attention.head_count")
    head_dim = n_embd // n_head
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = arch_int("vocab_size") or (int(tokens) if isinstance(tokens, int) else 0)
    quant = _file_type_name(meta.get("general.file_type"))
    if quant is None and type_bytes:
        quant = max(type_bytes, key=type_bytes.get)
    template = meta.get("tokenizer.chat_template")
    # An embedding model: an encoder (BERT family), or a GGUF naming a pooling (embedding models
    # built on a decoder, e.g. Qwen3-Embedding); generative GGUFs name none.
    pooling = meta.get(f"{arch}.pooling_type")
    embedding = arch in ENCODER_ARCHS or (isinstance(pooling, int) and pooling != 0)
    return GGUFInfo(
        path=path, size=size, version=version, architecture=arch,
        name=str(meta.get("general.name") or path.stem),
        quant=quant or "unknown", n_params=n_params,
        block_count=arch_int("block_count"), embedding_length=n_embd,
        feed_forward_length=arch_int("feed_forward_length"),
        head_count=n_head, head_count_kv=arch_int("attention.head_count_kv", n_head) or n_head,
        key_length=arch_int("attention.key_length", head_dim) or head_dim,
        value_length=arch_int("attention.value_length", head_dim) or head_dim,
        context_length=arch_int("context_length"), vocab_size=vocab, embedding_model=embedding,
        tensor_count=len(infos),
        chat_template=template if isinstance(template, str) and template.strip() else None,
        license=meta.get("general.license") if isinstance(meta.get("general.license"), str) else None,
        metadata=meta, special_tokens=specials, tensors=tuple(infos),
    )
