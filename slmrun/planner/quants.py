"""Facts about quantization types: quality (KL divergence, perplexity cost), size (bits per weight), which
CPU kernels are fast for them, and the KV cache types llama.cpp accepts.

Data only, and the small lookups over it; imports nothing from slmrun but the errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..errors import InvalidArgumentError


@dataclass(frozen=True)
class QuantFact:
    bpw: float  # bits per weight, whole file (measured on Llama-3.1-8B)
    ppl_loss: float  # perplexity increase vs F16-ish reference (Llama-3-8B)
    tensor_type: str  # the ggml type holding most of the weights (what the kernel sees)
    kld: float  # mean KL divergence from F16 per token, nats (Llama-3-8B): the planner's quality figure


# From llama.cpp `tools/quantize`'s table (tests/data/reference.md, "Quantization types"):
# +ppl on Llama-3-8B and bits per weight on Llama-3.1-8B ("~" values are the table's
# approximations). BF16 is not in the table: it keeps F16's figure (same 16 bits, wider
# range). F32 is the reference itself.
# KL divergence: llama.cpp `tools/perplexity/README.md`, "LLaMA 3 8b Scoreboard", the rows
# without an importance matrix (tests/data/quality/llama3_8b_kld.md): the mean KL divergence
# of each quant from the F16 model per token, the most sensitive measure of what a quant
# loses. F16 is that table's reference (0); BF16 is its "BF16 vs. FP16" comparison; F32 is 0.
# These are borrowed figures: `slmrun eval` measures a model's own (evaluate/results.py),
# and the planner uses them in their place (docs/CALIBRATION.md).
QUANT_FACTS: dict[str, QuantFact] = {
    "Q2_K": QuantFact(3.16, 3.5199, "Q2_K", 0.445132),
    "Q3_K_S": QuantFact(3.64, 1.6321, "Q3_K", 0.228217),
    "Q3_K_M": QuantFact(3.9, 0.6569, "Q3_K", 0.101913),
    "Q3_K_L": QuantFact(4.30, 0.5562, "Q3_K", 0.087176),
    "Q4_0": QuantFact(4.5, 0.4685, "Q4_0", 0.071940),
    "Q4_1": QuantFact(5.0, 0.4511, "Q4_1", 0.071683),
    "Q4_K_S": QuantFact(4.67, 0.2689, "Q4_K", 0.043136),
    "Q4_K_M": QuantFact(4.89, 0.1754, "Q4_K", 0.031273),
    "Q5_0": QuantFact(5.5, 0.1316, "Q5_0", 0.022239),
    "Q5_1": QuantFact(6.0, 0.1062, "Q5_1", 0.018045),
    "Q5_K_S": QuantFact(5.57, 0.1049, "Q5_K", 0.016595),
    "Q5_K_M": QuantFact(5.70, 0.0569, "Q5_K", 0.010762),
    "Q6_K": QuantFact(6.56, 0.0217, "Q6_K", 0.005452),
    "Q8_0": QuantFact(8.50, 0.0026, "Q8_0", 0.001355),
    "F16": QuantFact(16.0, 0.0020, "F16", 0.0),
    "BF16": QuantFact(16.0, 0.0020, "BF16", 0.00002515),
    "F32": QuantFact(32.0, 0.0, "F32", 0.0),
}

# Best quality first: by KL divergence, ties (F32 and F16) by more bits.
QUALITY_ORDER: tuple[str, ...] = tuple(sorted(QUANT_FACTS, key=lambda q: (QUANT_FACTS[q].kld,
                                                                          -QUANT_FACTS[q].bpw, q)))


def quality_rank(quant: str) -> int:
    """Position in QUALITY_ORDER (0 = best); quants we know nothing about rank last."""
    quant = quant.upper()
    return QUALITY_ORDER.index(quant) if quant in QUANT_FACTS else len(QUALITY_ORDER)


# KL divergences closer than this (nats per token) are noise: Q8_0 against F16 is 0.0014,
# Q5_K_S against Q5_1 0.0014, Q4_1 against Q4_0 0.0003 (rounding in llama.cpp's own
# measurement alone moves a figure ~0.0005). Such quants form one tier, and within a tier
# the planner prefers a fast kernel, then the smaller (faster) file.
QUALITY_TOLERANCE = 0.0015


def tiers(losses: dict[str, float | None]) -> dict[str, int]:
    """quant -> tier (0 = best): single-linkage groups of losses within QUALITY_TOLERANCE;
    a quant with no figure is in the last tier."""
    known = sorted((v, q) for q, v in losses.items() if v is not None)
    out, tier, last = {}, -1, None
    for value, q in known:
        if last is None or value - last > QUALITY_TOLERANCE:
            tier += 1
        out[q] = tier
        last = value
    for q, v in losses.items():
        if v is None:
            out[q] = tier + 1
    return out


QUALITY_TIER: dict[str, int] = tiers({q: f.kld for q, f in QUANT_FACTS.items()})
UNKNOWN_TIER = len(set(QUALITY_TIER.values()))  # quants we know nothing about rank last


def quality_tier(quant: str) -> int:
    """The borrowed figures' tier (plans with measured figures tier their own options)."""
    return QUALITY_TIER.get(quant.upper(), UNKNOWN_TIER)


# Tensor types whose matrix multiplications have a faster CPU path than the generic
# vec_dot, per CPU feature, in the llama.cpp vendored by llama-cpp-python 0.3.36:
#  - ggml/src/ggml-cpu/repack.cpp, ggml_repack_get_optimal_repack_type(): weights are
#    repacked at load into interleaved layouts: Q4_0 (8x8) with AVX2 or SVE+i8mm; Q4_0
#    (4x8 with i8mm, 4x4 with dotprod) on NEON; Q4_K (8x8) with AVX2, on NEON with i8mm
#    (8x8) or dotprod (8x4); Q5_K, Q6_K and Q8_0 on NEON with i8mm or dotprod; Q2_K with
#    AVX-512; IQ4_NL with AVX2 or NEON+dotprod. A NEON core without dotprod (Pi 4's A72)
#    gets none of them.
#  - ggml/src/ggml-cpu/amx/common.h, qtype_has_amx_kernels(): with AMX-INT8, Q4_0, Q4_1,
#    Q8_0, Q4_K, Q5_K, Q6_K and IQ4_XS.
#  - ggml/src/ggml-cpu/llamafile/sgemm.cpp, llamafile_sgemm(): llamafile's tinyBLAS multiplies
#    a batch as a matrix: F32, F16 and, with AVX2, Q8_0, Q4_0, Q5_0 and IQ4_NL (x86; on ARM
#    its Q0 path needs dotprod, already covered above). benchmarks/KERNELS.md measures it on
#    an AVX2 machine: a 64-token batch runs 3.9x (Q8_0) and 5.1x (F16) the tokens/s of one token,
#    against 2.1x for Q4_1 and 1.8x for Q5_1, which have neither path.
# Names are those of slmrun.hardware (cpuinfo) and of llama_print_system_info() (lower-cased).
FAST_KERNELS: dict[str, frozenset[str]] = {
    "avx2": frozenset({"Q4_0", "Q4_K", "IQ4_NL", "Q8_0", "Q5_0", "F16", "F32"}),
    "avx512f": frozenset({"Q2_K"}),
    "avx512": frozenset({"Q2_K"}),
    "dotprod": frozenset({"Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "IQ4_NL"}),
    "i8mm": frozenset({"Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0"}),
    "matmul_int8": frozenset({"Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0"}),
    "amx_int8": frozenset({"Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"}),
}


def has_fast_kernel(quant: str, simd: Iterable[str]) -> bool:
    """Whether the bulk of a `quant` file's weights get a batched (repacked, AMX or tinyBLAS) kernel on a CPU
    with `simd`."""
    fact = QUANT_FACTS.get(quant.upper())
    ttype = fact.tensor_type if fact else quant.upper()
    return any(ttype in FAST_KERNELS.get(f.lower(), ()) for f in simd)


def regrid_hint(name: str, quant: str, simd: Iterable[str]) -> str | None:
    """A line for `slmrun plan` when ``quant`` (a file the user gets without the hub) has no batched
    kernel on an x86 CPU with AVX2 while Q8_0 has: a Q8_0 made from it evaluates prompts about twice
    as fast at a KL divergence of ~0.005 from it (benchmarks/KERNELS.md, QUALITY.md: measured for
    Q4_1 on an AVX2 machine). Not on ARM: there a bigger file also costs bandwidth on every token."""
    features = {f.lower() for f in simd}
    q = quant.upper()
    if "avx2" not in features or q in ("Q8_0", "F16", "F32", "BF16") or has_fast_kernel(q, features) \
            or not has_fast_kernel("Q8_0", features):
        return None
    return (f"{q} has no batched kernel on this CPU (prompts run at about half a Q8_0's speed, "
            f"benchmarks/KERNELS.md); `slmrun quantize {name}:{q.lower()} --to Q8_0 --allow-requantize` "
            f"re-grids it in seconds, ~1.5x the size, at a KL divergence of ~0.005 from it")


@dataclass(frozen=True)
class KVCacheType:
    ggml_type: int  # enum ggml_type (ggml.h): what llama_context_params.type_k / type_v take
    bytes_per_element: float  # a ggml block's bytes over its elements (q8_0: 34 B per 32)
    quantized: bool  # only flash attention's layout holds a quantized V cache


# The KV cache types llama.cpp's own tools accept (common/arg.cpp, kv_cache_types), with
# the ggml block sizes of ggml-common.h. The runtime passes the ids, the planner the sizes.
KV_CACHE_TYPES: dict[str, KVCacheType] = {
    "f32": KVCacheType(0, 4.0, False),
    "f16": KVCacheType(1, 2.0, False),
    "bf16": KVCacheType(30, 2.0, False),
    "q8_0": KVCacheType(8, 34 / 32, True),
    "q4_0": KVCacheType(2, 18 / 32, True),
    "q4_1": KVCacheType(3, 20 / 32, True),
    "iq4_nl": KVCacheType(20, 18 / 32, True),
    "q5_0": KVCacheType(6, 22 / 32, True),
    "q5_1": KVCacheType(7, 24 / 32, True),
}
KV_CACHE_TYPE_IDS: dict[str, int] = {name: t.ggml_type for name, t in KV_CACHE_TYPES.items()}


def kv_cache_type(name: str) -> KVCacheType:
    """The KV cache type called `name` (any case); InvalidArgumentError naming the others."""
    try:
        return KV_CACHE_TYPES[name.lower()]
    except (KeyError, AttributeError):
        raise InvalidArgumentError(f"unknown KV cache type {name!r}",
                                   hint=f"Use one of {', '.join(KV_CACHE_TYPES)}.") from None
