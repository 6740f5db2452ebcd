"""`slmrun bench`: tokens/s people can trust.

Parses the options, runs slmrun.bench with a progress display on stderr, and prints a
ranked table (or --json / --csv / --md). The JSON is the stable interface for
scripts; its schema is in the slmrun.bench package's docstring.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from typing import List, Optional

import typer

from ..errors import InvalidArgumentError
from ..units import format_bytes
from . import app
from .rpc import rpc_option

CSV_FIELDS = ("model", "quant", "path", "file_size", "n_threads", "flash_attn", "n_batch", "n_ctx", "test",
              "n_tokens", "n_depth", "reps", "unit", "mean_tps", "std_tps", "mean_s", "std_s", "peak_rss", "samples")


def parse_threads(text: Optional[str]) -> Optional[list[int]]:
    """"1,2,4" -> [1, 2, 4]."""
    if text is None or not text.strip():
        return None
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidArgumentError(f"--threads {text!r} is not a list of numbers", hint="Example: --threads 1,2,4")
    if not values:
        raise InvalidArgumentError("--threads is empty", hint="Example: --threads 1,2,4")
    return list(dict.fromkeys(values))


def expand_quants(models: list[str], quants: Optional[str]) -> tuple[list[str], bool]:
    """-m NAME with --quants q4_k_m,q8_0 -> NAME:q4_k_m, NAME:q8_0; 'all-local' -> a flag."""
    if not quants:
        return models, False
    if quants.strip().lower() in ("all-local", "all_local", "local"):
        return models, True
    wanted = [q.strip().lower() for q in quants.split(",") if q.strip()]
    from .. import config
    names = [m.split(":", 1)[0] for m in models] or [config.default_model()]
    return [f"{n}:{q}" for n in dict.fromkeys(names) for q in wanted], False


# ------------------------------------------------------------------ formatting

def _num(x, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def _pm(mean, std) -> str:
    return "-" if mean is None else f"{mean:.1f} ± {std or 0:.1f}"


def _threads(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def table_rows(data: dict) -> tuple[list[str], list[list[str]]]:
    from ..bench import bench_name, summarize

    s = data["header"]["settings"]
    p, n, d = s["n_prompt"], s["n_gen"], s.get("n_depth") or 0
    head = ["#", "model", "quant", "size", "threads", "fa", "batch", f"{bench_name('pp', p, d)} t/s",
            f"{bench_name('tg', n, d)} t/s",
            f"e2e{n} t/s", "ttft", "load", "peak RSS", "roofline"]
    body = [[str(x["rank"]), x["model"], x["quant"] or "-", format_bytes(x["file_size"] or None, unknown="-"), str(x["n_threads"]),
             "on" if x["flash_attn"] else "off", str(x["n_batch"]), _pm(x["pp_tps"], x["pp_std"]),
             _pm(x["tg_tps"], x["tg_std"]), _pm(x["e2e_tps"], x["e2e_std"]),
             "-" if x["ttft_s"] is None else f"{x['ttft_s'] * 1000:.0f} ms",
             "-" if x["load_s"] is None else f"{x['load_s']:.2f} s", format_bytes(x["peak_rss"] or None, unknown="-"),
             "-" if x["roofline"] is None else f"{x['roofline']:.0%}"]
            for x in summarize(data)]
    return head, body


def header_lines(data: dict) -> list[str]:
    h = data["header"]
    m = h.get("machine") or {}
    bw = m.get("bandwidth_gbs")
    lines = [
        f"machine:   {m.get('cpu_model', '?')} ({m.get('arch', '?')}), {m.get('physical_cores', '?')} cores "
        f"({m.get('performance_cores', '?')} performance, {m.get('logical_cores', '?')} logical), "
        f"{format_bytes(m.get('ram_total'))} RAM" + (f", {bw:.1f} GB/s read" if bw else ""),
        f"llama.cpp: llama-cpp-python {h.get('llama_cpp_python_version')}, "
        f"{', '.join(h['llama_cpp']['features']) or 'no CPU features reported'}",
        f"slmrun {h.get('slmrun_version')}, {h.get('timestamp')}; load average "
        f"{_loads(h.get('load_avg_start'))} at start, {_loads(h.get('load_avg_end'))} at end",
    ]
    s = h["settings"]
    lines.append(f"method:    llama-bench's: {s['reps']} repetitions after a warm-up, KV cache cleared each time; "
                 "mean ± std dev")
    return lines


def _loads(v) -> str:
    return "?" if not v else "/".join(f"{x:.2f}" for x in v)


def sweep_lines(data: dict) -> list[str]:
    out = []
    for key, s in (data.get("sweep") or {}).items():
        best, d, r = s["best_tg"], s["default"], s["recommended"]
        ratio = s["default_vs_best"]
        out += [
            f"{key}: fastest generation with {_threads(best['n_threads'])}, flash attention "
            f"{'on' if best['flash_attn'] else 'off'} ({_num(best['tg_tps'])} tok/s); fastest prompt "
            f"processing with {_threads(s['best_pp']['n_threads'])}, fa {'on' if s['best_pp']['flash_attn'] else 'off'}, "
            f"batch {s['best_pp']['n_batch']} ({_num(s['best_pp']['pp_tps'])} tok/s).",
            f"  slmrun's defaults ({_threads(d['n_threads'])}, fa on, batch {d['n_batch']}) reach "
            f"{_num(ratio['tg'], '.2f')}x of the best tg and {_num(ratio['pp'], '.2f')}x of the best pp.",
            f"  Recommended: --threads {r['n_threads']}"
            + ("" if r["flash_attn"] else " (flash attention off)") + f", batch {r['n_batch']}.",
        ]
    return out


def format_text(data: dict, *, tty: bool = False) -> str:
    from .output import render_table

    head, body = table_rows(data)
    numbers = [i for i in range(len(head)) if i not in (1, 2)]  # all but model and quant
    parts = header_lines(data) + ["", render_table(head, body, right=numbers, tty=tty)]
    sweep = sweep_lines(data)
    return "\n".join(parts + ([""] + sweep if sweep else []))


def format_markdown(data: dict) -> str:
    head, body = table_rows(data)
    out = [f"- {x}" for x in header_lines(data)] + ["", "| " + " | ".join(head) + " |",
                                                   "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in body]
    sweep = sweep_lines(data)
    return "\n".join(out + ([""] + [f"- {x.strip()}" for x in sweep] if sweep else []))


def format_csv(data: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in data["results"]:
        w.writerow({**r, "samples": ";".join(f"{x:.6g}" for x in r["samples"])})
    return buf.getvalue()


@app.command()
def bench(
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", help="NAME[:QUANT] or a .gguf path; repeat to "
                                              "compare (default: $SLMRUN_MODEL or smollm2-135m)."),
    n_prompt: int = typer.Option(512, "--n-prompt", "-p", help="Prompt tokens per pp repetition."),
    n_gen: int = typer.Option(128, "--n-gen", "-n", help="Generated tokens per tg / e2e repetition."),
    reps: int = typer.Option(5, "--reps", "-r", help="Repetitions after the warm-up."),
    threads: Optional[str] = typer.Option(None, "--threads", "-t", help="Thread counts, e.g. 1,2,4 "
                                          "(default: the performance cores)."),
    ctx: Optional[int] = typer.Option(None, "--ctx", help="Context size (default: the model's, capped)."),
    depth: int = typer.Option(0, "--depth", "-d", help="Tokens already in the KV cache before each pp/tg "
                              "repetition, as in a long chat (llama-bench's -d)."),
    quants: Optional[str] = typer.Option(None, "--quants", help="'all-local' (every stored quant of each -m), "
                                         "or a list such as q4_k_m,q8_0."),
    sweep: bool = typer.Option(False, "--sweep", help="Try thread counts, flash attention on/off and batch "
                               "sizes; say which is fastest here."),
    as_json: bool = typer.Option(False, "--json", help="The full results as JSON (schema: slmrun.bench/1)."),
    as_csv: bool = typer.Option(False, "--csv", help="One CSV line per configuration and test."),
    as_md: bool = typer.Option(False, "--md", help="The table as Markdown."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    rpc: Optional[str] = rpc_option(),
):
    """Measure prompt processing, generation, time to first token, load time and memory."""
    from ..bench import run

    if rpc is not None:
        from .rpc import exit_on_rpc_failure
        exit_on_rpc_failure()
    if as_json + as_csv + as_md > 1:
        raise InvalidArgumentError("choose one of --json, --csv and --md")
    refs, all_local = expand_quants(list(model or []), quants)
    from .output import Progress

    progress = None if quiet else Progress()
    try:
        report = run(refs or None, n_prompt=n_prompt, n_gen=n_gen, reps=reps, threads=parse_threads(threads),
                     n_ctx=ctx, all_local=all_local, sweep=sweep, n_depth=depth, progress=progress, rpc=rpc)
    finally:
        if progress is not None:
            progress.close()
    data = report.to_dict()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    elif as_csv:
        typer.echo(format_csv(data), nl=False)
    elif as_md:
        typer.echo(format_markdown(data))
    else:
        typer.echo(format_text(data, tty=sys.stdout.isatty()))
