"""A created model in the store: one small JSON manifest, ``created/<name>.json``.

It holds the Modelfile's meaning (FROM as written for a name, as an absolute path for a
file; ADAPTER paths absolute with their size and SHA-256; parameters, SYSTEM, MESSAGEs,
LICENSE, TEMPLATE and the prompt format it was recognised as) and never a copy of the
base file. Written atomically (store.write_json_atomic) under the store's lock, so a
manifest is whole or absent.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import config, store
from ..errors import ModelfileError
from .modelfile import Adapter, Modelfile

VERSION = 1


@dataclass(frozen=True)
class StoredAdapter:
    path: str  # absolute
    scale: float = 1.0
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class CreatedModel:
    name: str
    modelfile: Modelfile  # FROM and ADAPTER paths as stored (absolute for files)
    format: str | None = None  # FORMAT, or the named format TEMPLATE was recognised as
    adapters: tuple[StoredAdapter, ...] = ()
    created_at: float = field(default_factory=time.time)
    path: Path | None = field(default=None, compare=False)

    @property
    def from_(self) -> str:
        return self.modelfile.from_

    @property
    def ref(self) -> str:
        return self.name

    @property
    def size(self) -> int:
        """The manifest's own bytes (the base file is not the created model's)."""
        try:
            return self.path.stat().st_size if self.path else 0
        except OSError:
            return 0

    @property
    def modified(self) -> float:
        try:
            return self.path.stat().st_mtime if self.path else self.created_at
        except OSError:
            return self.created_at

    def to_json(self) -> dict:
        mf = self.modelfile
        return {"version": VERSION, "name": self.name, "from": mf.from_,
                "parameters": {k: list(v) if k == "stop" else v for k, v in mf.parameters.items()},
                "system": mf.system, "messages": [dict(m) for m in mf.messages],
                "adapters": [{"path": a.path, "scale": a.scale, "size": a.size, "sha256": a.sha256}
                             for a in self.adapters],
                "license": list(mf.license), "template": mf.template, "format": self.format,
                "format_written": mf.format,
                "requires": mf.requires, "created_at": self.created_at}

    @classmethod
    def from_json(cls, data: dict, path: Path | None = None) -> "CreatedModel":
        params = dict(data.get("parameters") or {})
        if "stop" in params:
            params["stop"] = tuple(params["stop"])
        adapters = tuple(StoredAdapter(a["path"], float(a.get("scale", 1.0)), a.get("size"), a.get("sha256"))
                         for a in data.get("adapters") or ())
        mf = Modelfile(from_=data["from"], parameters=params, system=data.get("system"),
                       messages=tuple({"role": m["role"], "content": m["content"]} for m in data.get("messages") or ()),
                       adapters=tuple(Adapter(a.path, a.scale) for a in adapters),
                       license=tuple(data.get("license") or ()), template=data.get("template"),
                       format=data.get("format_written"),
                       requires=data.get("requires"))
        return cls(name=data["name"], modelfile=mf, format=data.get("format"), adapters=adapters,
                   created_at=float(data.get("created_at") or 0.0), path=path)

    def modelfile_text(self) -> str:
        """What `slmrun show --modelfile` prints: the Modelfile that creates this model again."""
        mf = self.modelfile
        if mf.template is not None and self.format and mf.format is None:
            header = f"TEMPLATE was recognised as the {self.format} prompt format"
        else:
            header = None
        return mf.to_text(header=f"Modelfile of {self.name} (slmrun show --modelfile {self.name})"
                                 + (f"\n{header}" if header else ""))


def created_dir() -> Path:
    return config.home() / "created"


def manifest_path(name: str) -> Path:
    return created_dir() / f"{store.check_store_name(name)}.json"


def read(name: str) -> CreatedModel | None:
    """The created model ``name``, or None when there is none (a name the store rule refuses
    is never one)."""
    if not store.is_model_name(name):
        return None
    path = created_dir() / f"{name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return CreatedModel.from_json(data, path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelfileError(f"the manifest of the created model {name} is damaged ({path}: {exc})",
                             hint=f"Create it again with `slmrun create {name} -f Modelfile`, "
                                  f"or remove it with `slmrun rm {name}`.") from None


def write(model: CreatedModel) -> CreatedModel:
    path = manifest_path(model.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    store.write_json_atomic(path, model.to_json())
    return CreatedModel(model.name, model.modelfile, model.format, model.adapters, model.created_at, path)


def remove(name: str) -> bool:
    with contextlib.suppress(FileNotFoundError):
        manifest_path(name).unlink()
        return True
    return False


def list_all() -> list[CreatedModel]:
    """Every created model, by name; a damaged manifest is skipped (`show NAME` names it)."""
    root = created_dir()
    out = []
    for path in sorted(root.glob("*.json")) if root.is_dir() else ():
        with contextlib.suppress(ModelfileError):
            model = read(path.stem)
            if model is not None:
                out.append(model)
    return out
