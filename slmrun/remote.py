"""Models split across machines: what ``load(..., rpc=...)``, ``plan --rpc`` and ``hw --rpc``
ask of the RPC servers, and the split they share with the planner.

The planner (planner.split) decides the split from each device's budget; the runtime
(runtime.rpc) connects llama.cpp to the servers and applies it. This module is the
edge between them: it asks the servers what they have, in slmrun's own short
connections with deadlines, so nothing llama.cpp does can hang or abort on the way.
"""

from __future__ import annotations

from typing import Iterable

from .errors import InsufficientMemoryError
from .units import format_bytes


def endpoints(rpc: str | Iterable[str]):
    from .runtime.rpc import parse_endpoints, require_rpc

    eps = parse_endpoints(rpc)
    require_rpc()
    return eps


def remote_devices(eps, *, timeout: float | None = None):
    """One planner.RemoteDevice per device the servers offer, in llama.cpp's order."""
    from .planner import RemoteDevice
    from .runtime.rpc import survey

    out = []
    for ep, memory in survey(eps, timeout):
        for i, (free, total) in enumerate(memory):
            out.append(RemoteDevice(name=str(ep) if i == 0 else f"{ep}#{i}", free_bytes=int(free),
                                    total_bytes=int(total)))
    return out


def split_for_load(info, options, hw, devices, *, name: str, force: bool):
    """(n_gpu_layers, tensor_split, shares) for loading ``info`` with ``options`` across this
    machine and ``devices``; InsufficientMemoryError when a share does not fit, unless ``force``."""
    from .planner import budget_bytes, estimate_memory, spec_from_gguf
    from .planner.split import describe_split, split_shares

    spec = spec_from_gguf(info)
    mem = estimate_memory(spec, weights_bytes=info.size, n_ctx=options.n_ctx, n_batch=options.n_batch,
                          n_ubatch=options.n_ubatch, type_k=options.type_k or "f16", type_v=options.type_v or "f16",
                          flash_attn=options.flash_attn, n_parallel=options.n_parallel)
    shares, ngl, ts = split_shares(spec, quant=info.quant or "", weights_bytes=info.size, compute_bytes=mem.compute,
                                   overhead_bytes=mem.overhead, n_cells=options.n_ctx * options.n_parallel,
                                   type_k=options.type_k or "f16", type_v=options.type_v or "f16",
                                   local_budget=budget_bytes(hw), devices=devices)
    if not force and not all(s.fits for s in shares):
        raise InsufficientMemoryError(
            f"{name} does not fit split across this machine and {len(devices)} RPC device"
            f"{'s' if len(devices) != 1 else ''} at a context of {options.n_ctx} tokens: {describe_split(shares)}",
            hint=f"Add a server, use a smaller quant or --ctx (`slmrun plan {name} --rpc ...` compares them), "
                 "or --force to load anyway.")
    return ngl, ts, shares


def place(path, eps, split):
    """Connect llama.cpp to the servers and put the layers where ``split`` says (runtime.rpc.Placement)."""
    from .runtime import rpc

    return rpc.place(path, eps, split=split)


def describe_devices(eps, devices) -> list[str]:
    """Lines for `hw --rpc`: each device's memory, and the pool."""
    lines = [f"{d.name}: {format_bytes(d.free_bytes)} free of {format_bytes(d.total_bytes)}, "
             f"budget {format_bytes(d.budget)}" for d in devices]
    lines.append(f"pooled over {len(eps)} server{'s' if len(eps) != 1 else ''}: "
                 f"{format_bytes(sum(d.budget for d in devices))} for model layers (plus this machine's)")
    return lines
