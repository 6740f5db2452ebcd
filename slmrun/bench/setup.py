"""What to run: the models, checked settings, the thread and configuration sweeps, the report's header."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import ContextOverflowError, InvalidArgumentError
from .records import SWEEP_BATCHES, BenchConfig, Target, bench_name


def resolve_targets(refs: Sequence[str] | None, *, all_local: bool = False) -> list[Target]:
    """The model files for ``-m`` references (default: the default model). With
    ``all_local``, every quant of each named model that is in the local store."""
    from .. import config, store
    from ..api import looks_like_path, resolve
    from ..registry import split_ref

    targets: list[Target] = []
    for ref in list(refs or []) or [config.default_model()]:
        resolved = resolve(ref)  # raises the usual not-found / not-pulled errors
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


def _tests(n_prompt: int, n_gen: int, full: bool, with_tg: bool, n_depth: int = 0) -> list[str]:
    tests = ["load"] + (["ttft"] if full else []) + [bench_name("pp", n_prompt, n_depth)]
    tests += [bench_name("tg", n_gen, n_depth)] if with_tg else []
    return tests + ([f"e2e{n_gen}"] if full else [])


def header(*, n_prompt: int, n_gen: int, reps: int, n_ctx: int | None, threads: Sequence[int],
           sweep: bool, profile=None, n_depth: int = 0) -> dict:
    from importlib import metadata

    from .. import __version__
    from ..hardware import detect, parse_llama_system_info
    from ..runtime import system_info

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
