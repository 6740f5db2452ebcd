"""`slmrun eval`: measure models (perplexity and KL divergence from a reference, for now).

One command, one runner per ``--task``: a runner takes the parsed options, calls the
library's task (slmrun.evaluate) and returns EvalRows; the rows print as a table of the
task's columns, or as a JSON list of rows (``--json``). A new task adds its options, its
runner in RUNNERS and its columns in COLUMNS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import InvalidArgumentError
from . import app


def _run_perplexity(models: list[str], opts: dict) -> list:
    from ..evaluate.perplexity import evaluate_perplexity, read_text
    from .output import Progress

    if opts["text"] is None:
        raise InvalidArgumentError("--task perplexity needs --text FILE",
                                   hint="Example: slmrun eval smollm2-135m:q2_k --reference smollm2-135m:f16 "
                                        "--text wiki.txt")
    text = read_text(opts["text"])
    progress = Progress()
    try:
        return evaluate_perplexity(models, text, reference=opts["reference"], n_ctx=opts["ctx"],
                                   n_batch=opts["batch"], n_threads=opts["threads"], force=opts["force"],
                                   progress=lambda done, total, label: progress(done, total, f"tokens scored ({label})"),
                                   save=not opts["no_save"], text_name=Path(opts["text"]).name,
                                   llama_compat=opts["llama_compat"])
    finally:
        progress.close()


RUNNERS = {"perplexity": _run_perplexity}


def _f(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _kld(row, key):
    return (row.figures.get("kl_divergence") or {}).get(key)


# (header, cell) per column; a column whose cells are all "-" is left out.
COLUMNS = {
    "perplexity": [
        ("MODEL", lambda r: r.model),
        ("PPL", lambda r: _f(r.figures.get("perplexity"), ".4f")),
        ("REF PPL", lambda r: _f(r.figures.get("reference_perplexity"), ".4f")),
        ("LN(PPL/REF)", lambda r: _f(r.figures.get("ln_ppl_ratio"), ".5f")),
        ("KLD MEAN", lambda r: _f(_kld(r, "mean"), ".6f")),
        ("MEDIAN", lambda r: _f(_kld(r, "median"), ".6f")),
        ("P99", lambda r: _f(_kld(r, "p99"), ".6f")),
        ("MAX", lambda r: _f(_kld(r, "max"), ".6f")),
        ("TOP-1", lambda r: "-" if r.figures.get("top1_agreement") is None
         else f"{100 * r.figures['top1_agreement']:.3f}%"),
        ("TOKENS", lambda r: str(r.figures.get("n_tokens", "-"))),
    ],
}


def print_rows(task: str, rows: list) -> None:
    from .output import echo_table

    columns = COLUMNS[task]
    cells = [[cell(r) for _, cell in columns] for r in rows]
    keep = [i for i in range(len(columns)) if any(c[i] != "-" for c in cells)]
    echo_table([columns[i][0] for i in keep], [[c[i] for i in keep] for c in cells],
               right=[j for j, i in enumerate(keep) if i > 0])


@app.command("eval")
def eval_command(
    models: List[str] = typer.Argument(..., help="Models to evaluate: NAME, NAME:QUANT or a .gguf path (several: "
                                                 "each against the same reference, in one pass)."),
    reference: Optional[str] = typer.Option(None, "--reference", "-r",
                                            help="The model to measure KL divergence from (same vocabulary; "
                                                 "ideally the F16/F32 of the same model)."),
    text: Optional[Path] = typer.Option(None, "--text", "-f", help="A UTF-8 text to measure perplexity on."),
    task: str = typer.Option("perplexity", "--task", help=f"What to measure: {', '.join(RUNNERS)}."),
    ctx: int = typer.Option(512, "--ctx", "-c", help="Tokens per chunk (llama-perplexity's -c)."),
    batch: int = typer.Option(2048, "--batch", "-b",
                              help="Tokens per decode (llama-perplexity's -b): batch/ctx chunks go together."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="Threads (default: the physical cores)."),
    as_json: bool = typer.Option(False, "--json", help="A JSON list of rows: model, method and the figures."),
    llama_compat: bool = typer.Option(False, "--llama-compat",
                                      help="Round the reference's log-probabilities to 16 bits as "
                                           "llama-perplexity's --kl-divergence-base file does (its exact figures)."),
    force: bool = typer.Option(False, "--force", help="Load even when the memory estimate says it will not fit."),
    no_save: bool = typer.Option(False, "--no-save", help="Do not keep the results (the planner uses kept ones)."),
):
    """Measure models: perplexity, and KL divergence from a reference (llama-perplexity's method).

    Over a text: perplexity of each model and, with --reference, the KL divergence of each
    from it per token (mean, median, p99, max), top-1 agreement and ln(PPL ratio). Results
    are kept per model file; `slmrun plan` ranks quants by them."""
    key = task.strip().lower()
    runner = RUNNERS.get(key)
    if runner is None:
        raise InvalidArgumentError(f"unknown task {task!r}", hint=f"Use one of: {', '.join(RUNNERS)}.")
    rows = runner(list(models), dict(reference=reference, text=text, ctx=ctx, batch=batch, threads=threads,
                                     llama_compat=llama_compat, force=force, no_save=no_save))
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    print_rows(key, rows)
    if rows and rows[0].meta.get("reference"):
        typer.echo(f"KL divergence from {rows[0].meta['reference']} (nats per token), over "
                   f"{rows[0].figures['n_tokens']} tokens in {rows[0].meta['n_chunks']} chunks of {ctx}.")
