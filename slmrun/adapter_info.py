"""LoRA adapter GGUFs: read and checked against the model before llama.cpp sees them.

llama.cpp's own checks (src/llama-adapter.cpp) end in a log line and a NULL, and it trusts
the tensor data offsets; here every rule it applies is checked first and each failure is an
InvalidAdapterError that says which file and what: not a GGUF or truncated (gguf_info's
bounds checks), not an adapter (``general.type``), not LoRA (``adapter.type``), made for
another architecture, a tensor the model does not have, or shapes that do not fit it.

An adapter holds, for each adapted weight W (ggml shape [n_in, n_out]), ``W.lora_a``
[n_in, r] and ``W.lora_b`` [r, n_out]; llama.cpp adds ``scale * alpha / r * B(A x)`` to
``W x`` (alpha = ``adapter.lora.alpha``, or r when absent). The token embedding is the
exception: its A and B are flipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidAdapterError, InvalidModelFileError, ModelFileNotFoundError


@dataclass(frozen=True)
class AdapterInfo:
    path: Path
    size: int
    architecture: str
    alpha: float  # 0: none recorded (llama.cpp then scales by 1)
    rank: int
    name: str
    pairs: dict = field(default_factory=dict, repr=False)  # target tensor -> (A dims, B dims)

    def describe(self) -> str:
        return f"{self.path.name} (LoRA r={self.rank}, alpha={self.alpha:g}, {len(self.pairs)} tensors, {self.architecture})"


def read_adapter(path: str | Path) -> AdapterInfo:
    """A LoRA adapter GGUF, validated on its own (InvalidAdapterError otherwise)."""
    from .gguf_info import read_raw

    path = Path(path).expanduser()
    try:
        raw = read_raw(path)
    except ModelFileNotFoundError:
        raise ModelFileNotFoundError(f"no such adapter file: {path}", hint="Check the path of the LoRA adapter.") from None
    except InvalidModelFileError as exc:
        raise InvalidAdapterError(f"the adapter {exc.message}", hint="Download or convert the adapter again.") from None
    meta = raw.metadata
    kind, arch, lora = meta.get("general.type"), meta.get("general.architecture"), meta.get("adapter.type")
    if kind != "adapter":
        what = "a model, not an adapter" if kind in (None, "model") else f"of type {kind!r}, not an adapter"
        raise InvalidAdapterError(f"{path.name} is {what} (general.type is {kind!r})")
    if lora != "lora":
        raise InvalidAdapterError(f"{path.name} is a {lora!r} adapter; only LoRA adapters are supported")
    if not isinstance(arch, str) or not arch:
        raise InvalidAdapterError(f"{path.name}: metadata has no general.architecture")
    alpha = meta.get("adapter.lora.alpha", 0.0)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha != alpha or alpha < 0:
        raise InvalidAdapterError(f"{path.name}: adapter.lora.alpha is {alpha!r}, not a number >= 0")
    parts: dict[str, dict] = {}
    for t in raw.tensors:
        name, dims = t.name, t.dims
        for suffix in (".lora_a", ".lora_b"):
            if name.endswith(suffix):
                parts.setdefault(name[:-len(suffix)], {})[suffix[-1]] = dims
                break
        else:
            if not name.endswith("_norm.weight"):  # llama.cpp skips norm vectors, and refuses anything else
                raise InvalidAdapterError(f"{path.name}: tensor {name!r} is neither a LoRA A nor a B matrix")
    if not parts:
        raise InvalidAdapterError(f"{path.name} has no LoRA tensors")
    pairs, ranks = {}, set()
    for target, ab in parts.items():
        if set(ab) != {"a", "b"}:
            raise InvalidAdapterError(f"{path.name}: {target} has a lora_{'a' if 'b' in ab else 'b'} "
                                      f"without its lora_{'b' if 'b' not in ab else 'a'}")
        a, b = ab["a"], ab["b"]
        if len(a) != 2 or len(b) != 2:
            raise InvalidAdapterError(f"{path.name}: {target}'s LoRA matrices are not 2-dimensional")
        flipped = target.endswith("token_embd.weight")
        rank = a[0] if flipped else a[1]
        if not flipped and a[1] != b[0]:
            raise InvalidAdapterError(f"{path.name}: {target}.lora_a {list(a)} and .lora_b {list(b)} do not "
                                      "chain (an adapter from llama.cpp's old finetune example?)")
        ranks.add(rank)
        pairs[target] = (a, b)
    return AdapterInfo(path=path, size=raw.size, architecture=arch, alpha=float(alpha),
                       rank=max(ranks), name=str(meta.get("general.name") or path.stem), pairs=pairs)


def check_fits(adapter: AdapterInfo, model) -> None:
    """The adapter applies to ``model`` (a gguf_info.GGUFInfo) as llama.cpp would apply it."""
    where = f"the adapter {adapter.path.name}"
    shapes = {t.name: t.dims for t in model.tensors}
    if adapter.architecture != model.architecture:
        raise InvalidAdapterError(f"{where} is for {adapter.architecture} models; {model.path.name} is "
                                  f"{model.architecture}", hint="Use an adapter trained on this base model.")
    for target, (a, b) in adapter.pairs.items():
        w = shapes.get(target)
        if w is None:
            raise InvalidAdapterError(f"{where} adapts {target}, which {model.path.name} does not have",
                                      hint="Use an adapter trained on this base model.")
        flipped = target.endswith("token_embd.weight")
        fits = (w[0] == b[1] and w[1] == a[1]) if flipped else (len(w) >= 2 and w[0] == a[0] and w[1] == b[1])
        if not fits:
            raise InvalidAdapterError(f"{where} does not fit {model.path.name}: {target} is {list(w)} in the model "
                                      f"but the adapter's A {list(a)} and B {list(b)} make "
                                      f"{[b[1], a[1]] if flipped else [a[0], b[1]]}",
                                      hint="Use an adapter trained on this base model (same size and architecture).")


def prepare(lora, model, created=()) -> list[tuple[str, float]]:
    """The (path, scale) adapters a load applies: a created model's (``created``: its stored
    adapters, each checked to be the file it was created with) then ``lora`` (paths, or
    (path, scale) pairs), every one read and checked against ``model`` (a GGUFInfo) here."""
    out = []
    for a in created:
        path = Path(a.path)
        if not path.is_file() or (a.size is not None and path.stat().st_size != a.size):
            raise InvalidAdapterError(f"the adapter {path} {'is gone' if not path.is_file() else 'changed'} "
                                      "since the model was created",
                                      hint="Put it back, or create the model again (`slmrun create`).")
        out.append((str(path), float(a.scale)))
    for item in lora or ():
        path, scale = (item, 1.0) if isinstance(item, (str, Path)) else item
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale != scale:
            raise InvalidAdapterError(f"the scale of the adapter {path} must be a number, got {scale!r}")
        out.append((str(Path(path).expanduser()), float(scale)))
    for path, _ in out:
        check_fits(read_adapter(path), model)
    return out
