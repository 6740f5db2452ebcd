"""Evaluation results: the row every task returns, and the store that keeps them per model
file (by SHA-256) and per task, for `slmrun eval` to show and the planner to use.

    $SLMRUN_HOME/evals/<sha256>.json   {"sha256", "model", "tasks": {task: [record, ...]}}

A record is replaced by a later one with the same key (the task's KEY_FIELDS: for
perplexity the reference file, the text and the context), so measuring again updates it.
Writes are atomic (a temporary file, then a rename) under the store's lock.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .. import config

# The fields of a record's meta that say what was measured; a new record replaces an old
# one with the same values. A new task adds its own line.
KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "perplexity": ("reference_sha256", "text_sha256", "n_ctx"),
}
# References whose own quality loss is nil: KL divergence measured against them is the
# quant's loss, and the planner may rank by it (docs/CALIBRATION.md).
FULL_PRECISION = frozenset({"F32", "F16", "BF16"})


@dataclass
class EvalRow:
    """One model (and method) on one task: its figures under their plain names (perplexity,
    kl_divergence, top1_agreement, accuracy, ...) and what was measured (meta)."""

    model: str
    method: str
    task: str
    figures: dict
    meta: dict = field(default_factory=dict)
    sha256: str | None = None

    def to_dict(self) -> dict:
        """The --json shape: model, method, task, the figures at the top level, then the meta."""
        return {"model": self.model, "method": self.method, "task": self.task, **self.figures,
                **{k: v for k, v in self.meta.items() if k not in self.figures}, "sha256": self.sha256}

    def key(self) -> tuple:
        return tuple(self.meta.get(k) for k in KEY_FIELDS.get(self.task, ()))


def results_dir() -> Path:
    return config.home() / "evals"


def _path(sha256: str) -> Path:
    if not (isinstance(sha256, str) and len(sha256) == 64 and all(c in "0123456789abcdef" for c in sha256)):
        raise ValueError(f"not a SHA-256: {sha256!r}")
    return results_dir() / f"{sha256}.json"


def load(sha256: str) -> dict:
    """Everything kept for one model file ({} when nothing is)."""
    path = _path(sha256)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def records(sha256: str, task: str) -> list[dict]:
    tasks = load(sha256).get("tasks")
    found = tasks.get(task, []) if isinstance(tasks, dict) else []
    return [r for r in found if isinstance(r, dict)]


def save(sha256: str, row: EvalRow) -> Path:
    """Keep ``row`` for the file ``sha256`` (replacing the record with the same key)."""
    from .. import store

    path = _path(sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"model": row.model, "method": row.method, "figures": row.figures, "meta": row.meta,
              "key": list(row.key()), "at": time.time()}
    with store.lock("evals", sha256[:16]):
        data = load(sha256) or {"sha256": sha256}
        data["model"] = row.model
        tasks = data.setdefault("tasks", {})
        kept = [r for r in tasks.get(row.task, []) if r.get("key") != record["key"] or r.get("method") != row.method]
        tasks[row.task] = kept + [record]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class Measured:
    """A quant's measured quality: mean KL divergence from a full-precision reference."""

    kld: float
    reference: str
    n_tokens: int
    ln_ppl_ratio: float | None = None


def measured_quality(files: Mapping[str, str | None]) -> dict[str, Measured]:
    """{quant: Measured} for the files ``{quant: sha256}`` that were evaluated against a
    full-precision reference (F32, F16, BF16). So the quants compare on one footing, only
    the records of one measurement setting (reference, text, context) are used: the one
    that covers the most of these quants (then the most tokens). The reference's own file,
    when among them, counts as measured at 0."""
    groups: dict[tuple, dict[str, dict]] = {}
    for quant, sha in files.items():
        if not sha:
            continue
        for r in records(sha, "perplexity"):
            meta, figures = r.get("meta") or {}, r.get("figures") or {}
            kld = (figures.get("kl_divergence") or {}).get("mean")
            if str(meta.get("reference_quant", "")).upper() not in FULL_PRECISION or not isinstance(kld, (int, float)):
                continue
            key = (meta.get("reference_sha256"), meta.get("text_sha256"), meta.get("n_ctx"))
            groups.setdefault(key, {})[quant] = r
    if not groups:
        return {}
    key, chosen = max(groups.items(), key=lambda kv: (len(kv[1]), sum((r.get("figures") or {}).get("n_tokens", 0)
                                                                        for r in kv[1].values())))
    out = {}
    for quant, r in chosen.items():
        f, meta = r["figures"], r["meta"]
        out[quant] = Measured(kld=float(f["kl_divergence"]["mean"]), reference=str(meta.get("reference")),
                              n_tokens=int(f.get("n_tokens", 0)), ln_ppl_ratio=f.get("ln_ppl_ratio"))
    ref_sha = key[0]
    any_row = next(iter(chosen.values()))
    for quant, sha in files.items():
        if sha and sha == ref_sha and quant not in out:
            out[quant] = Measured(kld=0.0, reference=str(any_row["meta"].get("reference")), n_tokens=0,
                                  ln_ppl_ratio=0.0)
    return out


def measured_kld(target) -> dict[str, float]:
    """{quant: mean KL divergence} for the quants of ``target`` (a registry entry, a LocalModel
    or a model name) measured against a full-precision reference, found by their files'
    SHA-256 (the registry's, and the store's for local files): what ``planner.plan`` takes
    as ``measured``. Never raises: a damaged results file must not stop a plan or a load."""
    from .. import store

    try:
        name = target if isinstance(target, str) else getattr(target, "name", None)
        files = {f.quant: f.sha256 for f in getattr(target, "files", ()) if hasattr(f, "quant") and f.sha256}
        for m in store.find(name) if name else ():
            if m.sha256:
                files[m.quant] = m.sha256
        return {q: m.kld for q, m in measured_quality(files).items()}
    except Exception:
        return {}
