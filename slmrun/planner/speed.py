"""How fast a model generates on a machine: tokens/s from memory bandwidth.

Generating a token reads every weight once (but one row of an untied input-embedding
table) plus the KV cache written so far, so tokens/s = 1 / (bytes per token / rate +
PER_TOKEN_SECONDS). The rate comes from ``HardwareProfile.bandwidth_gbs``: a named
device's figure is already llama.cpp's effective rate (slmrun.hardware.PROFILES); this
machine's is a one-core streaming read, of which llama.cpp reaches GEN_EFFICIENCY with
enough threads, less below that (``generation_rate``). The constants' measurements and
how to repeat them: docs/CALIBRATION.md.
"""

from __future__ import annotations

import re
from dataclasses import replace

from .memory import kv_bytes_per_cell
from .spec import ModelSpec

# llama.cpp's generation reads weights at up to this fraction of the streaming bandwidth
# hardware.measure_bandwidth() reports, once enough threads run. Applied to this machine's
# measurement only (see _bandwidth_source).
GEN_EFFICIENCY = 0.86
# Sampling, detokenising and the Python loop per generated token.
PER_TOKEN_SECONDS = 0.0005
# One thread cannot dequantise and multiply as fast as DRAM delivers: each thread adds
# about a third of the bandwidth until GEN_EFFICIENCY is reached, i.e.
# rate = GEN_EFFICIENCY x bandwidth x min(1, threads / THREADS_TO_SATURATE).
THREADS_TO_SATURATE = 2.6
# When the bandwidth is unknown (not measured yet): the profile of the commonest device
# of the architecture (hardware.PROFILES).
_FALLBACK_PROFILE = {"x86_64": "laptop-8gb", "aarch64": "rpi5-8gb", "armv8l": "rpi4-4gb",
                     "armv7l": "rpi4-4gb"}


def _fallback_profile(hw):
    from .. import hardware

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
    effective rates, at the profile's performance-core count: used as they are, scaled
    only for another thread count.
    """
    from .. import hardware

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
    return read + n_past * kv_bytes_per_cell(spec, type_k, type_v)


def estimate_speed(spec: ModelSpec, *, weights_bytes: int, hw, n_threads: int | None = None,
                   n_past: int = 0, type_k: str = "f16", type_v: str | None = None) -> float:
    """Estimated generation speed (tokens/s) on `hw`: 1 / (bytes per token / rate + per-token cost)."""
    rate = generation_rate(hw, n_threads)
    seconds = bytes_per_token(spec, weights_bytes=weights_bytes, n_past=n_past, type_k=type_k,
                              type_v=type_v) / rate + PER_TOKEN_SECONDS
    return 1.0 / seconds


def with_bandwidth(hw, gbs: float):
    """`hw` with another bandwidth (for what-if plans and tests)."""
    return replace(hw, bandwidth_gbs=gbs)
