"""Which models are loaded: on first use, for ``keep_alive`` after their last request,
several at once while the planner's estimates fit the memory budget together, the least
recently used idle one unloaded first when they do not.

All bookkeeping runs on the event loop's thread (no lock needed between a check and
what follows it, as long as no ``await`` sits between them); loading and closing
models, which block, run in worker threads, one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field

from ..errors import InsufficientMemoryError, ModelNotFoundError, QueueFullError

log = logging.getLogger("slmrun.server")


@dataclass
class Loaded:
    key: str  # the canonical "name:quant" the model was loaded as
    model: object  # slmrun.runtime.Model
    bytes: int  # the planner's estimate of its memory
    keep_alive: float  # seconds after its last request (math.inf: forever)
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    expires_at: float = math.inf  # monotonic; only while idle
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Resident:
    """What plan_unloads needs of a loaded model."""
    key: str
    bytes: int
    busy: bool
    last_used: float


def plan_unloads(loaded: list[Resident], *, key: str, need: int, budget: int) -> list[str]:
    """The idle models to unload (least recently used first) so that ``need`` more bytes fit
    the budget. Raises InsufficientMemoryError if the model cannot fit even alone, and
    QueueFullError (retry later) if only busy models stand in the way."""
    from ..units import format_bytes

    if need > budget:
        raise InsufficientMemoryError(
            f"{key} needs about {format_bytes(need)}; the server's memory budget is {format_bytes(budget)}",
            hint="Use a smaller quant or context (--ctx), fewer slots (--parallel), or a larger --memory.")
    free = budget - sum(m.bytes for m in loaded)
    victims = []
    for m in sorted((m for m in loaded if not m.busy), key=lambda m: m.last_used):
        if need <= free:
            break
        victims.append(m.key)
        free += m.bytes
    if need > free:
        busy = ", ".join(m.key for m in loaded if m.busy)
        raise QueueFullError(f"{key} needs about {format_bytes(need)} but only {format_bytes(max(free, 0))} is free "
                             f"while {busy} answer other requests",
                             hint="Try again when they finish; `slmrun ps` shows what is loaded.")
    return victims


class Lease:
    """A request's hold on a loaded model: it is not unloaded until every lease is released."""

    def __init__(self, manager: "ModelManager", entry: Loaded, load_s: float):
        self._manager = manager
        self.entry = entry
        self.model = entry.model
        self.load_s = load_s  # what this request waited for the model to load (Ollama's load_duration)
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._manager._release(self.entry)

    def release_threadsafe(self, *_ignored) -> None:
        """For a Response's done-callback, which runs on the engine's thread."""
        try:
            self._manager._loop.call_soon_threadsafe(self.release)
        except RuntimeError:  # the loop is closed: the server is gone, nothing left to keep
            pass


class ModelManager:
    def __init__(self, *, keep_alive: float, load_kwargs: dict | None = None, memory_budget: int | None = None,
                 pinned: tuple[str, ...] = (), resolve_ttl: float = 5.0):
        self.keep_alive = keep_alive
        self.load_kwargs = dict(load_kwargs or {})
        self.memory_budget = memory_budget  # None: measured (what was available at start, minus the reserve)
        self.pinned = set(pinned)  # keys loaded at start: kept until asked otherwise
        self.lora: tuple = ()  # serve --lora: (path, scale) adapters loaded with ...
        self.lora_keys: set[str] = set()  # ... these models (the -m ones)
        self._models: dict[str, Loaded] = {}
        self._load_lock = asyncio.Lock()
        self._loading: set[str] = set()
        self._resolved: dict[str, tuple[float, str]] = {}
        self._resolve_ttl = resolve_ttl
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reaper: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._start_budget: int | None = None
        self.counters = {"loads": 0, "unloads": 0}
        self.on_unload = None  # callback(key): the metrics keep totals across loads

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.memory_budget is None:
            self._start_budget = await asyncio.to_thread(self._measured_budget)
        self._reaper = asyncio.create_task(self._reap())

    async def close(self) -> None:
        """Unload everything (requests still running end with ModelClosedError)."""
        if self._reaper is not None:
            self._reaper.cancel()
        for key in list(self._models):
            await self._unload(key)

    # --- names -------------------------------------------------------------------------------
    def resolve(self, ref: str) -> str:
        """A name from a request -> the canonical key (worker thread: it reads the store)."""
        from .. import api

        now = time.monotonic()
        hit = self._cached(ref)
        if hit is not None:
            return hit
        try:
            r = api.resolve(ref, allow_path=False)
        except ModelNotFoundError as exc:  # the library's hint speaks of the command line
            guess = exc.hint.split("Known models")[0] if exc.hint.startswith("Did you mean") else ""
            raise ModelNotFoundError(exc.message, hint=guess + "GET /v1/models or /api/tags lists the local "
                                                       "models; POST /api/pull fetches one from the registry.") from None
        key = r.key
        self._resolved[ref] = (now, key)
        return key

    def forget_names(self) -> None:
        """After a pull or delete: names may now resolve differently."""
        self._resolved.clear()

    # --- leases ------------------------------------------------------------------------------
    def _cached(self, ref: str) -> str | None:
        hit = self._resolved.get(ref)
        return hit[1] if hit and time.monotonic() - hit[0] < self._resolve_ttl else None

    async def lease(self, ref: str, *, keep_alive: float | None = None) -> Lease:
        # A name resolved moments ago needs no worker thread: the hop costs more than a short
        # embedding request's whole decode (benchmarks/EMBEDDINGS.md).
        key = self._cached(ref) or await asyncio.to_thread(self.resolve, ref)
        entry = self._models.get(key)
        if entry is not None and entry.model.broken is not None:  # an RPC server it was split over failed
            log.warning("%s lost an RPC server (%s); loading it again", key, entry.model.broken)
            self._models.pop(key, None)
            entry = None
        load_s = 0.0
        if entry is None:
            t0 = time.perf_counter()
            async with self._load_lock:
                entry = self._models.get(key)
                if entry is None:
                    entry = await self._load(key)
            load_s = time.perf_counter() - t0
        self._hold(entry, keep_alive)
        return Lease(self, entry, load_s)

    def _hold(self, entry: Loaded, keep_alive: float | None) -> None:
        entry.in_flight += 1
        entry.expires_at = math.inf
        entry.last_used = time.monotonic()
        if keep_alive is not None:
            entry.keep_alive = keep_alive
        elif entry.key not in self.pinned:
            entry.keep_alive = self.keep_alive

    def _release(self, entry: Loaded) -> None:
        entry.in_flight -= 1
        entry.last_used = time.monotonic()
        if entry.in_flight == 0:
            entry.expires_at = entry.last_used + entry.keep_alive
            self._wake.set()

    def get(self, key: str) -> Loaded | None:
        return self._models.get(key)

    # --- loading and unloading -----------------------------------------------------------------
    def _measured_budget(self) -> int:
        from ..hardware import detect
        from ..planner import budget_bytes

        return budget_bytes(detect())

    def _budget(self) -> int:
        """The start budget, or less if other programs took memory since (what is available
        now plus what our own models hold)."""
        if self.memory_budget is not None:
            return self.memory_budget
        now = self._measured_budget() + sum(m.bytes for m in self._models.values())
        return min(self._start_budget or now, now)

    def _plan(self, key: str) -> tuple[dict, int, dict]:
        """Load options, estimated bytes and details for ``key`` (worker thread)."""
        from .. import api
        from ..hardware import detect
        from ..planner import choose_parallel, default_context, effective_flash_attn, estimate_memory, spec_from_gguf

        r = api.resolve(key, allow_path=False)
        info = api.inspect_file(r)
        spec = spec_from_gguf(info)
        kw = dict(self.load_kwargs)
        fa = effective_flash_attn(kw.get("flash_attn"), None)
        # A created model's PARAMETER num_ctx wins over --ctx (Ollama's: the model's over the server's default).
        n_ctx = (r.custom.num_ctx if r.custom is not None else None) or kw.get("n_ctx") or default_context(spec)
        batch = min(512, n_ctx)
        if api.is_encoder(info):  # an embedding model: its own context, sequences per batch, no cache
            kw.pop("n_parallel", None)
            kw.pop("n_ctx", None)
            n_ctx = min(n_ctx, info.context_length or n_ctx)
            need = estimate_memory(spec, weights_bytes=info.size, n_ctx=n_ctx, n_batch=max(512, n_ctx),
                                   n_ubatch=max(512, n_ctx), flash_attn=fa, n_parallel=api.ENCODER_SEQS).total
            return kw, need, self._details(r, info, n_ctx)
        if kw.get("rpc"):
            kw["n_parallel"] = kw.get("n_parallel") or 1  # a split is for fitting, not throughput
        if not kw.get("n_parallel"):
            kw["n_parallel"] = choose_parallel(spec, weights_bytes=info.size, n_ctx=n_ctx, hw=detect(), n_batch=batch,
                                               flash_attn=fa).n_parallel
        kw["n_ctx"] = n_ctx
        need = estimate_memory(spec, weights_bytes=info.size, n_ctx=n_ctx, n_batch=batch, n_ubatch=batch,
                               flash_attn=fa, n_parallel=kw["n_parallel"]).total
        if kw.get("rpc"):  # only this machine's share counts against the server's budget
            need = _local_share(info, kw, n_ctx, batch, fa)
        return kw, need, self._details(r, info, n_ctx)

    @staticmethod
    def _details(r, info, n_ctx: int) -> dict:
        return {"family": info.architecture, "parameter_size": _param_size(info.n_params),
                "quantization_level": info.quant, "context_length": n_ctx,
                "digest": r.stored.sha256 if r.stored is not None else None, "size": info.size}

    async def _load(self, key: str) -> Loaded:
        from .. import api

        self._loading.add(key)
        try:
            kw, need, details = await asyncio.to_thread(self._plan, key)
            budget = await asyncio.to_thread(self._budget)
            residents = [Resident(m.key, m.bytes, m.in_flight > 0, m.last_used) for m in self._models.values()]
            for victim in plan_unloads(residents, key=key, need=need, budget=budget):
                log.info("unloading %s to make room for %s", victim, key)
                await self._unload(victim)
            t0 = time.perf_counter()
            if key in self.lora_keys:
                kw["lora"] = list(self.lora)
            model = await asyncio.to_thread(lambda: api.load(key, allow_path=False, **kw))
            log.info("loaded %s in %.2fs (%d slots of %d tokens)", key, time.perf_counter() - t0,
                     model.n_parallel, model.n_ctx)
        finally:
            self._loading.discard(key)
        keep = math.inf if key in self.pinned else self.keep_alive
        entry = Loaded(key=key, model=model, bytes=need, keep_alive=keep, details=details)
        self._models[key] = entry
        self.counters["loads"] += 1
        return entry

    async def unload(self, key: str) -> bool:
        """Unload as soon as it is idle (at once if it is). False if it was not loaded."""
        entry = self._models.get(key)
        if entry is None:
            return False
        entry.keep_alive = 0.0
        self.pinned.discard(key)
        if entry.in_flight == 0:
            async with self._load_lock:
                if self._models.get(key) is entry and entry.in_flight == 0:
                    await self._unload(key)
        return True

    async def _unload(self, key: str) -> None:
        entry = self._models.pop(key, None)  # from here on no request can lease it
        if entry is None:
            return
        await asyncio.to_thread(entry.model.close)
        self.counters["unloads"] += 1
        if self.on_unload is not None:
            self.on_unload(entry)
        log.info("unloaded %s", key)

    async def _reap(self) -> None:
        """Unload idle models whose keep_alive ran out; sleeps until the next one is due."""
        while True:
            now = time.monotonic()
            due = [m.key for m in self._models.values() if m.in_flight == 0 and m.expires_at <= now]
            for key in due:
                async with self._load_lock:
                    entry = self._models.get(key)
                    if entry is not None and entry.in_flight == 0 and entry.expires_at <= time.monotonic():
                        await self._unload(key)
            nxt = min((m.expires_at for m in self._models.values() if m.in_flight == 0), default=math.inf)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=min(max(nxt - time.monotonic(), 0.01), 60.0))
            except asyncio.TimeoutError:
                pass

    # --- what is loaded ----------------------------------------------------------------------
    @property
    def loading(self) -> list[str]:
        return sorted(self._loading)

    def loaded(self) -> list[Loaded]:
        return list(self._models.values())


def _local_share(info, kw: dict, n_ctx: int, batch: int, fa: bool) -> int:
    from .. import remote
    from ..hardware import detect
    from ..runtime import LoadOptions

    eps = remote.endpoints(kw["rpc"])
    options = LoadOptions(n_ctx=n_ctx, n_threads=1, n_threads_batch=1, n_batch=batch, n_ubatch=batch, flash_attn=fa,
                          n_parallel=kw["n_parallel"])
    _, _, shares = remote.split_for_load(info, options, detect(), remote.remote_devices(eps), name=info.name,
                                         force=True)
    return shares[0].need_bytes


def _param_size(n: int) -> str:
    """Ollama's style: 7.2B, 135M, 98K."""
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"
