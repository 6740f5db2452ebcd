"""Every quant of a model at one setting (memory, speed, quality, fit) and the rules that
choose among them: within the budget and fast enough, the best quality tier; then a fast
kernel; then speed. With no quant fast enough, the best quality that fits, unless a faster
one is nearly as good (docs/CALIBRATION.md, "The pick").

Quality is the mean KL divergence from full precision per token: measured for this model
(`slmrun eval`, passed in as ``Setting.measured``) where it was, else llama.cpp's figure for
Llama-3-8B, scaled by how much more this model's measured quants lose when some were.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from statistics import median
from typing import Mapping

from ..errors import InvalidArgumentError
from .memory import MemoryEstimate, estimate_memory
from .quants import QUANT_FACTS, has_fast_kernel, tiers
from .spec import LocalModel, ModelSpec, spec_from_entry, spec_from_gguf
from .speed import estimate_speed


def default_context(spec: ModelSpec) -> int:
    """The context slmrun loads with when none is asked: the model's, capped by SLMRUN_MAX_CTX."""
    from .. import config
    return min(spec.context_length or 2048, config.max_auto_ctx())


@dataclass(frozen=True)
class QuantOption:
    quant: str
    size: int  # bytes of the file (the registry's figure, or bpw x parameters)
    size_is_estimate: bool
    estimated_bytes: int  # memory at the plan's context
    estimated_tps: float
    ppl_loss: float | None
    fits: bool
    fast_kernel: bool
    fast_enough: bool
    memory: MemoryEstimate
    kld: float | None = None  # mean KL divergence from full precision, nats per token
    quality: str | None = None  # where kld comes from: "measured", "borrowed", "scaled" (borrowed x this model's)
    tier: int = 0  # quality tier among this plan's options (0 = best)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["estimated_tps"] = round(self.estimated_tps, 2)
        return d


@dataclass(frozen=True)
class Setting:
    """Everything but the file that decides an option's memory and speed."""

    hw: object
    n_ctx: int
    budget: int
    min_speed: float
    n_threads: int
    n_batch: int
    type_k: str
    type_v: str
    flash_attn: bool
    measured: Mapping[str, float] = field(default_factory=dict)  # quant -> KL divergence measured here

    def at(self, **changes) -> "Setting":
        return replace(self, **changes)


def inputs(model) -> tuple[str, ModelSpec, list[tuple[str, int, bool]]]:
    """(name, spec, [(quant, size, size_is_estimate)]) from an entry, a GGUFInfo or (spec, files)."""
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], ModelSpec):
        spec, files = model
        if isinstance(files, Mapping):
            rows = [(str(q).upper(), size, False) for q, size in files.items()]
        else:
            rows = [(f.quant, f.size, f.size_is_estimate) for f in files]
        name = spec.architecture
    elif isinstance(model, LocalModel):  # an imported model or a path: its own files
        spec, name = model.spec, model.name
        rows = [(str(q).upper(), size, False) for q, size in model.files.items()]
    elif hasattr(model, "files") and hasattr(model, "default_quant"):  # registry.ModelEntry
        spec, name = spec_from_entry(model), model.name
        rows = [(f.quant, f.size, f.size_is_estimate) for f in model.files]
    elif hasattr(model, "weights_bytes") and hasattr(model, "quant"):  # gguf_info.GGUFInfo
        spec, name = spec_from_gguf(model), model.name
        rows = [(model.quant.upper(), model.size, False)]
    else:
        raise InvalidArgumentError(f"cannot plan for {type(model).__name__}",
                                   hint="Pass a registry entry, a GGUFInfo, a LocalModel, or (ModelSpec, {quant: size}).")
    out = []
    for quant, size, estimated in rows:
        if size is None:  # size unknown: bits per weight x parameters
            fact = QUANT_FACTS.get(quant)
            if fact is None:
                continue
            size, estimated = int(fact.bpw * spec.n_params / 8), True
        out.append((quant, int(size), bool(estimated)))
    if not out:
        raise InvalidArgumentError(f"{name}: no file with a known size to plan for")
    return name, spec, out


# With no quant at the speed target: a faster quant is "nearly as good" as the best that fits
# when it loses at most this much more KL divergence (nats per token: Llama-3-8B's whole
# step from Q8_0 to Q5_K_M); a speed within a factor WORTH_IT of another is "as fast".
NEARLY_AS_GOOD = 0.01
WORTH_IT = 1.10


def quality_figures(quants, measured: Mapping[str, float] | None = None) -> dict[str, tuple[float | None, str | None]]:
    """quant -> (KL divergence, source). Measured where given; else the borrowed figure, scaled
    by the median ratio measured / borrowed of this model's measured quants (small models lose
    more to the same quant than Llama-3-8B does), or as published when nothing was measured."""
    measured = {str(q).upper(): float(v) for q, v in (measured or {}).items()}
    ratios = [v / QUANT_FACTS[q].kld for q, v in measured.items() if q in QUANT_FACTS and QUANT_FACTS[q].kld >= 1e-3]
    scale = median(ratios) if ratios else None
    out = {}
    for q in quants:
        if q in measured:
            out[q] = (measured[q], "measured")
        elif q in QUANT_FACTS:
            out[q] = (QUANT_FACTS[q].kld * scale, "scaled") if scale else (QUANT_FACTS[q].kld, "borrowed")
        else:
            out[q] = (None, None)
    return out


def option(spec: ModelSpec, quant: str, size: int, size_is_estimate: bool, s: Setting,
           quality: tuple[float | None, str | None] | None = None) -> QuantOption:
    batch = min(s.n_batch, s.n_ctx)
    mem = estimate_memory(spec, weights_bytes=size, n_ctx=s.n_ctx, n_batch=batch, n_ubatch=batch,
                          type_k=s.type_k, type_v=s.type_v, flash_attn=s.flash_attn)
    # Speed in the middle of a conversation that fills the context.
    tps = estimate_speed(spec, weights_bytes=size, hw=s.hw, n_threads=s.n_threads, n_past=s.n_ctx // 2,
                         type_k=s.type_k, type_v=s.type_v)
    fact = QUANT_FACTS.get(quant)
    kld, source = quality if quality is not None else quality_figures([quant], s.measured)[quant]
    return QuantOption(quant=quant, size=size, size_is_estimate=size_is_estimate, estimated_bytes=mem.total,
                       estimated_tps=tps, ppl_loss=fact.ppl_loss if fact else None, fits=mem.total <= s.budget,
                       fast_kernel=has_fast_kernel(quant, tuple(s.hw.simd or ())),
                       fast_enough=tps >= s.min_speed, memory=mem, kld=kld, quality=source)


def evaluate(spec: ModelSpec, rows, s: Setting) -> list[QuantOption]:
    figures = quality_figures([quant for quant, _, _ in rows], s.measured)
    options = [option(spec, quant, size, estimated, s, figures[quant]) for quant, size, estimated in rows]
    tier = tiers({o.quant: o.kld for o in options})
    options = [replace(o, tier=tier[o.quant]) for o in options]
    options.sort(key=lambda o: (o.size, o.tier, o.quant))
    return options


def quality_key(o: QuantOption):
    """Best first: quality tier, then a fast kernel, then speed, then the exact KL divergence."""
    return (o.tier, not o.fast_kernel, -o.estimated_tps, o.kld if o.kld is not None else math.inf, o.quant)


def nearly_as_good(o: QuantOption, best: QuantOption) -> bool:
    return o.kld is not None and best.kld is not None and o.kld - best.kld <= NEARLY_AS_GOOD


def choose(options: list[QuantOption]) -> tuple[QuantOption | None, bool]:
    """(pick, reached_speed) by the rules; (None, False) when nothing fits.

    Some quant that fits reaches the speed target: the best quality of those. None does:
    quality first. Of the quants nearly as good as the best that fits (NEARLY_AS_GOOD), the
    best quality among those within WORTH_IT of the fastest of them: so a faster quant is
    taken only when it is nearly as good and clearly faster, and a large quality loss is
    never traded for speed that stays below the target anyway."""
    fitting = [o for o in options if o.fits]
    if not fitting:
        return None, False
    fast = [o for o in fitting if o.fast_enough]
    if fast:
        return min(fast, key=quality_key), True
    best = min(fitting, key=quality_key)
    near = [o for o in fitting if nearly_as_good(o, best)]
    top = max(o.estimated_tps for o in near)
    return min((o for o in near if o.estimated_tps * WORTH_IT >= top), key=quality_key), False


def largest_context(ok, upper: int) -> int:
    """The largest multiple of 256 up to `upper` for which ok(n_ctx) holds (ok is monotone); 0 if none."""
    lo, hi = 0, max(0, upper) // 256
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(256 * mid):
            lo = mid
        else:
            hi = mid - 1
    return 256 * lo


def max_context_that_fits(spec: ModelSpec, size: int, budget: int, *, upper: int, n_batch: int = 512,
                          type_k: str = "f16", type_v: str | None = None, flash_attn: bool = True) -> int:
    """The largest context (a multiple of 256, at most `upper`) at which a file fits; 0 if none."""
    def fits(c):
        b = min(n_batch, c)
        return estimate_memory(spec, weights_bytes=size, n_ctx=c, n_batch=b, n_ubatch=b, type_k=type_k,
                               type_v=type_v or type_k, flash_attn=flash_attn).total <= budget
    return largest_context(fits, upper)
