"""The plan of an embedding model (``ModelSpec.embedding_model``): memory and fidelity, no speed.

An embedding model reads each text once, in one pass, and generates nothing: there is no
token rate to estimate and no perplexity to lose. What a quant costs is the embeddings'
fidelity: 16-bit weights reproduce F32's vectors (all-MiniLM-L6-v2 F16: cosine >= 0.99999
with the F32 transformers reference on 30 texts, tests/data/minilm-l6-reference.json);
Q8_0 moves them slightly (>= 0.9977 there); lower quants more. So the rule: of the quants
that fit, the most faithful tier, then the smaller file (F16 over F32).
"""

from __future__ import annotations

from ..errors import InsufficientMemoryError, InvalidArgumentError, UnknownQuantError
from ..units import format_bytes
from .memory import estimate_memory
from .options import QuantOption, Setting
from .quants import has_fast_kernel, quality_rank

# Fidelity tiers: 0 as F32, 1 slightly off, then the generative ranking for the rest.
EMBEDDING_TIERS = {"F32": 0, "F16": 0, "BF16": 0, "Q8_0": 1}
FIDELITY = {0: "as F32", 1: "near F32"}


def embedding_tier(quant: str) -> int:
    quant = quant.upper()
    return EMBEDDING_TIERS.get(quant, 2 + quality_rank(quant))


def fidelity(quant: str) -> str:
    """A word for the quant's fidelity, for the plan's table."""
    return FIDELITY.get(embedding_tier(quant), "lossy")


def options(spec, rows, s: Setting, n_parallel: int) -> list[QuantOption]:
    b = min(s.n_batch, s.n_ctx * n_parallel)
    out = []
    for quant, size, estimated in rows:
        mem = estimate_memory(spec, weights_bytes=size, n_ctx=s.n_ctx, n_batch=b, n_ubatch=b, flash_attn=s.flash_attn,
                              n_parallel=n_parallel)
        out.append(QuantOption(quant=quant, size=size, size_is_estimate=estimated, estimated_bytes=mem.total,
                               estimated_tps=0.0, ppl_loss=None, fits=mem.total <= s.budget,
                               fast_kernel=has_fast_kernel(quant, tuple(s.hw.simd or ())),
                               fast_enough=True, memory=mem))
    out.sort(key=lambda o: (o.size, o.quant))
    return out


def plan_embedding(name, spec, rows, s: Setting, *, quant, force, n_parallel, devices, reasons, warnings):
    """(pick, options, n_parallel, bytes with all of them); adds the reasons."""
    if devices:
        raise InvalidArgumentError(f"{name} is an embedding model: it is not split across RPC servers",
                                   hint="Plan it without --rpc; it fits any machine that runs slmrun.")
    if n_parallel is not None and (isinstance(n_parallel, bool) or not isinstance(n_parallel, int) or n_parallel < 1):
        raise InvalidArgumentError(f"n_parallel must be an integer >= 1, got {n_parallel!r}")
    texts = n_parallel or max(1, s.n_batch // max(1, s.n_ctx))
    opts = options(spec, rows, s, texts)
    by_quant = {o.quant: o for o in opts}
    if quant is not None:
        if quant.upper() not in by_quant:
            raise UnknownQuantError(f"{name} has no quant {quant!r}",
                                    hint=f"Available: {', '.join(o.quant for o in opts)}.")
        pick = by_quant[quant.upper()]
        reasons.append(f"{pick.quant}: asked for (--quant), {format_bytes(pick.estimated_bytes)}")
    else:
        fitting = [o for o in opts if o.fits]
        pick = min(fitting, key=lambda o: (embedding_tier(o.quant), o.size), default=None)
        if pick is None:
            pick = min(opts, key=lambda o: o.estimated_bytes)
            message = (f"{name} does not fit in the {format_bytes(s.budget)} budget on {s.hw.name}: the smallest "
                       f"option, {pick.quant}, needs {format_bytes(pick.estimated_bytes)}")
            if not force:
                raise InsufficientMemoryError(message, hint="Free some memory, or pass --force to load anyway.")
            warnings.append(message + "; loading anyway (--force)")
        else:
            reasons.append(f"{pick.quant}: the only quant here ({fidelity(pick.quant)})" if len(opts) == 1 else
                           f"{pick.quant}: the most faithful embeddings ({fidelity(pick.quant)}) of the "
                           f"{len(fitting)} quant{'s' if len(fitting) != 1 else ''} that fit, in the smallest file "
                           f"of those ({format_bytes(pick.size)})")
    for o in sorted(opts, key=lambda o: (embedding_tier(o.quant), o.size)):
        if o is pick:
            continue
        if embedding_tier(o.quant) > embedding_tier(pick.quant):
            reasons.append(f"{pick.quant} over {o.quant}: {o.quant}'s weights move the embeddings "
                           + ("slightly" if embedding_tier(o.quant) == 1 else "noticeably"))
        elif not o.fits:
            reasons.append(f"{o.quant} ({fidelity(o.quant)}) needs {format_bytes(o.estimated_bytes)}: over the budget")
        elif embedding_tier(o.quant) == embedding_tier(pick.quant) and o.size > pick.size:
            reasons.append(f"{pick.quant} over {o.quant}: the same embeddings in a smaller file")
    if not pick.fits and quant is not None:
        if not force:
            raise InsufficientMemoryError(f"{name}:{pick.quant} needs {format_bytes(pick.estimated_bytes)} but the "
                                          f"budget is {format_bytes(s.budget)}",
                                          hint="Use a smaller quant, or pass --force to load anyway.")
        warnings.append(f"{pick.quant} needs {format_bytes(pick.estimated_bytes)}, over the "
                        f"{format_bytes(s.budget)} budget: loading anyway (--force)")
    batch = min(s.n_batch, s.n_ctx * texts)
    reasons.append(f"no KV cache: an embedding model reads each text once; past the weights, memory is a batch's "
                   f"work ({batch} tokens: up to {texts} text{'s' if texts != 1 else ''} of up to {s.n_ctx} tokens), "
                   f"mostly llama.cpp's output buffer of {spec.vocab_size} floats per token")
    return pick, opts, texts, pick.estimated_bytes
