"""A model split across machines (llama.cpp's RPC backend): which layers go where, what
each device must hold, and how fast the whole can be. Pure functions over plain data.

llama.cpp's ``--rpc`` places a model by layers (``split_mode=layer``): the first
``n_layer + 1 - n_gpu_layers`` blocks stay on the local CPU, the rest go to the remote
devices in proportion to ``tensor_split``; the output layer counts as one more unit and
goes last. slmrun gives every device a share proportional to the memory it has free
(``split_layers``), predicts llama.cpp's assignment exactly (``assign_layers``), and
checks each device's share against its budget (``split_shares``).

A token runs through the devices one after another, so a split is never faster than one
machine with all the memory; it only makes a model fit. Each remote device also costs
network round trips per token (the graph to compute, the activations in and out).
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass
from typing import Sequence

from ..errors import InvalidArgumentError
from .memory import FIXED_OVERHEAD, MiB, kv_cache_bytes
from .quants import QUANT_FACTS
from .spec import ModelSpec

# A server's free memory is what its OS reports; it keeps this much back for itself.
REMOTE_RESERVE_MIN = 64 * MiB
REMOTE_RESERVE_SHARE = 0.05
# Per remote device and token on a gigabit LAN: about two round trips (graph_compute,
# then the activations back) of ~0.5 ms each; loopback measured 1.5-5 ms per split
# token in benchmarks/RPC.md, most of it the extra processes sharing two cores.
NETWORK_S_PER_DEVICE = 1.0e-3


@dataclass(frozen=True)
class RemoteDevice:
    """One device an RPC server offers, as the planner sees it."""

    name: str  # how the user named it: HOST:PORT (#N past a server's first device)
    free_bytes: int
    total_bytes: int = 0
    bandwidth_gbs: float | None = None  # None: not known (servers do not report it); assumed as local

    @property
    def budget(self) -> int:
        return max(0, self.free_bytes - max(REMOTE_RESERVE_MIN, int(self.free_bytes * REMOTE_RESERVE_SHARE)))


@dataclass(frozen=True)
class DeviceShare:
    device: str  # "local CPU" or a RemoteDevice's name
    blocks: int  # transformer blocks it holds
    output: bool  # whether it holds the output layer
    need_bytes: int
    budget_bytes: int

    @property
    def fits(self) -> bool:
        return self.need_bytes <= self.budget_bytes

    def to_dict(self) -> dict:
        return {**asdict(self), "fits": self.fits}


def split_layers(n_layer: int, local_free: int, device_free: Sequence[int], *,
                 use_local: bool = True) -> tuple[int, list[float]]:
    """(n_gpu_layers, tensor_split) giving each device a share of the model's n_layer + 1
    offloadable layers (the output layer counts as one) proportional to its free memory.

    The local CPU's share is the layers llama.cpp does not offload (the first ones)."""
    if n_layer < 1 or not device_free:
        raise InvalidArgumentError("a split needs at least one layer and one RPC device")
    units = n_layer + 1
    remote = sum(max(0, f) for f in device_free)
    # A server that reports no memory gets an equal share, as llama.cpp does when all are zero.
    shares = [max(0, f) / remote for f in device_free] if remote else [1 / len(device_free)] * len(device_free)
    n_local = 0
    if use_local and local_free > 0:
        n_local = round(units * local_free / (local_free + (remote or local_free * len(device_free))))
    return units - min(n_local, units), shares


def assign_layers(n_layer: int, n_gpu_layers: int, tensor_split: Sequence[float]) -> list[int]:
    """Which device llama.cpp puts each layer on (-1 = the local CPU), output layer last:
    llama_model_base::load_tensors' rule, so the planner can show the split it will get."""
    acc, cumulative = _f32(0.0), []  # llama.cpp computes in float: the same rounding decides the edges
    for s in tensor_split:
        acc = _f32(acc + _f32(s))
        cumulative.append(acc)
    cumulative = [_f32(c / acc) for c in cumulative]
    start = max(n_layer + 1 - n_gpu_layers, 0)
    active = min(n_gpu_layers, n_layer + 1)
    out = []
    for il in range(n_layer + 1):
        if il < start or il - start >= active:
            out.append(-1)
            continue
        x = _f32(_f32(il - start) / active)
        out.append(min(next((i for i, c in enumerate(cumulative) if c > x), len(cumulative)), len(cumulative) - 1))
    return out


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def table_bytes(spec: ModelSpec, quant: str, weights_bytes: int) -> int:
    """Bytes of one vocab x n_embd table (token embedding, or an untied output) at ``quant``."""
    fact = QUANT_FACTS.get(quant.upper())
    bpw = fact.bpw if fact else 8.0 * weights_bytes / max(1, spec.n_params)
    return int(spec.embedding_params * bpw / 8)


def split_shares(spec: ModelSpec, *, quant: str, weights_bytes: int, compute_bytes: int, overhead_bytes: int,
                 n_cells: int, type_k: str, type_v: str, local_budget: int, devices: Sequence[RemoteDevice],
                 use_local: bool = True) -> tuple[list[DeviceShare], int, list[float]]:
    """Each device's share of the model (local CPU first), with (n_gpu_layers, tensor_split).

    Weights: the client keeps the input embedding; the output layer (a copy of the
    embedding when they are tied, as llama.cpp loads it) goes with the last unit; the
    blocks share the rest evenly. Each device holds the KV cache of its own blocks and
    its own compute buffer (activations are per block, so each needs a whole one)."""
    n_layer = spec.block_count
    ngl, ts = split_layers(n_layer, local_budget if use_local else 0, [d.budget for d in devices],
                           use_local=use_local)
    where = assign_layers(n_layer, ngl, ts)
    table = table_bytes(spec, quant, weights_bytes)
    untied = 0 if spec.embeddings_tied else table
    per_block = max(0, weights_bytes - table - untied) / n_layer
    kv_per_block = kv_cache_bytes(spec, n_cells, type_k, type_v) / n_layer
    out: list[DeviceShare] = []
    for index, name, budget in [(-1, "local CPU", local_budget)] + [(i, d.name, d.budget) for i, d in enumerate(devices)]:
        blocks = where[:n_layer].count(index)
        output = where[n_layer] == index
        if index >= 0 and not blocks and not output:
            need = 0  # an idle device
        else:
            need = int(blocks * (per_block + kv_per_block) + (table if output else 0) + compute_bytes
                       + (table + overhead_bytes if index < 0 else FIXED_OVERHEAD))
        out.append(DeviceShare(device=name, blocks=blocks, output=output, need_bytes=need, budget_bytes=budget))
    return out, ngl, ts


def split_speed(local_tps: float, shares: Sequence[DeviceShare], devices: Sequence[RemoteDevice],
                local_gbs: float | None) -> float:
    """Tokens/s of the split: each device runs its share of the token's work in turn (at the
    local speed, scaled by its bandwidth when known), plus the network per remote device."""
    if local_tps <= 0:
        return 0.0
    total_blocks = sum(s.blocks + s.output for s in shares) or 1
    seconds = 0.0
    by_name = {d.name: d for d in devices}
    for s in shares:
        part = (s.blocks + s.output) / total_blocks
        dev = by_name.get(s.device)
        scale = (local_gbs / dev.bandwidth_gbs) if dev and dev.bandwidth_gbs and local_gbs else 1.0
        seconds += part * scale / local_tps
        if dev is not None and (s.blocks or s.output):
            seconds += NETWORK_S_PER_DEVICE
    return 1.0 / seconds


def apply_split(spec: ModelSpec, options: list, *, n_cells: int, type_k: str, type_v: str, local_budget: int,
                devices: Sequence[RemoteDevice], local_gbs: float | None, min_speed: float,
                use_local: bool = True):
    """The options re-judged for the split: an option fits when every device's share fits,
    and runs at the split's speed. Returns (options, {quant: (shares, n_gpu_layers, tensor_split)})."""
    from dataclasses import replace

    out, splits = [], {}
    for o in options:
        shares, ngl, ts = split_shares(spec, quant=o.quant, weights_bytes=o.size, compute_bytes=o.memory.compute,
                                       overhead_bytes=o.memory.overhead, n_cells=n_cells, type_k=type_k,
                                       type_v=type_v, local_budget=local_budget, devices=devices,
                                       use_local=use_local)
        splits[o.quant] = (shares, ngl, ts)
        tps = split_speed(o.estimated_tps, shares, devices, local_gbs)
        out.append(replace(o, fits=all(s.fits for s in shares), estimated_tps=tps, fast_enough=tps >= min_speed,
                           estimated_bytes=sum(s.need_bytes for s in shares)))
    return out, splits


def describe_split(shares: Sequence[DeviceShare]) -> str:
    from ..units import format_bytes
    return "; ".join(f"{s.device}: {s.blocks} block{'s' if s.blocks != 1 else ''}"
                     + (" + output" if s.output else "")
                     + f", {format_bytes(s.need_bytes)} of {format_bytes(s.budget_bytes)}"
                     + ("" if s.fits else " (over)") for s in shares)
