"""Which quant, context and threads to use on a machine: pure functions over plain data (a
model's shape, file sizes, a ``HardwareProfile``), tested from tables of devices and models.

    quants    quant facts: KL divergence and perplexity cost, bits per weight, fast kernels, KV cache types
    spec      the model's shape as the planner sees it
    memory    the memory estimate and the budget
    speed     the speed estimate from memory bandwidth
    options   every quant at one setting, and the rules that choose among them
    explain   the plan's reasons, warnings and error messages
    parallel  how many requests to decode together (slots)
    split     a model split across RPC devices: layers, each device's share, speed
    pick      ``plan()``, ``Plan`` and ``pick_for_this_machine()``

The names below are the planner's public surface; import them from here.
"""

from ..units import format_bytes
from .memory import (COMPUTE_FLOATS_EMBD, COMPUTE_FLOATS_FFN, FIXED_OVERHEAD, KV_CELL_BYTES, KV_CELL_PAD,
                     VOCAB_BYTES_PER_TOKEN, MemoryEstimate, budget_bytes, check_memory, default_reserve, effective_flash_attn,
                     estimate_memory, kv_cache_bytes, padded_context)
from .options import NEARLY_AS_GOOD, WORTH_IT, QuantOption, default_context, max_context_that_fits, quality_figures
from .parallel import MAX_AUTO_PARALLEL, ParallelChoice, choose_parallel
from .pick import Plan, offline_default, pick_for_this_machine, plan
from .quants import (FAST_KERNELS, KV_CACHE_TYPE_IDS, KV_CACHE_TYPES, QUALITY_ORDER, QUALITY_TIER,
                     QUALITY_TOLERANCE, QUANT_FACTS, KVCacheType, QuantFact, has_fast_kernel, kv_cache_type, regrid_hint,
                     quality_rank, quality_tier, tiers)
from .speculative import batch_slope, describe_speculative
from .split import DeviceShare, RemoteDevice, assign_layers, split_layers
from .spec import UNGATED_FFN_ARCHS, LocalModel, ModelSpec, spec_from_entry, spec_from_gguf
from .speed import (GEN_EFFICIENCY, PER_TOKEN_SECONDS, THREADS_TO_SATURATE, bytes_per_token, estimate_speed,
                    fallback_bandwidth, generation_rate, with_bandwidth)

__all__ = [
    "batch_slope", "describe_speculative", "DeviceShare", "RemoteDevice", "assign_layers", "split_layers", "LocalModel", "MAX_AUTO_PARALLEL", "ParallelChoice", "choose_parallel", "COMPUTE_FLOATS_EMBD", "COMPUTE_FLOATS_FFN", "FAST_KERNELS", "FIXED_OVERHEAD", "GEN_EFFICIENCY",
    "KV_CACHE_TYPES", "KV_CACHE_TYPE_IDS", "KV_CELL_BYTES", "KV_CELL_PAD", "KVCacheType", "MemoryEstimate",
    "ModelSpec", "PER_TOKEN_SECONDS", "Plan", "QUALITY_ORDER", "QUALITY_TIER", "QUALITY_TOLERANCE",
    "QUANT_FACTS", "QuantFact", "QuantOption", "NEARLY_AS_GOOD", "WORTH_IT", "quality_figures", "tiers", "THREADS_TO_SATURATE", "UNGATED_FFN_ARCHS",
    "VOCAB_BYTES_PER_TOKEN", "budget_bytes", "check_memory", "bytes_per_token", "default_context", "default_reserve",
    "effective_flash_attn", "estimate_memory", "estimate_speed", "fallback_bandwidth", "format_bytes",
    "generation_rate", "has_fast_kernel", "regrid_hint", "kv_cache_bytes", "kv_cache_type", "max_context_that_fits",
    "offline_default", "padded_context", "pick_for_this_machine", "plan", "quality_rank", "quality_tier",
    "spec_from_entry", "spec_from_gguf", "with_bandwidth",
]
