"""Benchmarks: tokens/s people can trust, measured the way llama.cpp measures them.

Per model x quant x configuration (threads, flash attention, batch size) ``run()``
measures:

- ``load``   wall time of ``slmrun.load()`` (GGUF validation + llama.cpp's load);
- ``ttft``   time to first token of a short chat prompt (template, prompt eval, sampling);
- ``pp<P>``  prompt processing: P random tokens decoded in batches of n_batch;
- ``tg<N>``  token generation: N single-token decodes, no sampling;
  with ``n_depth`` D, both after D tokens already in the KV cache (``pp<P>@d<D>``,
  ``tg<N>@d<D>``, llama-bench's ``-d``): how fast a long conversation runs;
- ``e2e<N>`` slmrun's real generation path (``Model.chat``, streamed: sampling,
  detokenising, streaming), tokens after the first / time after the first;

pp and tg follow llama-bench (llama.cpp tools/llama-bench): a warm-up run, then
``reps`` repetitions, the KV cache cleared before each, reported as the mean and
sample standard deviation of the per-repetition rates. Nothing here prints; pass
``progress`` to follow along.

JSON schema (``Report.to_dict()``, ``slmrun bench --json``), version ``slmrun.bench/1``.
Fields are only ever added within a version::

    {
      "schema": "slmrun.bench/1",
      "header": {
        "slmrun_version": "0.1.0", "llama_cpp_python_version": "0.3.36",
        "timestamp": "2025-01-01T00:00:00+00:00",       # UTC, start of the run
        "machine": {...},                                # slmrun.hardware.HardwareProfile.to_dict()
        "llama_cpp": {"system_info": "CPU : AVX2 = 1 | ...", "features": ["avx2", ...]},
        "settings": {"n_prompt": 512, "n_gen": 128, "n_depth": 0, "reps": 5, "n_ctx": null,
                     "threads": [2], "sweep": false},
        "load_avg_start": [1.0, 0.8, 0.5], "load_avg_end": [...]   # os.getloadavg(): how busy
      },
      "results": [                                       # one row per configuration x test
        {"model": "smollm2-135m", "quant": "Q4_1", "path": "/.../x.gguf", "file_size": 98362432,
         "n_threads": 2, "flash_attn": true, "n_batch": 512, "n_ctx": 4096,
         "test": "tg128",                                # load | ttft | pp<P>[@d<D>] | tg<N>[@d<D>] | e2e<N>
         "n_tokens": 128,                                # tokens per repetition (ttft: prompt tokens)
         "reps": 5, "unit": "tok/s",                     # "tok/s" (pp, tg, e2e) or "s" (load, ttft)
         "samples": [150.1, ...],                        # per repetition, in `unit`
         "samples_s": [0.85, ...],                       # per repetition, seconds
         "mean_tps": 150.3, "std_tps": 1.2,              # null for load and ttft
         "mean_s": 0.85, "std_s": 0.01,
         "peak_rss": 190000000,                          # bytes, peak of the process over this configuration
         "n_depth": 0}                                   # tokens in the KV cache before each pp/tg repetition
      ],
      "sweep": null | {                                  # with --sweep, per model:quant
        "smollm2-135m:Q4_1": {"default": CONFIG, "best_pp": CONFIG, "best_tg": CONFIG,
                              "default_vs_best": {"pp": 0.98, "tg": 1.0},
                              "recommended": {"n_threads": 2, "flash_attn": true, "n_batch": 512}}
      }
    }

where CONFIG is {"n_threads", "flash_attn", "n_batch", "pp_tps", "tg_tps"}. ``summarize()``
turns the rows into one ranked line per model x quant x configuration.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .errors import ContextOverflowError, InvalidArgumentError

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


# ---------------------------------------------------------------- statistics

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


# ---------------------------------------------------------------- peak RSS

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


# ---------------------------------------------------------------- inputs

def resolve_targets(refs: Sequence[str] | None, *, all_local: bool = False) -> list[Target]:
    """The model files for ``-m`` references (default: the default model). With
    ``all_local``, every quant of each named model that is in the local store."""
    from . import config, store
    from .api import looks_like_path, resolve
    from .registry import split_ref

    targets: list[Target] = []
    for ref in list(refs or []) or [config.default_model()]:
        resolved = resolve(ref)  # raises the usual not-found / not-pulled errors
        if resolved.custom is not None:  # a created model: its base file with its adapters and settings
            if all(t.ref != resolved.name for t in targets):
                targets.append(Target(name=resolved.name, quant=resolved.quant, path=Path(resolved.path),
                                      size=_size(resolved.path), ref=resolved.name))
            continue
        is_path = looks_like_path(ref) or resolved.quant is None
        files = [(resolved.path, resolved.quant)]
        if all_local and not is_path:
            stored = store.find(resolved.name) or store.find(split_ref(ref)[0])
            files = [(m.path, m.quant) for m in stored] or files
        for path, quant in files:
            if all(t.path != path for t in targets):
                load_ref = str(path) if is_path else f"{resolved.name}:{quant.lower()}"
                targets.append(Target(name=resolved.name, quant=quant, path=Path(path), size=_size(path),
                                      ref=load_ref))
    return targets


def _size(path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def validate(*, n_prompt: int, n_gen: int, reps: int, threads: Iterable[int] | None, n_ctx: int | None,
             max_threads: int, n_depth: int = 0) -> None:
    """Reject bad sizes before anything is loaded."""
    for name, value in (("-p (prompt tokens)", n_prompt), ("-n (generated tokens)", n_gen),
                        ("-r (repetitions)", reps)):
        if value < 1:
            raise InvalidArgumentError(f"{name} must be at least 1, got {value}")
    if n_depth < 0:
        raise InvalidArgumentError(f"-d (depth) must be 0 or more, got {n_depth}")
    for t in threads or ():
        if not 1 <= t <= max_threads:
            raise InvalidArgumentError(f"--threads {t}: this machine has {max_threads} cores",
                                       hint=f"Use thread counts between 1 and {max_threads}.")
    if n_ctx is not None:
        if n_ctx < 16:
            raise InvalidArgumentError(f"--ctx {n_ctx} is too small", hint="Use at least 16.")
        _check_fits(n_prompt, n_gen, n_ctx, n_depth)


def _check_fits(n_prompt: int, n_gen: int, n_ctx: int, n_depth: int = 0) -> None:
    if n_depth + max(n_prompt, n_gen) > n_ctx:
        which = f"-p {n_prompt}" if n_prompt >= n_gen else f"-n {n_gen}"
        which += f" after -d {n_depth}" if n_depth else ""
        raise ContextOverflowError(f"{which} tokens do not fit the context of {n_ctx} tokens",
                                   hint="Use a smaller size, or raise the context with --ctx.")


def sweep_threads(logical: int, physical: int, performance: int) -> list[int]:
    """Thread counts worth trying: 1, powers of two, the performance/physical/logical core counts."""
    counts = {1, performance, physical, logical}
    p = 2
    while p < logical:
        counts.add(p)
        p *= 2
    return sorted(c for c in counts if 1 <= c <= logical)


def sweep_configs(threads: Sequence[int], n_prompt: int, default_batch: int = 512) -> list[BenchConfig]:
    # Batches smaller than the prompt change how pp is split; larger ones change nothing.
    batches = sorted({b for b in SWEEP_BATCHES if b < n_prompt} | {default_batch})
    return [BenchConfig(t, fa, b) for t in threads for fa in (True, False) for b in batches]


# ---------------------------------------------------------------- measuring

class _Steps:
    """Counts finished steps for the progress callback."""

    def __init__(self, total: int, progress: Progress | None):
        self.done, self.total, self.progress = 0, total, progress

    def __call__(self, label: str, advance: bool = True) -> None:
        if advance:
            self.done += 1
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total, label)


def _tests(n_prompt: int, n_gen: int, full: bool, with_tg: bool, n_depth: int = 0) -> list[str]:
    tests = ["load"] + (["ttft"] if full else []) + [bench_name("pp", n_prompt, n_depth)]
    tests += [bench_name("tg", n_gen, n_depth)] if with_tg else []
    return tests + ([f"e2e{n_gen}"] if full else [])


def bench_config(target: Target, config: BenchConfig, *, n_prompt: int, n_gen: int, reps: int,
                 n_ctx: int | None = None, full: bool = True, with_tg: bool = True, n_depth: int = 0,
                 steps: _Steps | None = None, rpc=None) -> list[Row]:
    """Load ``target`` with ``config`` and measure; one Row per test (see _tests)."""
    from .api import load

    steps = steps or _Steps(0, None)
    where = f"{target.name}{':' + target.quant.lower() if target.quant else ''} {config.label()}"
    _reset_peak_rss()
    steps(f"{where}: loading", advance=False)
    t0 = time.perf_counter()
    # One slot: llama-bench measures one sequence, and so does slmrun's single-stream figure.
    model = load(target.load_ref(), n_ctx=n_ctx, n_threads=config.n_threads, flash_attn=config.flash_attn,
                 n_batch=config.n_batch, n_parallel=1, rpc=rpc)
    load_s = time.perf_counter() - t0
    with model:
        quant = target.quant or (model.info.quant if model.info else None)
        target = Target(target.name, quant, target.path, target.size, target.ref)
        ctx = _n_ctx(model)
        _check_fits(n_prompt, n_gen, ctx, n_depth)
        rows = [make_row(target, config, ctx, "load", 0, [load_s])]
        steps(f"{where}: loaded in {load_s:.2f}s")
        if full:
            rows.append(_ttft(model, target, config, reps, steps, where))
        rows.append(_raw(model, target, config, "pp", n_prompt, reps, steps, where, n_depth))
        if with_tg:
            rows.append(_raw(model, target, config, "tg", n_gen, reps, steps, where, n_depth))
        if full:
            rows.append(_e2e(model, target, config, n_gen, reps, steps, where))
    rss = peak_rss()
    for row in rows:
        row.peak_rss = rss
    return rows


def _n_ctx(model) -> int:
    # llama.cpp may round the context up (to 256); what slmrun asked for is what is usable.
    return min(model.n_ctx, model.options.n_ctx)


def _raw(model, target, config, kind, n, reps, steps, where, n_depth=0) -> Row:
    from .runtime import measure

    run = measure.bench_pp if kind == "pp" else measure.bench_tg
    kwargs = {"n_batch": config.n_batch} if kind == "pp" else {}
    name = bench_name(kind, n, n_depth)

    def fresh():  # an empty cache, or one holding n_depth tokens (not timed)
        measure.clear_kv(model)
        if n_depth:
            measure.bench_pp(model, n_depth, n_batch=config.n_batch, seed=0)

    steps(f"{where}: {name} warm-up", advance=False)
    fresh()
    run(model, n if kind == "pp" else 1, **kwargs)  # llama-bench warms up with a full pp, one tg token
    seconds = []
    for i in range(reps):
        steps(f"{where}: {name} {i + 1}/{reps}", advance=False)
        fresh()
        seconds.append(run(model, n, seed=i + 1, **kwargs))
    measure.clear_kv(model)
    row = make_row(target, config, _n_ctx(model), name, n, seconds, n_depth=n_depth)
    steps(f"{where}: {name} {row.mean_tps:.1f} tok/s")
    return row


def _reply(model, text: str, **kwargs):
    """Chat as a user would; a model with no chat format gets the text as a plain prompt."""
    if model.has_chat_format:
        return model.chat([{"role": "user", "content": text}], **kwargs)
    return model.complete(text, **kwargs)


def _prompt_tokens(model, text: str) -> int:
    if model.has_chat_format:
        return len(model.chat_tokens([{"role": "user", "content": text}]))
    return len(model.tokenize(text, special=False))


def _ttft(model, target, config, reps, steps, where) -> Row:
    from .runtime import measure

    n_prompt = _prompt_tokens(model, TTFT_PROMPT)
    seconds = []
    for i in range(reps + 1):  # the first is the warm-up
        steps(f"{where}: ttft {i}/{reps}", advance=False)
        measure.clear_kv(model)  # a cached prompt would make the first token free
        response = _reply(model, TTFT_PROMPT, max_tokens=4, temperature=0.0)
        if i:
            seconds.append(response.stats.ttft_s)
    measure.clear_kv(model)
    steps(f"{where}: ttft {statistics.fmean(seconds) * 1000:.0f} ms")
    return make_row(target, config, _n_ctx(model), "ttft", n_prompt, seconds)


def _generate_once(model, n_gen, seed):
    response = _reply(model, E2E_PROMPT, max_tokens=n_gen, seed=seed)
    for _ in response:  # the pieces a user would see, as they come; only the timing counts
        pass
    return response.stats


def _e2e(model, target, config, n_gen, reps, steps, where) -> Row:
    from .runtime import measure

    steps(f"{where}: e2e{n_gen} warm-up", advance=False)
    measure.clear_kv(model)
    _generate_once(model, min(n_gen, 8), seed=0)
    seconds, counts = [], []
    for i in range(reps):
        steps(f"{where}: e2e{n_gen} {i + 1}/{reps}", advance=False)
        for attempt in range(MAX_E2E_TRIES):  # a reply that ends early is a short sample: try another seed
            measure.clear_kv(model)
            stats = _generate_once(model, n_gen, seed=1000 * attempt + i + 1)
            if stats.generated_tokens >= n_gen:
                break
        if stats.generated_tokens > 1 and stats.gen_s > 0:
            seconds.append(stats.gen_s)
            counts.append(stats.generated_tokens - 1)  # Stats.gen_tps: tokens after the first
    measure.clear_kv(model)
    if not seconds:  # a model that will not talk: report zero rather than fail the whole run
        seconds, counts = [0.0], [0]
    row = make_row(target, config, _n_ctx(model), f"e2e{n_gen}", n_gen, seconds, rate_tokens=counts)
    steps(f"{where}: e2e{n_gen} {row.mean_tps:.1f} tok/s")
    return row


# ---------------------------------------------------------------- the run

def header(*, n_prompt: int, n_gen: int, reps: int, n_ctx: int | None, threads: Sequence[int],
           sweep: bool, profile=None, n_depth: int = 0) -> dict:
    from importlib import metadata

    from . import __version__
    from .hardware import detect, parse_llama_system_info
    from .runtime import system_info

    profile = profile or detect()
    info = system_info()
    try:
        lcp = metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        lcp = None
    return {
        "slmrun_version": __version__, "llama_cpp_python_version": lcp,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": profile.to_dict(),
        "llama_cpp": {"system_info": info.strip(), "features": list(parse_llama_system_info(info))},
        "settings": {"n_prompt": n_prompt, "n_gen": n_gen, "n_depth": n_depth, "reps": reps, "n_ctx": n_ctx,
                     "threads": list(threads), "sweep": sweep},
        "load_avg_start": _loadavg(), "load_avg_end": None,
    }


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def run(refs: Sequence[str] | None = None, *, n_prompt: int = 512, n_gen: int = 128, reps: int = 5,
        threads: Sequence[int] | None = None, n_ctx: int | None = None, all_local: bool = False,
        sweep: bool = False, n_depth: int = 0, progress: Progress | None = None,
        rpc: str | Sequence[str] | None = None) -> Report:
    """Benchmark each model (and quant) at each thread count; see the module docstring.

    ``threads`` defaults to slmrun's default (the performance cores); with ``sweep``, to
    the counts ``sweep_threads()`` picks, each with flash attention on and off and
    several batch sizes, and the report says which configuration is fastest. ``rpc``
    splits each model across those RPC servers, as ``load(rpc=...)`` does.
    """
    from .api import default_threads
    from .config import flash_attn_default
    from .hardware import detect

    profile = detect()
    max_threads = max(profile.logical_cores, 1)
    validate(n_prompt=n_prompt, n_gen=n_gen, reps=reps, threads=threads, n_ctx=n_ctx, max_threads=max_threads,
             n_depth=n_depth)
    targets = resolve_targets(refs, all_local=all_local)
    default = BenchConfig(default_threads(profile), flash_attn_default())
    if sweep:
        counts = list(threads) if threads else sweep_threads(max_threads, profile.physical_cores,
                                                             profile.performance_cores)
        configs = sweep_configs(counts, n_prompt, default.n_batch)
        if default not in configs:
            configs.append(default)
    else:
        counts = list(threads) if threads else [default.n_threads]
        configs = [BenchConfig(t, default.flash_attn) for t in counts]
    plan = [(t, c, not sweep or c == default, not sweep or c.n_batch == default.n_batch)
            for t in targets for c in configs]
    steps = _Steps(sum(len(_tests(n_prompt, n_gen, full, tg)) for _, _, full, tg in plan), progress)
    report = Report(header(n_prompt=n_prompt, n_gen=n_gen, reps=reps, n_ctx=n_ctx, threads=counts,
                           sweep=sweep, profile=profile, n_depth=n_depth))
    if rpc is not None:
        report.header["settings"]["rpc"] = rpc if isinstance(rpc, str) else ",".join(rpc)
    for target, config, full, with_tg in plan:
        report.results += bench_config(target, config, n_prompt=n_prompt, n_gen=n_gen, reps=reps, n_ctx=n_ctx,
                                       full=full, with_tg=with_tg, n_depth=n_depth, steps=steps, rpc=rpc)
    if sweep:
        report.sweep = sweep_summary(report.results, default, n_prompt=n_prompt, n_gen=n_gen, n_depth=n_depth)
    report.header["load_avg_end"] = _loadavg()
    return report


def sweep_summary(rows: Sequence[Row], default: BenchConfig, *, n_prompt: int, n_gen: int,
                  n_depth: int = 0) -> dict:
    """Per model:quant, the fastest configuration for pp and for tg, and how close the defaults come.

    tg does not depend on the batch size, so a configuration's tg is the one measured
    at its thread count and flash-attention setting.
    """
    out = {}
    for key in dict.fromkeys(f"{r.model}:{r.quant}" for r in rows):
        mine = [r for r in rows if f"{r.model}:{r.quant}" == key]
        pp = {r.config: r.mean_tps for r in mine if r.test == bench_name("pp", n_prompt, n_depth)}
        tg_by = {(r.n_threads, r.flash_attn): r.mean_tps for r in mine if r.test == bench_name("tg", n_gen, n_depth)}
        if not pp or not tg_by:
            continue

        def entry(c: BenchConfig) -> dict:
            return {"n_threads": c.n_threads, "flash_attn": c.flash_attn, "n_batch": c.n_batch,
                    "pp_tps": pp.get(c), "tg_tps": tg_by.get((c.n_threads, c.flash_attn))}

        best_pp = max(pp, key=pp.get)
        best_tg_key = max(tg_by, key=tg_by.get)
        best_tg = BenchConfig(best_tg_key[0], best_tg_key[1], default.n_batch)
        # Recommended: tg's threads and flash attention, then the best batch size for those.
        same = {c: v for c, v in pp.items() if (c.n_threads, c.flash_attn) == best_tg_key}
        rec = max(same, key=same.get) if same else best_tg
        d = entry(default)
        out[key] = {
            "default": d, "best_pp": entry(best_pp), "best_tg": entry(best_tg),
            "default_vs_best": {"pp": _ratio(d["pp_tps"], pp[best_pp]), "tg": _ratio(d["tg_tps"], tg_by[best_tg_key])},
            "recommended": {"n_threads": rec.n_threads, "flash_attn": rec.flash_attn, "n_batch": rec.n_batch},
        }
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a and b else None


# ---------------------------------------------------------------- summary

def summarize(report: Report | dict) -> list[dict]:
    """One line per model x quant x configuration, ranked by generation speed (tg),
    then prompt speed: what the tables show. ``roofline`` is tg as a fraction of
    the machine's bandwidth / model bytes, when the bandwidth is known."""
    data = report.to_dict() if isinstance(report, Report) else report
    bandwidth = (data["header"].get("machine") or {}).get("bandwidth_gbs")
    lines: dict[tuple, dict] = {}
    for r in data["results"]:
        key = (r["model"], r["quant"], r["n_threads"], r["flash_attn"], r["n_batch"])
        line = lines.setdefault(key, {
            "model": r["model"], "quant": r["quant"], "file_size": r["file_size"], "n_threads": r["n_threads"],
            "flash_attn": r["flash_attn"], "n_batch": r["n_batch"], "pp_tps": None, "pp_std": None,
            "tg_tps": None, "tg_std": None, "e2e_tps": None, "e2e_std": None, "ttft_s": None, "load_s": None,
            "peak_rss": r.get("peak_rss"), "roofline": None})
        kind = re.match(r"[a-z]+", r["test"]).group(0)  # pp512@d1024 -> pp
        if kind in ("pp", "tg", "e2e"):
            line[f"{kind}_tps"], line[f"{kind}_std"] = r["mean_tps"], r["std_tps"]
        else:
            line[f"{kind}_s"] = r["mean_s"]
    out = list(lines.values())
    for line in out:
        if bandwidth and line["tg_tps"] and line["file_size"]:
            line["roofline"] = round(line["tg_tps"] * line["file_size"] / (bandwidth * 1e9), 3)
    out.sort(key=lambda x: (-(x["tg_tps"] or 0), -(x["pp_tps"] or 0)))
    for i, line in enumerate(out, 1):
        line["rank"] = i
    return out
