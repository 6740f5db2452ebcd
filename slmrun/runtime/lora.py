"""LoRA adapters in the runtime: loading them into llama.cpp, what a request asks for, and
which adapter set each engine step decodes with.

llama.cpp applies adapters to the whole context (``llama_set_adapters_lora``), so one
``llama_decode`` can only serve sequences that want the same set. The engine groups each
step by adapter set and the sets take turns (``Turns``); a slot's cached tokens are only
reused by a request with the same set (slots.py), because KV computed under one adapter is
not the KV of another (llama.cpp#26207's contamination). Changing the set makes llama.cpp
reserve its compute graphs again (llama_context::sched_reserve), so a set keeps the turn for
a few steps while others wait (``quantum``).

An adapter set is a key: a sorted tuple of (adapter index, scale) with every scale non-zero;
() is the base model.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Sequence

from ..errors import InvalidAdapterError, InvalidArgumentError

AdapterKey = tuple  # ((index, scale), ...)
# Steps an adapter set keeps the turn while another waits. Switching sets costs llama.cpp about
# one decode step (sched_reserve; measured: a one-token step 48 -> 94 ms when every step
# switched, on a loaded machine), so 16 steps hold that overhead near 6%.
TURN_STEPS = 16


def normalize(pairs) -> AdapterKey:
    return tuple(sorted((int(i), float(s)) for i, s in pairs if float(s) != 0.0))


class LoadedAdapters:
    """The adapters a model was loaded with (index = load order) and the set now applied."""

    def __init__(self, handle, specs: Sequence[tuple[str | Path, float]]):
        lib = handle._lib
        self._lib, self._h = lib, handle
        self.paths: list[str] = []
        self.scales: list[float] = []
        self._ptrs = []
        for path, scale in specs:
            ptr = lib.llama_adapter_lora_init(handle.model, str(path).encode())
            if not ptr:
                raise InvalidAdapterError(f"llama.cpp could not load the adapter {Path(path).name}",
                                          hint="Set SLMRUN_DEBUG=1 to see llama.cpp's reason.")
            self._ptrs.append(ptr)
            self.paths.append(str(path))
            self.scales.append(float(scale))
        self.default: AdapterKey = normalize(enumerate(self.scales))
        self.current: AdapterKey | None = None

    def __len__(self) -> int:
        return len(self._ptrs)

    def describe(self) -> list[dict]:
        """llama-server's GET /lora-adapters: id, path, scale (the default)."""
        return [{"id": i, "path": p, "scale": s} for i, (p, s) in enumerate(zip(self.paths, self.scales))]

    def key_for(self, wanted) -> AdapterKey:
        """A request's ``adapters``: None for the loaded scales; else llama-server's
        ``[{"id": i, "scale": s}]``, (index, scale) pairs or {index: scale}, where an adapter
        not named gets scale 0 ([] is the base model)."""
        if wanted is None:
            return self.default
        items = wanted.items() if isinstance(wanted, dict) else wanted
        if not isinstance(items, (list, tuple)) and not isinstance(wanted, dict):
            raise InvalidArgumentError(f"adapters must be a list of {{'id', 'scale'}} or (id, scale), got {wanted!r}")
        pairs = []
        for item in items:
            if isinstance(item, dict) and "scale" in item:
                i, s = item.get("id"), item["scale"]
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                i, s = item
            else:
                raise InvalidArgumentError(f"adapters: {item!r} is not {{'id': N, 'scale': X}} or (N, X)")
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(self):
                loaded = f"0 to {len(self) - 1}" if len(self) else "none: the model was loaded without adapters"
                raise InvalidArgumentError(f"adapters: no adapter {i!r} (loaded: {loaded})",
                                           hint="Load it with lora=[(path, scale)] (--lora FILE, ADAPTER in a Modelfile).")
            if isinstance(s, bool) or not isinstance(s, (int, float)) or s != s or abs(s) > 1e4:
                raise InvalidArgumentError(f"adapters: the scale of adapter {i} must be a number, got {s!r}")
            pairs.append((i, s))
        if len({i for i, _ in pairs}) != len(pairs):
            raise InvalidArgumentError("adapters: an adapter is named twice")
        return normalize(pairs)

    def apply(self, key: AdapterKey) -> None:
        """Make ``key`` the context's adapter set (engine thread; a no-op when it already is)."""
        if key == self.current:
            return
        n = len(key)
        ptrs = (type(self._ptrs[0]) * n)(*[self._ptrs[i] for i, _ in key]) if n else None
        scales = (ctypes.c_float * n)(*[s for _, s in key]) if n else None
        self._lib.llama_set_adapters_lora(self._h.ctx, ptrs, n, scales)
        self.current = key


class Turns:
    """Which adapter set the next step decodes: the sets with work take turns, each for up to
    ``quantum`` steps, in the order they first had work; a set with no work gives up its turn."""

    def __init__(self, quantum: int = TURN_STEPS):
        self.quantum = quantum
        self.order: list = []
        self.current = None
        self.used = 0

    def pick(self, keys) -> object:
        waiting = list(dict.fromkeys(keys))
        self.order = [k for k in self.order if k in waiting] + [k for k in waiting if k not in self.order]
        if self.current in waiting and self.used < self.quantum:
            self.used += 1
            return self.current
        if self.current in self.order:  # the next set after the current one
            i = self.order.index(self.current)
            self.order = self.order[i + 1:] + self.order[:i + 1]
        self.current, self.used = self.order[0], 1
        return self.current
