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

The package: records (what a run produces), setup (what to run), runner (measuring),
summary (reading a report).
"""

from __future__ import annotations

from .records import SCHEMA, E2E_PROMPT, TTFT_PROMPT, SWEEP_BATCHES, MAX_E2E_TRIES, Progress, Target, BenchConfig, Row, Report, mean_std, make_row, bench_name, peak_rss
from .setup import resolve_targets, validate, sweep_threads, sweep_configs, header
from .runner import bench_config, run
from .summary import sweep_summary, summarize

__all__ = ["SCHEMA", "E2E_PROMPT", "TTFT_PROMPT", "SWEEP_BATCHES", "MAX_E2E_TRIES", "Progress", "Target", "BenchConfig", "Row", "Report", "mean_std", "make_row", "bench_name", "peak_rss", "resolve_targets", "validate", "sweep_threads", "sweep_configs", "header", "bench_config", "run", "sweep_summary", "summarize"]
