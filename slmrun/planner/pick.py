"""The plan: which quant, context and threads to run a model with on a machine, and why.

``plan`` is the pure entry point (a model and a ``HardwareProfile`` in, a ``Plan`` out);
``pick_for_this_machine`` is the one edge that asks ``hardware.detect()``, for the quant
a pull or a load uses when none is named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ..errors import InsufficientMemoryError, InvalidArgumentError
from ..units import format_bytes
from .explain import context_trade, explain, nothing_fits, override
from .memory import MemoryEstimate, budget_bytes, effective_flash_attn, estimate_memory
from .options import QuantOption, Setting, choose, default_context, evaluate, inputs
from .parallel import choose_parallel
from .quants import kv_cache_type, regrid_hint
from .speed import fallback_bandwidth
from .split import DeviceShare, RemoteDevice, apply_split, describe_split


@dataclass
class Plan:
    model: str
    hardware: str
    quant: str
    n_threads: int
    n_ctx: int
    type_k: str
    type_v: str
    n_batch: int
    flash_attn: bool
    estimated_bytes: int
    estimated_tps: float
    budget_bytes: int
    min_speed: float
    reasons: list[str] = field(default_factory=list)
    options: list[QuantOption] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    memory: MemoryEstimate | None = None
    bandwidth_gbs: float | None = None
    n_parallel: int = 1  # requests decoded together (slots), each with n_ctx tokens
    parallel_bytes: int | None = None  # memory with all n_parallel slots
    split: list[DeviceShare] | None = None  # across RPC devices (local CPU first); None: one machine
    n_gpu_layers: int = 0  # with a split: the layers llama.cpp offloads, and their shares
    tensor_split: list[float] | None = None
    embedding_model: bool = False  # no generation: estimated_tps is 0, n_parallel is texts per batch
    spec_slope: float | None = None  # speculative.py: a draft token's cost, as a fraction of a step

    @property
    def option(self) -> QuantOption:
        return next(o for o in self.options if o.quant == self.quant)

    def load_kwargs(self) -> dict:
        """Keyword arguments for ``slmrun.load`` that apply this plan."""
        return dict(n_ctx=self.n_ctx, n_threads=self.n_threads, n_batch=self.n_batch,
                    flash_attn=self.flash_attn, type_k=self.type_k, type_v=self.type_v,
                    n_parallel=self.n_parallel)

    def to_dict(self) -> dict:
        return {
            "model": self.model, "hardware": self.hardware, "quant": self.quant,
            "estimated_bytes": self.estimated_bytes, "estimated_tps": round(self.estimated_tps, 2),
            "budget_bytes": self.budget_bytes, "reasons": list(self.reasons),
            "options": [o.to_dict() for o in self.options], "warnings": list(self.warnings),
            "n_threads": self.n_threads, "n_ctx": self.n_ctx, "type_k": self.type_k, "type_v": self.type_v,
            "n_batch": self.n_batch, "flash_attn": self.flash_attn, "min_speed": self.min_speed,
            "bandwidth_gbs": self.bandwidth_gbs, "n_parallel": self.n_parallel,
            "parallel_bytes": self.parallel_bytes,
            "memory": self.memory.to_dict() if self.memory else None,
            "split": [d.to_dict() for d in self.split] if self.split is not None else None,
            "n_gpu_layers": self.n_gpu_layers, "tensor_split": self.tensor_split,
            "embedding_model": self.embedding_model,
            "speculative": {"mode": "auto", "draft_token_cost": self.spec_slope},
        }


def plan(model, hw, *, n_ctx: int | None = None, min_speed: float = 5.0, quant: str | None = None,
         force: bool = False, reserve_bytes: int | None = None, type_k: str = "f16", type_v: str | None = None,
         flash_attn: bool | None = None, n_batch: int = 512, n_parallel: int | None = None,
         devices: Sequence[RemoteDevice] | None = None, use_local: bool = True,
         measured: Mapping[str, float] | None = None) -> Plan:
    """Choose how to run `model` (a registry entry, a GGUFInfo, or (ModelSpec, {quant: size})) on `hw`.

    Rules: the budget is available memory (cgroup-aware) minus a reserve; among the
    quants that fit and reach `min_speed` tokens/s, the best quality (KL divergence from
    full precision); if none is fast enough, the best quality that fits unless a faster
    one is nearly as good; within a quality tier a fast kernel, then the smaller file.
    `quant` overrides the choice; `force` returns a plan even when it does not fit (with a
    warning) instead of raising InsufficientMemoryError. ``measured``: {quant: mean KL
    divergence} this model's quants measured against a full-precision reference (`slmrun
    eval`, evaluate.results.measured_quality), used in place of the borrowed figures.

    ``devices`` (RPC servers' devices, planner.split.RemoteDevice) plans the model split
    across them and this machine (its CPU too unless ``use_local=False``): the budget is
    the sum, each device's share must fit its own, the speed is the split's.
    """
    name, spec, rows = inputs(model)
    type_k = type_k.lower()
    type_v = (type_v or type_k).lower()
    kv_cache_type(type_k), kv_cache_type(type_v)
    flash_attn = effective_flash_attn(flash_attn, type_v)
    if not min_speed >= 0 or min_speed == float("inf"):  # NaN fails the first test
        raise InvalidArgumentError(f"min_speed must be a finite number >= 0, got {min_speed}")
    if n_ctx is not None and n_ctx < 16:
        raise InvalidArgumentError(f"n_ctx={n_ctx} is too small", hint="Use at least 16.")
    if n_batch < 1:
        raise InvalidArgumentError(f"n_batch must be >= 1, got {n_batch}")
    ctx = int(n_ctx) if n_ctx else default_context(spec)
    threads = hw.usable_cores
    budget = budget_bytes(hw, reserve_bytes)
    setting = Setting(hw=hw, n_ctx=ctx, budget=budget, min_speed=min_speed, n_threads=threads,
                      n_batch=n_batch, type_k=type_k, type_v=type_v, flash_attn=flash_attn,
                      measured=dict(measured or {}))
    if spec.embedding_model:
        return _plan_embedding(name, spec, rows, setting, quant=quant, force=force, n_parallel=n_parallel,
                               devices=devices)
    options = evaluate(spec, rows, setting)
    splits = None
    if devices:
        asked_parallel = n_parallel is not None
        n_parallel = n_parallel or 1  # a split is for a model too big for one machine, not for throughput
        local_budget = budget if use_local else 0
        setting = setting.at(budget=local_budget + sum(d.budget for d in devices))
        options, splits = apply_split(spec, options, n_cells=ctx * n_parallel, type_k=type_k, type_v=type_v,
                                      local_budget=local_budget, devices=devices,
                                      local_gbs=hw.bandwidth_gbs or fallback_bandwidth(hw), min_speed=min_speed,
                                      use_local=use_local)
    by_quant = {o.quant: o for o in options}
    reasons: list[str] = []
    warnings: list[str] = []
    reserve = hw.memory_available - budget
    limit = f" (cgroup limit {format_bytes(hw.cgroup_limit)})" if hw.cgroup_limit else ""
    reasons.append(f"budget {format_bytes(budget)}: {format_bytes(hw.memory_available)} available{limit} "
                   f"minus a {format_bytes(reserve)} reserve")
    bandwidth = hw.bandwidth_gbs
    if bandwidth is None:
        bandwidth = fallback_bandwidth(hw)
        warnings.append(f"memory bandwidth not measured; speeds assume {bandwidth:g} GB/s "
                        "(run `slmrun hw --measure` once)")
    if spec.context_length and ctx > spec.context_length:
        warnings.append(f"n_ctx {ctx} is beyond the {spec.context_length} tokens {name} was trained on; "
                        "quality degrades past it")

    if splits is not None:
        reasons.append(f"split across {len(devices)} RPC device{'s' if len(devices) != 1 else ''}"
                       + (" and this machine" if use_local else "") + f": {format_bytes(setting.budget)} in all, "
                       + ", ".join(f"{d.name} {format_bytes(d.budget)}" for d in devices))
        if quant is None and not any(o.fits for o in options) and not force:
            smallest = min(options, key=lambda o: o.estimated_bytes)
            raise InsufficientMemoryError(
                f"{name} does not fit even split across this machine and {len(devices)} RPC device"
                f"{'s' if len(devices) != 1 else ''} ({format_bytes(setting.budget)} in all): the smallest "
                f"option, {smallest.quant}, needs {describe_split(splits[smallest.quant][0])}",
                hint="Add a server (--rpc), use a smaller model or --ctx, or pass --force to try anyway.")
    if quant is not None:
        pick = override(name, quant, options, by_quant, setting, force, reasons, warnings)
    else:
        pick, reached = choose(options)
        if pick is None:
            pick = nothing_fits(name, spec, options, setting, force, reasons, warnings)
        else:
            explain(pick, reached, options, setting, reasons, warnings)
            reasons.extend(context_trade(spec, rows, options, pick, setting))
            keep = offline_default(model) if hasattr(model, "default_quant") else None
            kept = by_quant.get(keep) if keep else None
            if kept is not None and kept is not pick and kept.fits and kept.fast_enough:
                reasons.append(f"`slmrun pull {name}` without a quant fetches {keep}, which installs without "
                               f"the hub; `slmrun pull {name}:{pick.quant.lower()}` fetches this pick")
                hint = regrid_hint(name, keep, hw.simd or ())
                if hint:
                    reasons.append(hint)
    why = ("the cgroup's CPU quota" if threads < max(1, hw.performance_cores) else "the performance cores")
    reasons.append(f"{threads} thread{'s' if threads != 1 else ''}: {why}"
                   + (f" (of {hw.logical_cores} logical)" if hw.logical_cores != threads else ""))
    split_fields = {}
    if splits is None:
        n_par, par_bytes = _slots(spec, pick, setting, n_parallel, reserve_bytes, reasons, warnings)
    else:
        n_par = n_parallel
        reasons.append(f"{n_par} parallel slot{'s' if n_par != 1 else ''}: "
                       + ("asked for (--parallel)" if asked_parallel else "one at a time across devices"))
        shares, ngl, ts = splits[pick.quant]
        split_fields = dict(split=shares, n_gpu_layers=ngl, tensor_split=ts)
        par_bytes = pick.estimated_bytes
        reasons.append(f"layers by free memory: {describe_split(shares)}")
        reasons.append(f"~{pick.estimated_tps:.1f} tok/s expected: a token passes through the devices one after "
                       "another, so the split is bounded by the slowest device and by the network (about "
                       "two round trips per server per token); servers do not report their speed, so each "
                       "is assumed as fast as this machine")
        warnings.extend(f"{s.device}'s share needs {format_bytes(s.need_bytes)}, over its "
                        f"{format_bytes(s.budget_bytes)} budget" for s in shares if not s.fits)
    from .speculative import batch_slope, describe_speculative

    slope = batch_slope(hw, spec, weights_bytes=pick.size, threads=threads)
    reasons.append(describe_speculative(slope))
    return Plan(model=name, hardware=hw.name, quant=pick.quant, n_threads=threads, n_ctx=ctx, type_k=type_k,
                type_v=type_v, n_batch=min(n_batch, ctx), flash_attn=flash_attn,
                estimated_bytes=pick.estimated_bytes, estimated_tps=pick.estimated_tps, budget_bytes=setting.budget,
                min_speed=min_speed, reasons=reasons, options=options, warnings=warnings, memory=pick.memory,
                bandwidth_gbs=bandwidth, n_parallel=n_par, parallel_bytes=par_bytes, spec_slope=slope,
                **split_fields)


def _plan_embedding(name, spec, rows, s: Setting, *, quant, force, n_parallel, devices) -> Plan:
    from .embedding import plan_embedding

    hw = s.hw
    reserve = hw.memory_available - s.budget
    limit = f" (cgroup limit {format_bytes(hw.cgroup_limit)})" if hw.cgroup_limit else ""
    reasons = [f"budget {format_bytes(s.budget)}: {format_bytes(hw.memory_available)} available{limit} "
               f"minus a {format_bytes(reserve)} reserve"]
    warnings: list[str] = []
    if spec.context_length and s.n_ctx > spec.context_length:
        warnings.append(f"n_ctx {s.n_ctx} is beyond the {spec.context_length} tokens {name} takes; longer texts "
                        "are cut to it")
    pick, options, texts, total = plan_embedding(name, spec, rows, s, quant=quant, force=force, n_parallel=n_parallel,
                                                 devices=devices, reasons=reasons, warnings=warnings)
    why = "the cgroup's CPU quota" if s.n_threads < max(1, hw.performance_cores) else "the performance cores"
    reasons.append(f"{s.n_threads} thread{'s' if s.n_threads != 1 else ''}: {why}")
    return Plan(model=name, hardware=hw.name, quant=pick.quant, n_threads=s.n_threads, n_ctx=s.n_ctx,
                type_k=s.type_k, type_v=s.type_v, n_batch=min(s.n_batch, s.n_ctx * texts), flash_attn=s.flash_attn,
                estimated_bytes=pick.estimated_bytes, estimated_tps=0.0, budget_bytes=s.budget, min_speed=s.min_speed,
                reasons=reasons, options=options, warnings=warnings, memory=pick.memory, bandwidth_gbs=hw.bandwidth_gbs,
                n_parallel=texts, parallel_bytes=total, embedding_model=True)


def _slots(spec, pick, s, n_parallel, reserve_bytes, reasons, warnings) -> tuple[int, int]:
    """The quant is chosen for one request; the slots for several at once come after it."""
    if n_parallel is None:
        slots = choose_parallel(spec, weights_bytes=pick.size, n_ctx=s.n_ctx, hw=s.hw, n_batch=s.n_batch,
                                type_k=s.type_k, type_v=s.type_v, flash_attn=s.flash_attn,
                                reserve_bytes=reserve_bytes)
        reasons.append(slots.reason)
        return slots.n_parallel, slots.estimated_bytes
    if isinstance(n_parallel, bool) or not isinstance(n_parallel, int) or n_parallel < 1:
        raise InvalidArgumentError(f"n_parallel must be an integer >= 1, got {n_parallel!r}")
    b = min(s.n_batch, s.n_ctx)
    need = estimate_memory(spec, weights_bytes=pick.size, n_ctx=s.n_ctx, n_batch=b, n_ubatch=b, type_k=s.type_k,
                           type_v=s.type_v, flash_attn=s.flash_attn, n_parallel=n_parallel).total
    reasons.append(f"{n_parallel} parallel slot{'s' if n_parallel != 1 else ''}: asked for (--parallel), "
                   f"{format_bytes(need)} in all")
    if need > s.budget and pick.fits:
        warnings.append(f"{n_parallel} slots need {format_bytes(need)}, over the {format_bytes(s.budget)} budget")
    return n_parallel, need


def offline_default(entry) -> str | None:
    """The entry's default quant when its file installs without the hub (the default model's
    PyPI wheel), else None."""
    try:
        f = entry.file(entry.default_quant)
    except Exception:
        return None
    return f.quant if getattr(f, "source", "hub") != "hub" else None


def pick_for_this_machine(entry, measured: Mapping[str, float] | None = None) -> str:
    """The quant `slmrun pull NAME` / `slmrun.load(NAME)` use when none is named. Never raises.

    The plan's pick on hardware.detect() with the cached bandwidth only (it never
    measures here, so it stays fast), with one exception: a default file that installs
    without the hub (the offline default model's PyPI wheel) is kept while it fits at a
    usable speed, because working without the hub is that file's whole point; the plan
    says so, and `NAME:QUANT` fetches the plan's pick. When nothing fits, the smallest
    option; on any error, the entry's default quant.
    """
    try:
        from .. import hardware
        hw = hardware.detect()
        try:
            p = plan(entry, hw, measured=measured)
        except InsufficientMemoryError:
            return plan(entry, hw, force=True, measured=measured).quant
        keep = offline_default(entry)
        if keep is not None and keep != p.quant:
            choice = next((o for o in p.options if o.quant == keep), None)
            if choice is not None and choice.fits and choice.fast_enough:
                return keep
        return p.quant
    except Exception:  # planning must never stop a pull or a load
        return entry.default_quant
