"""What lies inside a GGUF that gguf_info validated: digests of its tensors and vocabulary
(a conversion's check, a KL-divergence pairing's check) and llama-imatrix's importance
matrices (the quantizer's input). Kept apart from the reader, which every start imports."""

from __future__ import annotations

import mmap
from pathlib import Path

from .errors import InvalidModelFileError, ModelFileNotFoundError
from .gguf_info import _STRING, MAGIC, GGUFInfo, _ArrayLen, _Cursor, read_info


def tensor_digest(info: GGUFInfo) -> str:
    """SHA-256 over every tensor's name, type, shape and bytes, in file order.

    What a model computes with, without the metadata: a conversion's result is checked with
    it, since its metadata block may differ between gguf versions while the weights may not.
    """
    import hashlib

    h = hashlib.sha256()
    with open(info.path, "rb") as f:
        for t in info.tensors:
            h.update(f"{t.name}\0{t.type}\0{','.join(map(str, t.dims))}\0".encode())
            f.seek(t.offset)
            left = t.nbytes
            while left:
                chunk = f.read(min(left, 4 << 20))
                if not chunk:
                    raise InvalidModelFileError(f"{info.path.name}: tensor {t.name} is cut short")
                h.update(chunk)
                left -= len(chunk)
    return h.hexdigest()


def vocabulary_digest(path: str | Path) -> str:
    """A SHA-256 of the vocabulary: the tokenizer model's name and every token's text, as
    stored in ``tokenizer.ggml.tokens``. Two files with the same digest number the same
    texts the same way (what comparing their logits needs). Validates the file first."""
    import hashlib

    info = read_info(path)
    tokens = info.metadata.get("tokenizer.ggml.tokens")
    h = hashlib.sha256(str(info.metadata.get("tokenizer.ggml.model", "")).encode())
    if not isinstance(tokens, _ArrayLen) or tokens.etype != _STRING:
        h.update(f"no token list; {info.vocab_size} tokens".encode())
        return h.hexdigest()
    with open(info.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf, info.size, info.path)
        cur.pos = tokens.offset
        cur.skip_strings(int(tokens), "tokenizer.ggml.tokens")
        h.update(int(tokens).to_bytes(8, "little"))
        h.update(buf[tokens.offset:cur.pos])
    return h.hexdigest()


def read_imatrix(path: str | Path) -> dict:
    """An importance matrix file (llama-imatrix's GGUF format: ``<tensor>.in_sum2`` and
    ``<tensor>.counts`` per weight) as {tensor name: float32 values}, normalised as
    llama-quantize does (the sums over each expert's count; 1 where nothing was counted)."""
    import gguf
    import numpy as np

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelFileNotFoundError(f"no such importance matrix file: {path}")
    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            raise InvalidModelFileError(f"{path.name} is not a GGUF importance matrix (the old .dat format is "
                                        "not read)", hint="Convert it with llama-imatrix --in-file OLD.dat "
                                                          "-o NEW.gguf, or make one with llama-imatrix.")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # gguf's reader raises ValueError and friends on damage
        raise InvalidModelFileError(f"{path.name}: not a readable GGUF file ({exc})") from None
    sums, counts = {}, {}
    for t in reader.tensors:
        if t.name.endswith(".in_sum2"):
            sums[t.name[:-len(".in_sum2")]] = np.asarray(t.data, dtype=np.float32).reshape(-1)
        elif t.name.endswith(".counts"):
            counts[t.name[:-len(".counts")]] = np.asarray(t.data, dtype=np.float32).reshape(-1)
    if not sums or set(sums) != set(counts):
        raise InvalidModelFileError(f"{path.name}: no importance matrix in it (each weight needs .in_sum2 "
                                    "and .counts)")
    out = {}
    for name, s in sums.items():
        c = counts[name]
        per = s.reshape(len(c), -1)
        values = np.where(c[:, None] > 0, per / np.where(c > 0, c, 1)[:, None], np.float32(1))
        if not np.all(np.isfinite(values)):
            raise InvalidModelFileError(f"{path.name}: the importance matrix of {name} has non-finite values")
        out[name] = values.astype(np.float32).reshape(-1)
    return out
