"""How many requests to decode together (slots): as many as the memory allows, up to a few."""

from __future__ import annotations

from dataclasses import dataclass

from ..units import format_bytes
from .memory import budget_bytes, estimate_memory, kv_cache_bytes
from .spec import ModelSpec

MAX_AUTO_PARALLEL = 4  # llama-server's automatic slot count; past it a CPU gains little


@dataclass(frozen=True)
class ParallelChoice:
    n_parallel: int
    estimated_bytes: int  # memory with that many slots
    reason: str


def choose_parallel(spec: ModelSpec, *, weights_bytes: int, n_ctx: int, hw, n_batch: int = 512,
                    type_k: str = "f16", type_v: str | None = "f16", flash_attn: bool = True,
                    reserve_bytes: int | None = None, upper: int = MAX_AUTO_PARALLEL) -> ParallelChoice:
    """The slots for `hw`: as many as fit, up to `upper`.

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
    per_slot = format_bytes(kv_cache_bytes(spec, n_ctx, type_k, type_v))
    if not spec.has_kv_cache:  # an encoder: a slot is a text in the batch, it keeps no cache
        return ParallelChoice(n, need(n), f"{n} sequence{'s' if n != 1 else ''} of up to {n_ctx} tokens per batch "
                                          f"(no KV cache: {format_bytes(need(n))} in all)")
    if n == upper:
        reason = (f"{n} parallel slots (the most slmrun sets by itself), each a {n_ctx}-token context "
                  f"with {per_slot} of KV cache: {format_bytes(need(n))} in all")
    elif n == 1:
        reason = (f"1 slot: a second {n_ctx}-token context ({per_slot} of KV cache) would use more than half "
                  f"of the {format_bytes(max(0, budget - one))} left over; requests queue")
    else:
        reason = (f"{n} parallel slots of {n_ctx} tokens ({per_slot} of KV cache each): more would use over "
                  "half of the memory left after the model")
    return ParallelChoice(n, need(n), reason)
