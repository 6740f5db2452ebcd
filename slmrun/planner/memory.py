"""How much memory a model needs, and how much a machine can give it.

``estimate_memory`` is what the process's resident set grows by when a model is loaded,
a prompt of a full micro-batch is evaluated and replies are generated, with llama.cpp's
defaults as slmrun sets them (mmap on, flash attention on):

    weights   the GGUF file size: every weight is read for every token, so every
              mmap'd page ends up resident (pages llama.cpp copies when it repacks
              weights are clean page cache the kernel drops under pressure).
    kv_cache  n_cells x n_layer x (n_embd_k_gqa x bytes(type_k) + n_embd_v_gqa x bytes(type_v)),
              n_cells = n_ctx rounded up to 256: exactly llama.cpp's "KV buffer size".
    compute   the activations a micro-batch really touches, plus the attention mask at
              a full context (and, without flash attention, the KQ scores).
    overhead  tokenizer and sampling tables, KV-cell bookkeeping and a fixed runtime part.

A model without a KV cache (an encoder such as BERT: ``ModelSpec.has_kv_cache``) has none of
the KV terms; each decode attends only within its batch, and since every token of an
embedding batch is an output, llama.cpp reserves and clears a logits row of n_vocab floats
for each (llama-context.cpp ``output_reserve``): that buffer is most of such a model's memory
beyond its weights (``_without_kv_cache``).

Not llama.cpp's compute-buffer size: that is the *reserved* worst case, plain virtual
memory on a CPU, of which only the pages a real batch writes become resident. The
constants below are calibrated by measurement: docs/CALIBRATION.md gives the figures and
the commands that regenerate them (tests/test_memory_estimate.py re-checks every run).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..errors import InsufficientMemoryError, InvalidArgumentError
from ..units import format_bytes
from .quants import kv_cache_type
from .spec import UNGATED_FFN_ARCHS, ModelSpec

KiB, MiB = 1 << 10, 1 << 20

FIXED_OVERHEAD = 3 * MiB + 150 * KiB  # runtime: OpenMP threads, graph metadata, code pages
VOCAB_BYTES_PER_TOKEN = 310  # tokenizer tables, output logits row, sampler candidate arrays
KV_CELL_BYTES = 200  # per context cell: llama.cpp's cell metadata (positions, sequence sets)
SEQ_VOCAB_BYTES = 16  # per extra parallel sequence and vocab entry: its logits row and candidates
COMPUTE_FLOATS_FFN = 3  # live n_ff-wide float rows per micro-batch token (FFN gate, up, product)
COMPUTE_FLOATS_EMBD = 5  # live n_embd-wide float rows per micro-batch token (residual, norm, Q, ...)

# llama.cpp rounds the context up to a multiple of 256 cells (n_ctx 300 allocates 512).
KV_CELL_PAD = 256


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    compute: int
    overhead: int
    total: int

    def to_dict(self) -> dict:
        return asdict(self)


def padded_context(n_ctx: int) -> int:
    return -(-int(n_ctx) // KV_CELL_PAD) * KV_CELL_PAD


def kv_bytes_per_cell(spec: ModelSpec, type_k: str, type_v: str | None) -> float:
    bk = kv_cache_type(type_k).bytes_per_element
    bv = kv_cache_type(type_v or type_k).bytes_per_element
    return spec.block_count * (spec.n_embd_k_gqa * bk + spec.n_embd_v_gqa * bv)


def kv_cache_bytes(spec: ModelSpec, n_ctx: int, type_k: str = "f16", type_v: str | None = None) -> int:
    """Bytes of the KV cache at `n_ctx`, as llama.cpp allocates it (its "KV buffer size" line):
    n_cells x n_layer x (n_embd_k_gqa x bytes(type_k) + n_embd_v_gqa x bytes(type_v)),
    n_cells being n_ctx rounded up to a multiple of 256; 0 for a model without one (an encoder)."""
    if not spec.has_kv_cache:
        return 0
    return int(math.ceil(padded_context(n_ctx) * kv_bytes_per_cell(spec, type_k, type_v)))


def effective_flash_attn(requested: bool | None, type_v: str | None) -> bool:
    """Whether llama.cpp will run with flash attention: as asked, else the configured
    default; a quantized V cache exists only in flash attention's layout, so it forces it on."""
    from ..config import flash_attn_default

    if type_v and kv_cache_type(type_v).quantized:
        if requested is False:
            raise InvalidArgumentError(f"a {type_v} V cache needs flash attention",
                                       hint="Leave flash attention on, or use an f16 V cache.")
        return True
    return flash_attn_default() if requested is None else requested


def estimate_memory(spec: ModelSpec, *, weights_bytes: int, n_ctx: int, n_batch: int = 512,
                    n_ubatch: int = 512, type_k: str = "f16", type_v: str | None = "f16",
                    flash_attn: bool = True, n_parallel: int = 1) -> MemoryEstimate:
    """Resident memory a model needs at `n_ctx` per sequence for `n_parallel` sequences (bytes),
    split as the module docstring explains. Each sequence has a KV stream of n_ctx cells
    rounded up to 256 (runtime/llama.py); the estimate's attention mask spans all of them,
    as a unified cache's does (an upper bound for streams); each extra sequence also keeps a
    logits row and a sampler's candidate array."""
    if n_ctx < 1:
        raise InvalidArgumentError(f"n_ctx must be >= 1, got {n_ctx}")
    if n_parallel < 1:
        raise InvalidArgumentError(f"n_parallel must be >= 1, got {n_parallel}")
    if not spec.has_kv_cache:
        return _without_kv_cache(spec, int(weights_bytes), n_ctx, n_batch, n_ubatch, flash_attn, n_parallel)
    ub = max(1, min(n_ubatch, n_batch, n_ctx))
    n_ctx = padded_context(n_ctx) * n_parallel  # the cells llama.cpp really has
    kv = kv_cache_bytes(spec, n_ctx, type_k, type_v)
    if spec.architecture in UNGATED_FFN_ARCHS:
        # Up -> activation -> down: two n_ff-wide activations per batch token rather than
        # three; the attention path's buffers are reused by the time the FFN runs.
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


# An encoder's batch, measured (docs/CALIBRATION.md): n_ff + 4 n_embd live floats per token, and
# ~3 MiB more than its llama.cpp context alone (slmrun's engine thread and state around it).
ENCODER_FLOATS_FFN = 1
ENCODER_FLOATS_EMBD = 4
ENCODER_OVERHEAD = 3 * MiB


def _without_kv_cache(spec: ModelSpec, weights: int, n_ctx: int, n_batch: int, n_ubatch: int, flash_attn: bool,
                      n_parallel: int) -> MemoryEstimate:
    """An encoder: a decode holds whole sequences (up to n_parallel of n_ctx tokens, at most a
    micro-batch), attends within them, and outputs every token: a logits row (n_vocab floats)
    and an embedding each. Measured on BERTs from 21 to 126 MiB: within 4% at a full batch."""
    ub = max(1, min(n_ubatch, n_batch, n_ctx * n_parallel))
    per_token = ENCODER_FLOATS_FFN * spec.feed_forward_length + ENCODER_FLOATS_EMBD * spec.embedding_length
    compute = 4 * ub * per_token + (2 * ub * ub if flash_attn else 4 * ub * ub + 4 * spec.head_count * ub * ub)
    outputs = 4 * ub * (spec.vocab_size + spec.embedding_length)
    overhead = FIXED_OVERHEAD + ENCODER_OVERHEAD + VOCAB_BYTES_PER_TOKEN * spec.vocab_size
    return MemoryEstimate(weights=weights, kv_cache=0, compute=compute + outputs, overhead=overhead,
                          total=weights + compute + outputs + overhead)


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


def check_memory(info, options, *, name: str, hw) -> None:
    """Fail before llama.cpp does (or the OOM killer does) when the model cannot fit on ``hw``."""
    from .spec import spec_from_gguf

    need = estimate_memory(spec_from_gguf(info), weights_bytes=info.size, n_ctx=options.n_ctx,
                           n_batch=options.n_batch, n_ubatch=options.n_ubatch, type_k=options.type_k or "f16",
                           type_v=options.type_v or "f16", flash_attn=options.flash_attn,
                           n_parallel=options.n_parallel).total
    budget = budget_bytes(hw)
    if need > budget:
        slots = f" x {options.n_parallel} parallel slots" if options.n_parallel > 1 else ""
        raise InsufficientMemoryError(
            f"{name} needs about {format_bytes(need)} at a context of {options.n_ctx} tokens{slots}; "
            f"this machine has {format_bytes(budget)} available after a safety reserve",
            hint=f"Try a smaller quant (`slmrun plan {name}` compares them), a smaller --ctx"
                 + (", fewer slots (n_parallel)" if options.n_parallel > 1 else "") + ", or --force to load anyway.")
