"""The plan's sentences: why this quant, what a bigger one would cost, what to change when
nothing fits, and the messages of the errors a plan raises. English only; every decision
is made in options.py.
"""

from __future__ import annotations

from ..errors import InsufficientMemoryError, UnknownQuantError
from ..units import format_bytes
from .memory import estimate_memory
from .options import NEARLY_AS_GOOD, QuantOption, Setting, choose, evaluate, largest_context, max_context_that_fits, \
    nearly_as_good, option, quality_key
from .quants import QUALITY_TOLERANCE

TRADE_MIN_CTX = 512  # the context at which we ask "what could this device run at all"


def _ppl(o: QuantOption) -> str:
    """The quality figure and where it comes from: "KLD 0.0313 borrowed"."""
    return f"KLD {o.kld:.4f} {o.quality}" if o.kld is not None else "quality unknown"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def override(name, quant, options, by_quant, s: Setting, force, reasons, warnings) -> QuantOption:
    """The quant the user asked for, with what it costs; raises when it does not fit (unless forced)."""
    wanted = quant.upper()
    if wanted not in by_quant:
        raise UnknownQuantError(f"{name} has no quant {quant!r}",
                                hint=f"Available: {', '.join(o.quant for o in options)}.")
    pick = by_quant[wanted]
    reasons.append(f"{pick.quant}: asked for (--quant), {format_bytes(pick.estimated_bytes)}, "
                   f"~{pick.estimated_tps:.1f} tok/s")
    if not pick.fits:
        if not force:
            best, _ = choose(options)
            alt = f"; {best.quant} fits ({format_bytes(best.estimated_bytes)})" if best else ""
            raise InsufficientMemoryError(
                f"{name}:{pick.quant} needs {format_bytes(pick.estimated_bytes)} ({pick.estimated_bytes} bytes) "
                f"at n_ctx {s.n_ctx} but the budget is {format_bytes(s.budget)}{alt}",
                hint="Use a smaller quant or context (--ctx), or pass --force to load anyway.")
        warnings.append(f"{pick.quant} needs {format_bytes(pick.estimated_bytes)}, over the "
                        f"{format_bytes(s.budget)} budget: loading anyway (--force); expect swapping or "
                        "the out-of-memory killer")
    if not pick.fast_enough:
        warnings.append(f"{pick.quant} is estimated at ~{pick.estimated_tps:.1f} tok/s, "
                        f"below {s.min_speed:g} tok/s")
    return pick


def nothing_fits(name, spec, options, s: Setting, force, reasons, warnings) -> QuantOption:
    """The smallest option when forced; else InsufficientMemoryError with the changes that would fit."""
    smallest = min(options, key=lambda o: (o.estimated_bytes, quality_key(o)))
    message = (f"{name} does not fit in the {format_bytes(s.budget)} budget on {s.hw.name}: the smallest "
               f"option, {smallest.quant}, needs {format_bytes(smallest.estimated_bytes)} "
               f"({smallest.estimated_bytes} bytes) at n_ctx {s.n_ctx}")
    if force:
        warnings.append(message + "; loading anyway (--force)")
        reasons.append(f"{smallest.quant}: nothing fits; the smallest option (--force)")
        return smallest
    tips = []
    fit_ctx = max_context_that_fits(spec, smallest.size, s.budget, upper=s.n_ctx, n_batch=s.n_batch,
                                    type_k=s.type_k, type_v=s.type_v, flash_attn=s.flash_attn)
    if fit_ctx >= 256:
        tips.append(f"{smallest.quant} fits with --ctx {fit_ctx}")
    if s.type_k != "q8_0" or s.type_v != "q8_0":
        q8 = estimate_memory(spec, weights_bytes=smallest.size, n_ctx=s.n_ctx, n_batch=min(s.n_batch, s.n_ctx),
                             n_ubatch=min(s.n_batch, s.n_ctx), type_k="q8_0", type_v="q8_0",
                             flash_attn=s.flash_attn).total
        if q8 <= s.budget:
            tips.append(f"{smallest.quant} fits at n_ctx {s.n_ctx} with --kv-type q8_0 ({format_bytes(q8)})")
    tips.append("use a smaller model, or pass --force to load anyway")
    raise InsufficientMemoryError(message, hint=_capital("; ".join(tips)) + ".")


def explain(pick, reached, options, s: Setting, reasons, warnings) -> None:
    """Why `pick` over the others: the rule that chose it, equal-quality ties, better quants' costs."""
    fitting = [o for o in options if o.fits]
    if reached:
        n_ok = sum(o.fast_enough for o in fitting)
        reasons.append(f"{pick.quant}: the best quality ({_ppl(pick)}) of the {n_ok} quant"
                       f"{'s' if n_ok != 1 else ''} that fit and reach {s.min_speed:g} tok/s "
                       f"({format_bytes(pick.estimated_bytes)}, ~{pick.estimated_tps:.1f} tok/s at n_ctx {s.n_ctx})")
    else:
        _explain_slow(pick, fitting, s, reasons)
        warnings.append(f"~{pick.estimated_tps:.1f} tok/s is below {s.min_speed:g} tok/s: replies will be slow; "
                        "a smaller model or context would be faster")
    for o in fitting:
        if o is not pick and o.tier == pick.tier and (o.fast_enough or not reached):
            why = ("a fast kernel on this CPU" if pick.fast_kernel and not o.fast_kernel
                   else "a smaller, faster file")
            reasons.append(f"{pick.quant} over {o.quant}: equal quality (KL divergences within {QUALITY_TOLERANCE}); "
                           f"{pick.quant} has {why}")
    better = [o for o in options if o.tier < pick.tier]
    for o in sorted(better, key=quality_key)[:3]:
        if not o.fits:
            reasons.append(f"{o.quant} ({_ppl(o)}) needs {format_bytes(o.estimated_bytes)}: over the budget")
        elif not o.fast_enough and reached:  # (below the target, _explain_slow has said why)
            reasons.append(f"{o.quant} ({_ppl(o)}) fits but ~{o.estimated_tps:.1f} tok/s is below "
                           f"{s.min_speed:g} tok/s")


def _explain_slow(pick, fitting, s: Setting, reasons) -> None:
    """No quant reaches the speed target: why this one, and what the faster ones would cost."""
    best = min(fitting, key=quality_key)
    head = f"{pick.quant}: no quant that fits reaches {s.min_speed:g} tok/s, so quality first: "
    if pick is best:
        reasons.append(head + f"the best quality that fits ({_ppl(pick)}, ~{pick.estimated_tps:.1f} tok/s, "
                              f"{format_bytes(pick.estimated_bytes)})")
    else:
        reasons.append(head + f"nearly as good as the best that fits ({_ppl(pick)} against {best.quant}'s "
                              f"{best.kld:.4f}: within {NEARLY_AS_GOOD}) and {pick.estimated_tps / best.estimated_tps - 1:.0%} "
                              f"faster (~{pick.estimated_tps:.1f} against ~{best.estimated_tps:.1f} tok/s)")
    near = [o for o in fitting if nearly_as_good(o, best) and o.estimated_tps > pick.estimated_tps]
    if near:
        o = max(near, key=lambda x: x.estimated_tps)
        reasons.append(f"{o.quant} is nearly as good too ({_ppl(o)}) but only {o.estimated_tps / pick.estimated_tps - 1:.0%} "
                       f"faster: not worth the step down")
    fastest = max(fitting, key=lambda o: o.estimated_tps)
    if fastest.estimated_tps > pick.estimated_tps and not nearly_as_good(fastest, best) and fastest.kld is not None \
            and pick.kld is not None:
        reasons.append(f"trade not taken: {fastest.quant} would be {fastest.estimated_tps / pick.estimated_tps - 1:.0%} "
                       f"faster (~{fastest.estimated_tps:.1f} tok/s, still below {s.min_speed:g}) but loses "
                       f"{fastest.kld - pick.kld:.4f} more nats per token ({_ppl(fastest)})")


def context_trade(spec, rows, options, pick, s: Setting) -> list[str]:
    """When the context costs quality, say so and offer the trades.

    The quant the same rules pick at a short context (512) is what the device could
    run; if it is better than the pick at the asked context, the context is the cost.
    """
    if s.n_ctx <= TRADE_MIN_CTX:
        return []
    ideal, _ = choose(evaluate(spec, rows, s.at(n_ctx=TRADE_MIN_CTX)))
    if ideal is None or ideal.tier >= pick.tier:
        return []
    best = next(o for o in options if o.quant == ideal.quant)
    why = []
    if not best.fits:
        why.append(f"needs {format_bytes(best.estimated_bytes)}, over the {format_bytes(s.budget)} budget")
    if not best.fast_enough:
        why.append(f"slows to ~{best.estimated_tps:.1f} tok/s (below {s.min_speed:g}) reading a KV cache that long")
    out = [f"n_ctx {s.n_ctx} costs quality: at this context {best.quant} ({_ppl(best)}) " + " and ".join(why)]
    out.append(f"trade: a smaller quant, {pick.quant} (picked), at n_ctx {s.n_ctx}")

    def ok(c):
        o = option(spec, best.quant, best.size, best.size_is_estimate, s.at(n_ctx=c))
        return o.fits and o.fast_enough

    fit_ctx = largest_context(ok, s.n_ctx - 1)
    if fit_ctx >= 256:
        out.append(f"trade: a smaller context, {best.quant} at n_ctx <= {fit_ctx} (--ctx {fit_ctx})")
    if s.type_k != "q8_0" or s.type_v != "q8_0":
        q8 = option(spec, best.quant, best.size, best.size_is_estimate, s.at(type_k="q8_0", type_v="q8_0"))
        verdict = ("fits and is fast enough" if q8.fits and q8.fast_enough
                   else "still does not fit" if not q8.fits else f"fits but stays below {s.min_speed:g} tok/s")
        out.append(f"trade: a quantized KV cache, {best.quant} with q8_0 K and V (--kv-type q8_0) at n_ctx "
                   f"{s.n_ctx}: {format_bytes(q8.estimated_bytes)}, ~{q8.estimated_tps:.1f} tok/s: {verdict}")
    return out
