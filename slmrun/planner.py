"""Which quant, context and threads to use on a machine: memory and speed estimates, and the pick.

Everything here is a pure function over plain data (a model's shape, file sizes, a
``HardwareProfile``), so it is tested from tables of devices and models. Nothing here
loads a model or touches the disk; ``pick_for_this_machine`` is the one edge that asks
``hardware.detect()``.

Memory (``estimate_memory``) is what the process's resident set grows by when a
model is loaded, a prompt of a full micro-batch is evaluated and replies are
generated, with llama.cpp's defaults as slmrun sets them (mmap on, flash attention on):

    weights   the GGUF file size: every weight is read for every token, so every
              mmap'd page ends up resident. (Where llama.cpp repacks weights at load --
              Q4_0/Q4_K on AVX2 or ARM dotprod -- the mapped pages it copied from also
              show in RSS, but they are clean page cache the kernel drops under
              pressure: the need is one copy.)
    kv_cache  n_cells x n_layer x (n_embd_k_gqa x bytes(type_k) + n_embd_v_gqa x bytes(type_v)),
              n_cells = n_ctx rounded up to 256: exactly llama.cpp's "KV buffer size".
    compute   the activations a micro-batch really touches: n_ubatch x (3 n_ff + 5 n_embd)
              x 4 bytes (FFN gate, up and product; residual, norm, Q, attention output,
              projection), plus the attention mask at a full context, n_ubatch x n_ctx x 2
              (f16); without flash attention an f32 mask and the KQ scores,
              n_head x n_ubatch x n_ctx x 4, instead.
    overhead  tokenizer tables and per-token sampling buffers (n_vocab x 310 B), KV-cell
              bookkeeping (200 B a cell) and a fixed 3.15 MiB (OpenMP threads, graph
              metadata, llama.cpp's code pages as they are first touched).

Why not llama.cpp's (or Ollama's ``GraphSize``) compute-buffer size: that is the
*reserved* worst case (logits for every token of a batch, scores over the whole
context), e.g. 98 MiB for SmolLM2-135M at n_ctx 512, but on a CPU that buffer is plain
virtual memory and only the pages a real batch writes become resident: 13.5 MiB for a
500-token prompt, 2 MiB for a short one. Ollama's formulas are right for a GPU, where a
reservation is an allocation; under Linux only touched pages count.

Calibrated on this project's 2-vCPU x86_64 machine (llama-cpp-python 0.3.36) by the RSS
growth of a fresh process; tests/test_memory_estimate.py re-measures it every run.
SmolLM2-135M Q4_1 grew 138.0 / 173.9 / 309.4 MiB at n_ctx 512 / 2048 / 8192 after a
496-512-token prompt (estimates 138.2 / 173.7 / 315.9: +0.2%, -0.1%, +2.1%, the last
being the full-context mask the test's short conversation never reaches); random-weight
test models (llama and phi2, n_embd 256, 4 layers) 18-28 MiB, within 2%. Per prompt token a
synthetic model with n_embd 512 and n_ff 2048 grew 32.5 KB (3 n_ff + 5 n_embd predicts
34.8 KB), SmolLM2 28.3 KB (30.0 KB). Synthetic vocabularies of 20k/60k short tokens cost
90-120 B a token; SmolLM2's BPE vocabulary and merges ~300 B a token: we use 310.

Speed (``estimate_speed``): generating a token reads every weight once (but one row of
an untied input-embedding table) plus the KV cache written so far, so
tokens/s = 1 / (bytes per token / rate + 0.5 ms of sampling and Python per token). The
rate comes from ``HardwareProfile.bandwidth_gbs``: a named device's figure is already
llama.cpp's effective rate (hardware.PROFILES); this machine's is a one-core streaming
read, of which llama.cpp reaches GEN_EFFICIENCY with enough threads and ~0.33 per
thread below that (``generation_rate``). Checked against this machine: 1 thread, 54
estimated vs 55-57 tok/s measured on SmolLM2-135M Q4_1; 2 threads, 108 vs ~100. Plans
quote the speed in the middle of a conversation that fills the context (n_past = n_ctx/2).

Quality: the perplexity increase each quant type costs (llama.cpp's quantize table,
Llama-3-8B; ../shared/reference.md, "Quantization types"), not the file size.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable, Mapping

from .errors import InsufficientMemoryError, InvalidArgumentError, UnknownQuantError
from .shape import ModelShape, shape_of

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# ---------------------------------------------------------------------------------------
# Quant facts


@dataclass(frozen=True)
class QuantFact:
    bpw: float  # bits per weight, whole file (measured on Llama-3.1-8B)
    ppl_loss: float  # perplexity increase vs F16-ish reference (Llama-3-8B)
    tensor_type: str  # the ggml type holding most of the weights (what the kernel sees)


# From llama.cpp `tools/quantize`'s table as copied in ../shared/reference.md ("Quantization
# types"): +ppl on Llama-3-8B and bits per weight on Llama-3.1-8B ("~" values are the
# table's approximations). BF16 is not in the table: it keeps F16's figure (same 16 bits,
# wider range). F32 is the reference itself.
QUANT_FACTS: dict[str, QuantFact] = {
    "Q2_K": QuantFact(3.16, 3.5199, "Q2_K"),
    "Q3_K_S": QuantFact(3.64, 1.6321, "Q3_K"),
    "Q3_K_M": QuantFact(3.9, 0.6569, "Q3_K"),
    "Q3_K_L": QuantFact(4.30, 0.5562, "Q3_K"),
    "Q4_0": QuantFact(4.5, 0.4685, "Q4_0"),
    "Q4_1": QuantFact(5.0, 0.4511, "Q4_1"),
    "Q4_K_S": QuantFact(4.67, 0.2689, "Q4_K"),
    "Q4_K_M": QuantFact(4.89, 0.1754, "Q4_K"),
    "Q5_0": QuantFact(5.5, 0.1316, "Q5_0"),
    "Q5_1": QuantFact(6.0, 0.1062, "Q5_1"),
    "Q5_K_S": QuantFact(5.57, 0.1049, "Q5_K"),
    "Q5_K_M": QuantFact(5.70, 0.0569, "Q5_K"),
    "Q6_K": QuantFact(6.56, 0.0217, "Q6_K"),
    "Q8_0": QuantFact(8.50, 0.0026, "Q8_0"),
    "F16": QuantFact(16.0, 0.0020, "F16"),
    "BF16": QuantFact(16.0, 0.0020, "BF16"),
    "F32": QuantFact(32.0, 0.0, "F32"),
}

# Quality differences below this many perplexity points are noise (Q8_0 vs F16: 0.0006,
# Q5_K_S vs Q5_1: 0.0013); such quants form one tier, and within a tier the planner
# prefers a fast kernel, then the smaller (faster) file.
QUALITY_TOLERANCE = 0.005


def _quality_tiers() -> dict[str, int]:
    """quant -> tier (0 = best). Single-linkage groups of ppl losses within the tolerance."""
    tiers, tier, last = {}, -1, None
    for q, fact in sorted(QUANT_FACTS.items(), key=lambda kv: (kv[1].ppl_loss, kv[0])):
        if last is None or fact.ppl_loss - last > QUALITY_TOLERANCE:
            tier += 1
        tiers[q] = tier
        last = fact.ppl_loss
    return tiers


QUALITY_TIER: dict[str, int] = _quality_tiers()
UNKNOWN_TIER = len(set(QUALITY_TIER.values()))  # quants we know nothing about rank last


def quality_tier(quant: str) -> int:
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
# Names are those of hardware.py (cpuinfo) and of llama_print_system_info() (lower-cased).
FAST_KERNELS: dict[str, frozenset[str]] = {
    "avx2": frozenset({"Q4_0", "Q4_K", "IQ4_NL"}),
    "avx512f": frozenset({"Q2_K"}),
    "avx512": frozenset({"Q2_K"}),
    "dotprod": frozenset({"Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "IQ4_NL"}),
    "i8mm": frozenset({"Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0"}),
    "matmul_int8": frozenset({"Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0"}),
    "amx_int8": frozenset({"Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"}),
}


def has_fast_kernel(quant: str, simd: Iterable[str]) -> bool:
    """Whether the bulk of a `quant` file's weights get a repacked/AMX kernel on a CPU with `simd`."""
    fact = QUANT_FACTS.get(quant.upper())
    ttype = fact.tensor_type if fact else quant.upper()
    return any(ttype in FAST_KERNELS.get(f.lower(), ()) for f in simd)


@dataclass(frozen=True)
class KVCacheType:
    ggml_type: int  # ggml's enum ggml_type value, what llama.cpp's type_k / type_v take
    bytes_per_element: float  # ggml block size / block length (q8_0: 34 B per 32)


# The KV cache types llama.cpp's CPU backend runs (its --cache-type-k/-v list).
KV_CACHE_TYPES: dict[str, KVCacheType] = {
    "f32": KVCacheType(0, 4.0), "f16": KVCacheType(1, 2.0), "bf16": KVCacheType(30, 2.0),
    "q8_0": KVCacheType(8, 34 / 32), "q5_1": KVCacheType(7, 24 / 32), "q5_0": KVCacheType(6, 22 / 32),
    "q4_1": KVCacheType(3, 20 / 32), "q4_0": KVCacheType(2, 18 / 32),
}
KV_TYPE_BYTES: dict[str, float] = {name: t.bytes_per_element for name, t in KV_CACHE_TYPES.items()}

# ---------------------------------------------------------------------------------------
# Model shape


# Architectures whose FFN is two matrices (up, down) rather than three (gate, up, down):
# fewer weights per block, and one n_ff-wide activation less per batch token.
UNGATED_FFN_ARCHS = frozenset({"phi2", "gpt2", "gptneox", "starcoder", "bloom", "falcon", "mpt", "bert",
                             "stablelm", "starcoder2", "gptj"})


@dataclass(frozen=True, kw_only=True)
class ModelSpec(ModelShape):
    """A model's shape, plus what only the planner asks of it."""

    tied_embeddings: bool | None = None  # None: inferred from the parameter count

    @property
    def embeddings_tied(self) -> bool:
        """Whether the output projection reuses the token-embedding table.

        Unless told, decided by which of the two parameter counts the model's shape
        predicts (attention + FFN per block, one or two vocab x n_embd tables) is closer
        to the real one: SmolLM2-135M's shape predicts 134,514,432 tied and the registry
        says 134,515,008; Phi-2's predicts 2.78e9 untied, as it is.
        """
        if self.tied_embeddings is not None:
            return self.tied_embeddings
        n_embd = self.embedding_length
        attn = n_embd * (self.head_count * self.k_length + self.n_embd_k_gqa + self.n_embd_v_gqa) \
            + self.head_count * self.v_length * n_embd
        mats = 2 if self.architecture in UNGATED_FFN_ARCHS else 3
        blocks = self.block_count * (attn + mats * n_embd * self.feed_forward_length)
        table = self.vocab_size * n_embd
        tied, untied = blocks + table, blocks + 2 * table
        return abs(self.n_params - tied) < abs(self.n_params - untied)

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.embedding_length


def spec_from_entry(entry) -> ModelSpec:
    """The shape of a registry model (``registry.ModelEntry``), before any file is downloaded."""
    return ModelSpec(**shape_of(entry))


def spec_from_gguf(info) -> ModelSpec:
    """The shape of a local file, from its GGUF metadata (``gguf_info.GGUFInfo``)."""
    return ModelSpec(**shape_of(info))


# ---------------------------------------------------------------------------------------
# Memory


# Calibration constants (see the module docstring for the measurements behind them).
FIXED_OVERHEAD = 3 * MiB + 150 * KiB  # runtime: OpenMP threads, graph metadata, code pages
VOCAB_BYTES_PER_TOKEN = 310  # tokenizer tables, output logits row, sampler candidate arrays
KV_CELL_BYTES = 200  # per context cell: llama.cpp's cell metadata (positions, sequence sets)
SEQ_VOCAB_BYTES = 16  # per extra parallel sequence and vocab entry: its logits row and candidates
COMPUTE_FLOATS_FFN = 3  # live n_ff-wide float rows per micro-batch token
COMPUTE_FLOATS_EMBD = 5  # live n_embd-wide float rows per micro-batch token


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    compute: int
    overhead: int
    total: int

    def to_dict(self) -> dict:
        return asdict(self)


def _kv_bytes(name: str) -> float:
    try:
        return KV_TYPE_BYTES[name.lower()]
    except (KeyError, AttributeError):
        raise InvalidArgumentError(f"unknown KV cache type {name!r}",
                                   hint=f"Use one of {', '.join(KV_TYPE_BYTES)}.") from None


# llama.cpp rounds the context up to a multiple of 256 cells (n_ctx 300 allocates 512).
KV_CELL_PAD = 256


def padded_context(n_ctx: int) -> int:
    return -(-int(n_ctx) // KV_CELL_PAD) * KV_CELL_PAD


def _kv_bytes_per_cell(spec: ModelSpec, type_k: str, type_v: str | None) -> float:
    bk, bv = _kv_bytes(type_k), _kv_bytes(type_v or type_k)
    return spec.block_count * (spec.n_embd_k_gqa * bk + spec.n_embd_v_gqa * bv)


def kv_cache_bytes(spec: ModelSpec, n_ctx: int, type_k: str = "f16", type_v: str | None = None) -> int:
    """Bytes of the KV cache at `n_ctx`, as llama.cpp allocates it (its "KV buffer size" line):
    n_cells x n_layer x (n_embd_k_gqa x bytes(type_k) + n_embd_v_gqa x bytes(type_v)),
    n_cells being n_ctx rounded up to a multiple of 256."""
    return int(math.ceil(padded_context(n_ctx) * _kv_bytes_per_cell(spec, type_k, type_v)))


# An ungated FFN (up -> activation -> down) touches two n_ff-wide activations per batch
# token rather than three (gate, up, product). Measured on a random-weight phi2 model
# (n_embd 256, n_ff 1024): 8.5 KB of RSS per prompt token, where 2 n_ff + n_embd/2 floats
# predicts 8.7 KB and the gated formula 17.4 KB; the attention path's buffers are reused
# by the time the FFN runs.


def effective_flash_attn(requested: bool | None, type_v: str | None) -> bool:
    """Whether llama.cpp will run with flash attention: as asked, else the configured
    default; a quantized V cache exists only in flash attention's layout, so it forces it on."""
    from .config import flash_attn_default

    if type_v and type_v.lower() not in ("f16", "f32", "bf16"):
        if requested is False:
            raise InvalidArgumentError(f"a {type_v} V cache needs flash attention",
                                       hint="Leave flash attention on, or use an f16 V cache.")
        return True
    return flash_attn_default() if requested is None else requested


def estimate_memory(spec: ModelSpec, *, weights_bytes: int, n_ctx: int, n_batch: int = 512,
                    n_ubatch: int = 512, type_k: str = "f16", type_v: str | None = "f16",
                    flash_attn: bool = True, n_parallel: int = 1) -> MemoryEstimate:
    """Resident memory a model needs at `n_ctx` per sequence for `n_parallel` sequences (bytes),
    split as the module docstring explains. The sequences share one unified KV cache of
    n_ctx x n_parallel cells, which the attention mask spans too; each extra sequence also
    keeps a logits row and a sampler's candidate array (n_vocab x 16 B)."""
    if n_ctx < 1:
        raise InvalidArgumentError(f"n_ctx must be >= 1, got {n_ctx}")
    if n_parallel < 1:
        raise InvalidArgumentError(f"n_parallel must be >= 1, got {n_parallel}")
    ub = max(1, min(n_ubatch, n_batch, n_ctx))
    kv = kv_cache_bytes(spec, n_ctx * n_parallel, type_k, type_v)
    n_ctx = padded_context(n_ctx * n_parallel)  # the cells llama.cpp really has
    if spec.architecture in UNGATED_FFN_ARCHS:
        per_token = 2 * spec.feed_forward_length + spec.embedding_length // 2
    else:
        per_token = COMPUTE_FLOATS_FFN * spec.feed_forward_length + COMPUTE_FLOATS_EMBD * spec.embedding_length
    compute = 4 * ub * per_token
    # The attention mask covers every cell in use: at worst (a batch arriving when the
    # context is full) n_ctx x n_ubatch, kept as f16 for flash attention, f32 without it.
    if flash_attn:
        compute += 2 * ub * n_ctx
    else:  # and the KQ scores are materialised: n_head x n_ubatch x n_ctx floats
        compute += 4 * ub * n_ctx + 4 * spec.head_count * ub * n_ctx
    overhead = (FIXED_OVERHEAD + VOCAB_BYTES_PER_TOKEN * spec.vocab_size + KV_CELL_BYTES * n_ctx
                + SEQ_VOCAB_BYTES * spec.vocab_size * (n_parallel - 1))
    weights = int(weights_bytes)
    return MemoryEstimate(weights=weights, kv_cache=kv, compute=compute, overhead=overhead,
                          total=weights + kv + compute + overhead)


# ---------------------------------------------------------------------------------------
# Speed

# llama.cpp's generation reads weights at up to this fraction of the streaming bandwidth
# hardware.measure_bandwidth() reports (a one-core numpy sum), once enough threads run:
# SmolLM2-135M Q4_1 (98.4 MB), 2 threads, llama-bench tg128 151-157 t/s = 14.9-15.4 GB/s of
# weights against 17.6 GB/s measured on the 2-core EPYC of reference.md: 0.85-0.88.
# (Applied to this machine's measurement only; see _bandwidth_source.)
GEN_EFFICIENCY = 0.86
# Sampling, detokenising and the Python loop per generated token: end-to-end generation
# from Python is ~0.92x llama-bench's tg128 on SmolLM2 (reference.md), ~0.5 ms a token.
PER_TOKEN_SECONDS = 0.0005
# One thread cannot dequantise and multiply as fast as DRAM delivers. Measured on this
# project's 2-vCPU Xeon (AVX-512, 17.1 GB/s numpy): SmolLM2-135M Q4_1 end to end from
# Python generates 55 tok/s with 1 thread (5.6 GB/s of weights, 0.33 of the bandwidth) and
# ~100 tok/s with 2 (0.61): each thread adds ~0.33 x bandwidth until GEN_EFFICIENCY is
# reached, i.e. rate = bandwidth x min(GEN_EFFICIENCY, threads x 0.33), which is
# GEN_EFFICIENCY x bandwidth x min(1, threads / THREADS_TO_SATURATE). The 4-core boards'
# figures were measured with 4 threads, past this point.
THREADS_TO_SATURATE = 2.6
# When the bandwidth is unknown (not measured yet): the profile of the commonest device
# of the architecture (hardware.PROFILES).
_FALLBACK_PROFILE = {"x86_64": "laptop-8gb", "aarch64": "rpi5-8gb", "armv8l": "rpi4-4gb",
                     "armv7l": "rpi4-4gb"}


def _fallback_profile(hw):
    from . import hardware

    name = _FALLBACK_PROFILE.get(hw.arch, "rpi4-4gb")
    if re.search(r"Raspberry Pi [1-4]\b", hw.pi_model or ""):
        name = "rpi4-4gb"
    return hardware.PROFILES[name]


def fallback_bandwidth(hw) -> float:
    """A bandwidth (GB/s) to assume for `hw` when it has none."""
    return float(_fallback_profile(hw).bandwidth_gbs or 3.2)


def _bandwidth_source(hw) -> tuple[float, int | None]:
    """(GB/s, threads it was measured with), threads None for this machine's one-core read.

    Two kinds of figure reach here. hardware.detect() measures a one-core streaming read
    (numpy); GEN_EFFICIENCY and the thread scaling turn it into llama.cpp's rate. The
    named profiles' figures (and custom devices built on them) are already llama.cpp's
    effective rates, at the profile's performance-core count (hardware.py's PROFILES
    comment): used as they are, scaled only for another thread count.
    """
    from . import hardware

    if hw.bandwidth_gbs is None:
        ref = _fallback_profile(hw)
        return float(ref.bandwidth_gbs or 3.2), ref.performance_cores
    named = hardware.PROFILES.get(hw.name)
    if named is None:  # custom(): a profile's figure copied, or this machine's measurement
        named = next((p for p in hardware.PROFILES.values() if p.bandwidth_gbs == hw.bandwidth_gbs), None)
    return float(hw.bandwidth_gbs), (named.performance_cores if named is not None else None)


def generation_rate(hw, n_threads: int | None = None) -> float:
    """Bytes of weights per second llama.cpp's generation reads on `hw` with `n_threads`."""
    gbs, measured_with = _bandwidth_source(hw)
    threads = n_threads or hw.usable_cores

    def share(t):
        return min(1.0, t / THREADS_TO_SATURATE)
    if measured_with is None:
        return GEN_EFFICIENCY * gbs * 1e9 * share(threads)
    return gbs * 1e9 * share(threads) / share(max(1, measured_with))


def bytes_per_token(spec: ModelSpec, *, weights_bytes: int, n_past: int = 0, type_k: str = "f16",
                    type_v: str | None = None) -> float:
    """Bytes read from memory to generate one token after `n_past` tokens."""
    read = float(weights_bytes)
    if not spec.embeddings_tied and spec.n_params > 0:
        # Only one row of the input-embedding table is looked up; the output matrix is separate.
        share = min(0.5, spec.embedding_params / spec.n_params)
        read -= weights_bytes * share * (1 - 1 / max(1, spec.vocab_size))
    return read + n_past * _kv_bytes_per_cell(spec, type_k, type_v)


def estimate_speed(spec: ModelSpec, *, weights_bytes: int, hw, n_threads: int | None = None,
                   n_past: int = 0, type_k: str = "f16", type_v: str | None = None) -> float:
    """Estimated generation speed (tokens/s) on `hw`: 1 / (bytes per token / rate + per-token cost)."""
    rate = generation_rate(hw, n_threads)
    seconds = bytes_per_token(spec, weights_bytes=weights_bytes, n_past=n_past, type_k=type_k,
                              type_v=type_v) / rate + PER_TOKEN_SECONDS
    return 1.0 / seconds


# ---------------------------------------------------------------------------------------
# The plan


def format_bytes(n: int | float | None) -> str:
    """Binary units, as RAM is sold: 1.5 GiB, 812 MiB."""
    if n is None:
        return "?"
    n = float(n)
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{int(n)} B"


def default_reserve(hw) -> int:
    """The safety reserve: max(256 MiB, 10% of the memory limit).

    Kept free for the OS, the Python process itself and whatever else runs (256 MiB is
    about a desktop session's swing; 10% is llama.cpp's and Ollama's order of margin:
    `--fit` keeps 1 GiB, Ollama evicts above 80% of free memory).
    """
    return max(256 * MiB, hw.memory_limit // 10)


def budget_bytes(hw, reserve_bytes: int | None = None) -> int:
    """Memory a model may use on `hw`: what is available (cgroup-aware) minus the reserve."""
    reserve = default_reserve(hw) if reserve_bytes is None else int(reserve_bytes)
    return max(0, hw.memory_available - reserve)


def default_context(spec: ModelSpec) -> int:
    """The context slmrun loads with when none is asked: the model's, capped by SLMRUN_MAX_CTX."""
    from . import config
    return min(spec.context_length or 2048, config.max_auto_ctx())


MAX_AUTO_PARALLEL = 4  # llama-server's automatic slot count; past it a CPU gains little


@dataclass(frozen=True)
class ParallelChoice:
    n_parallel: int
    estimated_bytes: int  # memory with that many slots
    reason: str


def choose_parallel(spec: ModelSpec, *, weights_bytes: int, n_ctx: int, hw, n_batch: int = 512,
                    type_k: str = "f16", type_v: str | None = "f16", flash_attn: bool = True,
                    reserve_bytes: int | None = None, upper: int = MAX_AUTO_PARALLEL) -> ParallelChoice:
    """How many requests to decode together (slots) on `hw`: as many as fit, up to `upper`.

    Every slot adds n_ctx cells of KV cache. Extra slots may use at most half of the
    memory left after one slot, so a machine that only just holds the model keeps its
    margin for everything else (a 2 GB Pi with a 1B model gets one slot; a laptop with a
    small model gets four). Batching pays on every CPU: decoding is memory-bound, and a
    batch of 4 tokens reads the weights once, as one token does.
    """
    budget = budget_bytes(hw, reserve_bytes)

    def need(n: int) -> int:
        b = min(n_batch, n_ctx)
        return estimate_memory(spec, weights_bytes=weights_bytes, n_ctx=n_ctx, n_batch=b, n_ubatch=b,
                               type_k=type_k, type_v=type_v, flash_attn=flash_attn, n_parallel=n).total

    one = need(1)
    spare = max(0, budget - one) // 2
    n = 1
    while n < upper and need(n + 1) - one <= spare:
        n += 1
    per_slot = kv_cache_bytes(spec, n_ctx, type_k, type_v)
    if n == upper:
        reason = (f"{n} parallel slots (the most slmrun sets by itself), each a {n_ctx}-token context "
                  f"with {format_bytes(per_slot)} of KV cache: {format_bytes(need(n))} in all")
    elif n == 1:
        reason = (f"1 slot: a second {n_ctx}-token context ({format_bytes(per_slot)} of KV cache) would use more "
                  f"than half of the {format_bytes(max(0, budget - one))} left over; requests queue")
    else:
        reason = (f"{n} parallel slots of {n_ctx} tokens ({format_bytes(per_slot)} of KV cache each): more "
                  f"would use over half of the memory left after the model")
    return ParallelChoice(n, need(n), reason)


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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["estimated_tps"] = round(self.estimated_tps, 2)
        return d


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
        }


def _inputs(model) -> tuple[str, ModelSpec, list[tuple[str, int, bool]]]:
    """(name, spec, [(quant, size, size_is_estimate)]) from an entry, a GGUFInfo or (spec, files)."""
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], ModelSpec):
        spec, files = model
        if isinstance(files, Mapping):
            rows = [(str(q).upper(), size, False) for q, size in files.items()]
        else:
            rows = [(f.quant, f.size, f.size_is_estimate) for f in files]
        name = spec.architecture
    elif hasattr(model, "files") and hasattr(model, "default_quant"):  # registry.ModelEntry
        spec, name = spec_from_entry(model), model.name
        rows = [(f.quant, f.size, f.size_is_estimate) for f in model.files]
    elif hasattr(model, "weights_bytes") and hasattr(model, "quant"):  # gguf_info.GGUFInfo
        spec, name = spec_from_gguf(model), model.name
        rows = [(model.quant.upper(), model.size, False)]
    else:
        raise InvalidArgumentError(f"cannot plan for {type(model).__name__}",
                                   hint="Pass a registry entry, a GGUFInfo, or (ModelSpec, {quant: size}).")
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


@dataclass(frozen=True)
class _Setting:
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

    def at(self, **changes) -> "_Setting":
        return replace(self, **changes)


def _option(spec: ModelSpec, quant: str, size: int, size_is_estimate: bool, s: _Setting) -> QuantOption:
    batch = min(s.n_batch, s.n_ctx)
    mem = estimate_memory(spec, weights_bytes=size, n_ctx=s.n_ctx, n_batch=batch, n_ubatch=batch,
                          type_k=s.type_k, type_v=s.type_v, flash_attn=s.flash_attn)
    # Speed in the middle of a conversation that fills the context.
    tps = estimate_speed(spec, weights_bytes=size, hw=s.hw, n_threads=s.n_threads, n_past=s.n_ctx // 2,
                         type_k=s.type_k, type_v=s.type_v)
    fact = QUANT_FACTS.get(quant)
    return QuantOption(quant=quant, size=size, size_is_estimate=size_is_estimate, estimated_bytes=mem.total,
                       estimated_tps=tps, ppl_loss=fact.ppl_loss if fact else None, fits=mem.total <= s.budget,
                       fast_kernel=has_fast_kernel(quant, tuple(s.hw.simd or ())),
                       fast_enough=tps >= s.min_speed, memory=mem)


def _evaluate(spec: ModelSpec, rows, s: _Setting) -> list[QuantOption]:
    options = [_option(spec, quant, size, estimated, s) for quant, size, estimated in rows]
    options.sort(key=lambda o: (o.size, quality_tier(o.quant), o.quant))
    return options


def _quality_key(o: QuantOption):
    """Best first: quality tier, then a fast kernel, then speed, then the exact ppl loss."""
    return (quality_tier(o.quant), not o.fast_kernel, -o.estimated_tps,
            o.ppl_loss if o.ppl_loss is not None else math.inf, o.quant)


def _speed_key(o: QuantOption):
    return (-o.estimated_tps,) + _quality_key(o)


def _choose(options: list[QuantOption]) -> tuple[QuantOption | None, bool]:
    """(pick, reached_speed) by the rules; (None, False) when nothing fits."""
    fitting = [o for o in options if o.fits]
    if not fitting:
        return None, False
    fast = [o for o in fitting if o.fast_enough]
    if fast:
        return min(fast, key=_quality_key), True
    return min(fitting, key=_speed_key), False


def _largest_context(ok, upper: int) -> int:
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
    return _largest_context(fits, upper)


def _ppl(o: QuantOption) -> str:
    return f"+{o.ppl_loss:.4f} ppl" if o.ppl_loss is not None else "quality unknown"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def plan(model, hw, *, n_ctx: int | None = None, min_speed: float = 5.0, quant: str | None = None,
         force: bool = False, reserve_bytes: int | None = None, type_k: str = "f16", type_v: str | None = None,
         flash_attn: bool | None = None, n_batch: int = 512, n_parallel: int | None = None) -> Plan:
    """Choose how to run `model` (a registry entry, a GGUFInfo, or (ModelSpec, {quant: size})) on `hw`.

    Rules: the budget is available memory (cgroup-aware) minus a reserve; among the
    quants that fit and reach `min_speed` tokens/s, the best quality (perplexity loss);
    if none is fast enough, the fastest that fits; within a quality tier a fast kernel,
    then the smaller file. `quant` overrides the choice; `force` returns a plan even when
    it does not fit (with a warning) instead of raising InsufficientMemoryError.
    """
    name, spec, rows = _inputs(model)
    type_k = type_k.lower()
    type_v = (type_v or type_k).lower()
    _kv_bytes(type_k), _kv_bytes(type_v)
    flash_attn = effective_flash_attn(flash_attn, type_v)
    if min_speed < 0:
        raise InvalidArgumentError(f"min_speed must be >= 0, got {min_speed}")
    if n_ctx is not None and n_ctx < 16:
        raise InvalidArgumentError(f"n_ctx={n_ctx} is too small", hint="Use at least 16.")
    if n_batch < 1:
        raise InvalidArgumentError(f"n_batch must be >= 1, got {n_batch}")
    ctx = int(n_ctx) if n_ctx else default_context(spec)
    threads = hw.usable_cores
    budget = budget_bytes(hw, reserve_bytes)
    setting = _Setting(hw=hw, n_ctx=ctx, budget=budget, min_speed=min_speed, n_threads=threads,
                       n_batch=n_batch, type_k=type_k, type_v=type_v, flash_attn=flash_attn)
    options = _evaluate(spec, rows, setting)
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

    if quant is not None:
        pick = _override(name, quant, options, by_quant, setting, force, reasons, warnings)
    else:
        pick, reached = _choose(options)
        if pick is None:
            pick = _nothing_fits(name, spec, options, setting, force, reasons, warnings)
        else:
            _explain(pick, reached, options, setting, reasons, warnings)
            reasons.extend(_context_trade(spec, rows, options, pick, setting))
            keep = offline_default(model) if hasattr(model, "default_quant") else None
            kept = by_quant.get(keep) if keep else None
            if kept is not None and kept is not pick and kept.fits and kept.fast_enough:
                reasons.append(f"`slmrun pull {name}` without a quant fetches {keep}, which installs without "
                               f"the hub; `slmrun pull {name}:{pick.quant.lower()}` fetches this pick")
    why = ("the cgroup's CPU quota" if threads < max(1, hw.performance_cores) else "the performance cores")
    reasons.append(f"{threads} thread{'s' if threads != 1 else ''}: {why}"
                   + (f" (of {hw.logical_cores} logical)" if hw.logical_cores != threads else ""))
    # The quant is chosen for one request; the slots for serving several at once come after.
    if n_parallel is None:
        slots = choose_parallel(spec, weights_bytes=pick.size, n_ctx=ctx, hw=hw, n_batch=n_batch, type_k=type_k,
                                type_v=type_v, flash_attn=flash_attn, reserve_bytes=reserve_bytes)
        n_par, par_bytes = slots.n_parallel, slots.estimated_bytes
        reasons.append(slots.reason)
    else:
        n_par = int(n_parallel)
        b = min(n_batch, ctx)
        par_bytes = estimate_memory(spec, weights_bytes=pick.size, n_ctx=ctx, n_batch=b, n_ubatch=b, type_k=type_k,
                                    type_v=type_v, flash_attn=flash_attn, n_parallel=n_par).total
        reasons.append(f"{n_par} parallel slot{'s' if n_par != 1 else ''}: asked for (--parallel), "
                       f"{format_bytes(par_bytes)} in all")
        if par_bytes > budget and pick.fits:
            warnings.append(f"{n_par} slots need {format_bytes(par_bytes)}, over the {format_bytes(budget)} budget")
    return Plan(model=name, hardware=hw.name, quant=pick.quant, n_threads=threads, n_ctx=ctx, type_k=type_k,
                type_v=type_v, n_batch=min(n_batch, ctx), flash_attn=flash_attn,
                estimated_bytes=pick.estimated_bytes, estimated_tps=pick.estimated_tps, budget_bytes=budget,
                min_speed=min_speed, reasons=reasons, options=options, warnings=warnings, memory=pick.memory,
                bandwidth_gbs=bandwidth, n_parallel=n_par, parallel_bytes=par_bytes)


def _override(name, quant, options, by_quant, s: _Setting, force, reasons, warnings) -> QuantOption:
    wanted = quant.upper()
    if wanted not in by_quant:
        raise UnknownQuantError(f"{name} has no quant {quant!r}",
                                hint=f"Available: {', '.join(o.quant for o in options)}.")
    pick = by_quant[wanted]
    reasons.append(f"{pick.quant}: asked for (--quant), {format_bytes(pick.estimated_bytes)}, "
                   f"~{pick.estimated_tps:.1f} tok/s")
    if not pick.fits:
        if not force:
            best, _ = _choose(options)
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


def _nothing_fits(name, spec, options, s: _Setting, force, reasons, warnings) -> QuantOption:
    smallest = min(options, key=lambda o: (o.estimated_bytes, _quality_key(o)))
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


def _explain(pick, reached, options, s: _Setting, reasons, warnings) -> None:
    fitting = [o for o in options if o.fits]
    if reached:
        n_ok = sum(o.fast_enough for o in fitting)
        reasons.append(f"{pick.quant}: the best quality ({_ppl(pick)}) of the {n_ok} quant"
                       f"{'s' if n_ok != 1 else ''} that fit and reach {s.min_speed:g} tok/s "
                       f"({format_bytes(pick.estimated_bytes)}, ~{pick.estimated_tps:.1f} tok/s at n_ctx {s.n_ctx})")
    else:
        reasons.append(f"{pick.quant}: no quant that fits reaches {s.min_speed:g} tok/s; the fastest that fits "
                       f"(~{pick.estimated_tps:.1f} tok/s, {format_bytes(pick.estimated_bytes)})")
        warnings.append(f"~{pick.estimated_tps:.1f} tok/s is below {s.min_speed:g} tok/s: replies will be slow; "
                        "a smaller model or context would be faster")
    for o in fitting:
        if o is not pick and quality_tier(o.quant) == quality_tier(pick.quant) and (o.fast_enough or not reached):
            why = ("a fast kernel on this CPU" if pick.fast_kernel and not o.fast_kernel
                   else "a smaller, faster file")
            reasons.append(f"{pick.quant} over {o.quant}: equal quality (within {QUALITY_TOLERANCE} ppl); "
                           f"{pick.quant} has {why}")
    better = [o for o in options if quality_tier(o.quant) < quality_tier(pick.quant)]
    for o in sorted(better, key=_quality_key)[:3]:
        if not o.fits:
            reasons.append(f"{o.quant} ({_ppl(o)}) needs {format_bytes(o.estimated_bytes)}: over the budget")
        elif not o.fast_enough:
            reasons.append(f"{o.quant} ({_ppl(o)}) fits but ~{o.estimated_tps:.1f} tok/s is below "
                           f"{s.min_speed:g} tok/s")


TRADE_MIN_CTX = 512  # the context at which we ask "what could this device run at all"


def _context_trade(spec, rows, options, pick, s: _Setting) -> list[str]:
    """When the context costs quality, say so and offer the trades.

    The quant the same rules pick at a short context (512) is what the device could
    run; if it is better than the pick at the asked context, the context is the cost.
    """
    if s.n_ctx <= TRADE_MIN_CTX:
        return []
    ideal, _ = _choose(_evaluate(spec, rows, s.at(n_ctx=TRADE_MIN_CTX)))
    if ideal is None or quality_tier(ideal.quant) >= quality_tier(pick.quant):
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
        o = _option(spec, best.quant, best.size, best.size_is_estimate, s.at(n_ctx=c))
        return o.fits and o.fast_enough

    fit_ctx = _largest_context(ok, s.n_ctx - 1)
    if fit_ctx >= 256:
        out.append(f"trade: a smaller context, {best.quant} at n_ctx <= {fit_ctx} (--ctx {fit_ctx})")
    if s.type_k != "q8_0" or s.type_v != "q8_0":
        q8 = _option(spec, best.quant, best.size, best.size_is_estimate, s.at(type_k="q8_0", type_v="q8_0"))
        verdict = ("fits and is fast enough" if q8.fits and q8.fast_enough
                   else "still does not fit" if not q8.fits else f"fits but stays below {s.min_speed:g} tok/s")
        out.append(f"trade: a quantized KV cache, {best.quant} with q8_0 K and V (--kv-type q8_0) at n_ctx "
                   f"{s.n_ctx}: {format_bytes(q8.estimated_bytes)}, ~{q8.estimated_tps:.1f} tok/s: {verdict}")
    return out


def offline_default(entry) -> str | None:
    """The entry's default quant when its file installs without the hub (the default model's
    PyPI wheel), else None."""
    try:
        f = entry.file(entry.default_quant)
    except Exception:
        return None
    return f.quant if getattr(f, "source", "hub") != "hub" else None


def pick_for_this_machine(entry) -> str:
    """The quant `slmrun pull NAME` / `slmrun.load(NAME)` use when none is named. Never raises.

    The plan's pick on hardware.detect() with the cached bandwidth only (it never
    measures here, so it stays fast), with one exception: a default file that installs
    without the hub (the offline default model's PyPI wheel) is kept while it fits at a
    usable speed, because working without the hub is that file's whole point; the plan
    says so, and `NAME:QUANT` fetches the plan's pick. When nothing fits, the smallest
    option; on any error, the entry's default quant.
    """
    try:
        from . import hardware
        hw = hardware.detect()
        try:
            p = plan(entry, hw)
        except InsufficientMemoryError:
            return plan(entry, hw, force=True).quant
        keep = offline_default(entry)
        if keep is not None and keep != p.quant:
            option = next((o for o in p.options if o.quant == keep), None)
            if option is not None and option.fits and option.fast_enough:
                return keep
        return p.quant
    except Exception:  # planning must never stop a pull or a load
        return entry.default_quant


def with_bandwidth(hw, gbs: float):
    """`hw` with another bandwidth (for what-if plans and tests)."""
    return replace(hw, bandwidth_gbs=gbs)
