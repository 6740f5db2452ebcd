"""Running the measurements: load, ttft, pp/tg (llama-bench's method), e2e; ``run``."""

from __future__ import annotations

import statistics
import time
from typing import Sequence

from .records import (E2E_PROMPT, MAX_E2E_TRIES, TTFT_PROMPT, BenchConfig, Progress, Report, Row, Target,
                      _reset_peak_rss, bench_name, make_row, peak_rss)
from .setup import _check_fits, _loadavg, _tests, header, resolve_targets, sweep_configs, sweep_threads, validate
from .summary import sweep_summary


class _Steps:
    """Counts finished steps for the progress callback."""

    def __init__(self, total: int, progress: Progress | None):
        self.done, self.total, self.progress = 0, total, progress

    def __call__(self, label: str, advance: bool = True) -> None:
        if advance:
            self.done += 1
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total, label)


def bench_config(target: Target, config: BenchConfig, *, n_prompt: int, n_gen: int, reps: int,
                 n_ctx: int | None = None, full: bool = True, with_tg: bool = True, n_depth: int = 0,
                 steps: _Steps | None = None, rpc=None) -> list[Row]:
    """Load ``target`` with ``config`` and measure; one Row per test (see _tests)."""
    from ..api import load

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
    from ..runtime import measure

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
    from ..runtime import measure

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
    from ..runtime import measure

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
    from ..api import default_threads
    from ..config import flash_attn_default
    from ..hardware import detect

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
