"""What a benchmark run produces: targets, configurations, result rows, the report; the prompts."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence


SCHEMA = "slmrun.bench/1"


# A chat prompt that makes small instruct models write on for well over 128 tokens.
E2E_PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."


TTFT_PROMPT = "Hello! What can you do?"


SWEEP_BATCHES = (128, 256, 512)


MAX_E2E_TRIES = 4  # seeds tried when a reply ends before n tokens


Progress = Callable[[int, int, str], None]  # (steps done, steps in all, what runs now)


@dataclass(frozen=True)
class Target:
    """One model file to measure."""

    name: str
    quant: str | None
    path: Path
    size: int
    ref: str = ""  # what slmrun.load() gets: name:quant keeps the registry's prompt format

    def load_ref(self) -> str:
        return self.ref or str(self.path)


@dataclass(frozen=True)
class BenchConfig:
    n_threads: int
    flash_attn: bool = True
    n_batch: int = 512

    def label(self) -> str:
        return f"t={self.n_threads} fa={'on' if self.flash_attn else 'off'} b={self.n_batch}"


@dataclass
class Row:
    model: str
    quant: str | None
    path: str
    file_size: int
    n_threads: int
    flash_attn: bool
    n_batch: int
    n_ctx: int
    test: str
    n_tokens: int
    reps: int
    unit: str
    samples: list[float]
    samples_s: list[float]
    mean_tps: float | None
    std_tps: float | None
    mean_s: float
    std_s: float
    peak_rss: int | None = None
    n_depth: int = 0

    @property
    def config(self) -> BenchConfig:
        return BenchConfig(self.n_threads, self.flash_attn, self.n_batch)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Report:
    header: dict
    results: list[Row] = field(default_factory=list)
    sweep: dict | None = None

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "header": self.header, "results": [r.to_dict() for r in self.results],
                "sweep": self.sweep}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    # llama-bench's avg_ts / stdev_ts: the sample standard deviation, 0 for one value.
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def make_row(target: Target, config: BenchConfig, n_ctx: int, test: str, n_tokens: int,
             seconds: Sequence[float], *, rate_tokens: Sequence[int] | None = None, n_depth: int = 0) -> Row:
    """A row from per-repetition durations. Rate tests give the tokens each duration
    covers (``rate_tokens``, default ``n_tokens`` each); time tests give None."""
    mean_s, std_s = mean_std(seconds)
    if test in ("load", "ttft"):
        unit, samples, mean_tps, std_tps = "s", list(seconds), None, None
    else:
        counts = rate_tokens or [n_tokens] * len(seconds)
        samples = [c / s if s > 0 else 0.0 for c, s in zip(counts, seconds)]
        unit, (mean_tps, std_tps) = "tok/s", mean_std(samples)
    return Row(model=target.name, quant=target.quant, path=str(target.path), file_size=target.size,
               n_threads=config.n_threads, flash_attn=config.flash_attn, n_batch=config.n_batch, n_ctx=n_ctx,
               test=test, n_tokens=n_tokens, reps=len(seconds), unit=unit, samples=samples,
               samples_s=list(seconds), mean_tps=mean_tps, std_tps=std_tps, mean_s=mean_s, std_s=std_s,
               n_depth=n_depth)


def bench_name(kind: str, n: int, n_depth: int = 0) -> str:
    """llama-bench's names: pp512, tg128, tg128@d1024."""
    return f"{kind}{n}" + (f"@d{n_depth}" if n_depth and kind in ("pp", "tg") else "")


def _reset_peak_rss() -> bool:
    # Linux resets VmHWM when "5" is written to clear_refs: a per-configuration peak.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int | None:
    """The process's peak resident memory in bytes (since the last reset, on Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
        import sys
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # macOS says bytes, Linux KiB
    except (ImportError, OSError):
        return None
