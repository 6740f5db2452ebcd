"""Memory read bandwidth: measured once (a one-core streaming read) and cached per CPU in
config.home()/hardware.json, because a token's speed is bandwidth over bytes read.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .. import config
from ..errors import InvalidArgumentError
from .linux import cpu_facts

MiB = 1 << 20


def measure_bandwidth(*, size_mb: int = 256, repeats: int = 5) -> float:
    """Single-thread streaming read bandwidth in GB/s (10**9 B/s): the best of `repeats`.

    Generating a token reads every weight once, so tokens/s ~ bandwidth / model
    bytes. This is one core's figure (a numpy sum); on SBCs and laptops llama.cpp's
    all-thread effective rate lands near it (docs/CALIBRATION.md).
    """
    if size_mb < 1 or repeats < 1:
        raise InvalidArgumentError("size_mb and repeats must be at least 1.")
    import numpy as np

    data = np.ones(size_mb * MiB // 8)  # ones() touches every page: no page faults while timing
    read, nbytes = data.sum, data.nbytes
    read()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        read()
        best = min(best, time.perf_counter() - start)
    return nbytes / max(best, 1e-9) / 1e9


def bandwidth_key(cpu: dict) -> str:
    return f"{cpu['cpu_model']}|{cpu['logical_cores']}"


def cached(key: str, measure_if_missing: bool) -> float | None:
    """The cached figure for CPU `key`; measured and cached first when missing and allowed."""
    path = config.home() / "hardware.json"
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    cache = cache if isinstance(cache, dict) else {}
    entries = cache.get("bandwidth") if isinstance(cache.get("bandwidth"), dict) else {}
    entry = entries.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("gbs"), (int, float)):
        return float(entry["gbs"])
    if not measure_if_missing:
        return None
    try:
        gbs = round(measure_bandwidth(), 2)
    except MemoryError:
        return None
    cache["bandwidth"] = {**entries, key: {"gbs": gbs, "measured_at": int(time.time())}}
    try:  # a read-only home still gets the figure, just not cached
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
    return gbs


def cached_bandwidth(*, measure_if_missing: bool = True) -> float | None:
    """This machine's bandwidth from config.home()/hardware.json, keyed by CPU model and
    core count; measured and cached first when missing and allowed."""
    return cached(bandwidth_key(cpu_facts(Path(os.sep), True)), measure_if_missing)
