"""What prompt-lookup drafts cost on a device: a prior for the engine and a line for `plan`.

A decode step of b tokens reads the weights once and computes b tokens' worth of matrix
products, so one more token costs its compute, ``c = 2 x parameters / FLOP rate``, against a
one-token step of ``m + c`` (m: reading the weights, planner/speed.py). ``batch_slope`` is
c / (m + c): the extra cost of a draft token as a fraction of a step. Small on a device whose
memory is slow next to its arithmetic (a Raspberry Pi 4 reading a Q8_0 model), larger on
fast-memory x86 cores. The engine starts from this figure and replaces it with the costs it
measures (runtime/speculative.py's StepCosts); `slmrun plan` shows it per device.

FLOPS_PER_CYCLE is llama.cpp's effective rate on quantized weights per core and cycle in a
batched step, not the SIMD peak: 14 on this project's AVX-512 machine (pp512 280 tokens/s of
SmolLM2-135M on 2 cores, benchmarks/SINGLE_STREAM.md); the ARM figures scale it by their
integer dot-product width (rough: the engine measures the real costs).
"""

from __future__ import annotations

from .speed import bytes_per_token, generation_rate

FLOPS_PER_CYCLE = {"x86_64": 14.0, "dotprod": 8.0, "arm": 4.0}
UNKNOWN_GHZ = 2.5  # a VM that reports no clock (or a nonsense one)


def _flop_rate(hw, threads: int) -> float:
    if hw.arch in ("x86_64", "amd64", "i686"):
        fpc = FLOPS_PER_CYCLE["x86_64"]
    else:
        fpc = FLOPS_PER_CYCLE["dotprod" if "dotprod" in hw.simd else "arm"]
    khz = max((f for f, _ in hw.clusters), default=0)
    ghz = khz / 1e6 if khz >= 500_000 else UNKNOWN_GHZ
    return max(1, threads) * ghz * 1e9 * fpc


def batch_slope(hw, spec, *, weights_bytes: int, threads: int | None = None) -> float:
    """The extra cost of one more token in a decode batch, as a fraction of a one-token step."""
    threads = threads or hw.usable_cores
    m = bytes_per_token(spec, weights_bytes=weights_bytes) / generation_rate(hw, threads)
    c = 2.0 * max(spec.n_params, 1) / _flop_rate(hw, threads)
    return round(c / (m + c), 3)


def describe_speculative(slope: float, k: int = 4) -> str:
    """One line for `plan`: what a k-token draft costs and what "auto" does with it."""
    cost = 1 + k * slope
    # With 90% of draft tokens accepted (text copied from the prompt), k drafts yield
    # 1 + 0.9 + ... + 0.9^k tokens for that cost.
    gain = sum(0.9 ** i for i in range(k + 1)) / cost
    when = ("drafts pay whenever the text repeats its input" if gain >= 1.6 else
            "drafts pay where the reply copies its input (extraction, passage answers)" if gain >= 1.15 else
            "drafts rarely pay; auto keeps them off unless measured otherwise")
    return (f"prompt lookup, auto: a step with a {k}-token draft costs ~{cost:.1f} steps here; "
            f"up to {gain:.1f}x on copied text; {when} (a lone stream only)")
