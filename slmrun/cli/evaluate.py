"""`slmrun eval`: measure models: perplexity and KL divergence from a reference, or a task
(classify, extract, generate) on the user's own data.

One command, one runner per ``--task``: a runner takes the parsed options, calls the
library's task (slmrun.evaluate) and returns EvalRows; the rows print as a table of the
task's columns, or as a JSON list of rows (``--json``). A new task adds its options (and
their line in OPTION_TASKS), its runner in RUNNERS and its columns in eval_output.COLUMNS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import InvalidArgumentError
from . import app

DEFAULT_CTX = 512  # perplexity's chunk (llama-perplexity's -c); the other tasks take the model's context
DEFAULT_BATCH = 2048


def _progress(what: str):
    """The CLI's progress display for a run of items: a bar on a terminal; off one, a line
    at each new row and about every 5% (not one per item)."""
    from .output import Progress

    shown = Progress()
    last = {"label": None, "done": -1}

    def report(done: int, total: int, label: str) -> None:
        step = max(1, total // 20)
        if shown.tty or label != last["label"] or done == total or done - last["done"] >= step:
            shown(done, total, f"{what} ({label})")
            last.update(label=label, done=done)
    report.close = shown.close
    return report


def _run_perplexity(models: list[str], opts: dict) -> list:
    from ..evaluate.perplexity import evaluate_perplexity, read_text

    if opts["text"] is None:
        raise InvalidArgumentError("--task perplexity needs --text FILE",
                                   hint="Example: slmrun eval smollm2-135m:q2_k --reference smollm2-135m:f16 "
                                        "--text wiki.txt")
    text = read_text(opts["text"])
    progress = _progress("tokens scored")
    try:
        return evaluate_perplexity(models, text, reference=opts["reference"], n_ctx=opts["ctx"] or DEFAULT_CTX,
                                   n_batch=opts["batch"] or DEFAULT_BATCH, n_threads=opts["threads"],
                                   force=opts["force"], progress=progress, save=not opts["no_save"],
                                   text_name=Path(opts["text"]).name, llama_compat=opts["llama_compat"])
    finally:
        progress.close()


def _needs_data(task: str, opts: dict) -> None:
    if opts["data"] is None:
        fields = {"classify": '{"text", "label"}', "extract": '{"text", "expected"}',
                  "generate": '{"prompt", "reference"}'}[task]
        raise InvalidArgumentError(f"--task {task} needs --data FILE.jsonl ({fields} lines)",
                                   hint=f"Example: slmrun eval -m smollm2-135m --task {task} --data {task}.jsonl")


def _common(opts: dict) -> dict:
    return dict(shots=opts["shots"], train=opts["train"], n_ctx=opts["ctx"], n_threads=opts["threads"],
                n_parallel=opts["parallel"], force=opts["force"], save=not opts["no_save"])


def _run_classify(models: list[str], opts: dict) -> list:
    from ..evaluate.classify import evaluate_classify

    _needs_data("classify", opts)
    if opts["labels"] is not None and opts["labels_file"] is not None:
        raise InvalidArgumentError("give --labels or --labels-file, not both")
    labels = opts["labels"]
    if opts["labels_file"] is not None:
        from ..classification import read_labels_file
        labels = read_labels_file(opts["labels_file"])
    calibrate = opts["calibration"] or opts["calibrate"]
    progress = _progress("texts classified")
    try:
        return evaluate_classify(models, opts["data"], labels=labels, via=opts["via"], calibrate=calibrate,
                                 instruction=opts["instruction"], progress=progress, **_common(opts))
    finally:
        progress.close()


def _run_extract(models: list[str], opts: dict) -> list:
    from ..evaluate.extract import evaluate_extract

    _needs_data("extract", opts)
    if opts["schema"] is None:
        raise InvalidArgumentError("--task extract needs --schema FILE (a JSON Schema of the fields to extract)",
                                   hint="Example: slmrun eval -m smollm2-135m --task extract --schema person.json "
                                        "--data people.jsonl")
    progress = _progress("texts extracted")
    try:
        return evaluate_extract(models, opts["data"], schema=opts["schema"], instruction=opts["instruction"],
                                max_tokens=opts["max_tokens"] or 512, progress=progress, **_common(opts))
    finally:
        progress.close()


def _run_generate(models: list[str], opts: dict) -> list:
    from ..evaluate.generate import DEFAULT_MAX_TOKENS, evaluate_generate

    _needs_data("generate", opts)
    progress = _progress("replies generated")
    try:
        return evaluate_generate(models, opts["data"], max_tokens=opts["max_tokens"] or DEFAULT_MAX_TOKENS,
                                 progress=progress, **_common(opts))
    finally:
        progress.close()


RUNNERS = {"perplexity": _run_perplexity, "classify": _run_classify, "extract": _run_extract,
           "generate": _run_generate}

# Options that mean something only to some tasks: given to another, refused (a mistake, not a no-op).
DATA_TASKS = ("classify", "extract", "generate")
OPTION_TASKS = {
    "--reference": ("perplexity",), "--text": ("perplexity",), "--batch": ("perplexity",),
    "--llama-compat": ("perplexity",), "--data": DATA_TASKS, "--train": DATA_TASKS, "--shots": DATA_TASKS,
    "--parallel": DATA_TASKS, "--labels": ("classify",), "--labels-file": ("classify",), "--via": ("classify",),
    "--calibrate": ("classify",), "--calibration": ("classify",), "--instruction": ("classify", "extract"),
    "--schema": ("extract",), "--max-tokens": ("extract", "generate"),
}


def check_options(task: str, given: dict) -> None:
    """Refuse an option given to a task that does not use it."""
    for option, value in given.items():
        tasks = OPTION_TASKS[option]
        if value not in (None, False, [], ()) and task not in tasks:
            raise InvalidArgumentError(f"{option} is for --task {' or '.join(tasks)}, not {task}",
                                       hint=f"Leave it out, or use --task {tasks[0]}.")


@app.command("eval")
def eval_command(
    models: Optional[List[str]] = typer.Argument(None, help="Models to evaluate: NAME, NAME:QUANT or a .gguf path "
                                                 "(several: one table; each against the same reference)."),
    model: List[str] = typer.Option([], "--model", "-m", help="A model to evaluate (repeatable; as the arguments)."),
    task: str = typer.Option("perplexity", "--task", help=f"What to measure: {', '.join(RUNNERS)}."),
    reference: Optional[str] = typer.Option(None, "--reference", "-r",
                                            help="perplexity: the model to measure KL divergence from (same "
                                                 "vocabulary; ideally the F16/F32 of the same model)."),
    text: Optional[Path] = typer.Option(None, "--text", "-f", help="perplexity: a UTF-8 text to measure on."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="classify/extract/generate: JSON lines of "
                                        '{"text", "label"} / {"text", "expected"} / {"prompt", "reference"}.'),
    labels: Optional[str] = typer.Option(None, "--labels", "-l", help="classify: the labels, a,b,c or "
                                         "a=description,... (default: those in the data)."),
    labels_file: Optional[Path] = typer.Option(None, "--labels-file", help="classify: the labels from a file "
                                               "(one a line, NAME or NAME=DESCRIPTION; or JSON)."),
    train: Optional[Path] = typer.Option(None, "--train", help="Labelled examples for --shots (the data's "
                                         "format); default: the data itself, never an item's own."),
    shots: List[str] = typer.Option([], "--shots", help="Examples in the prompt: per label (classify) or in all; "
                                    "several compare on the same items: --shots 0,3 (default 0)."),
    via: List[str] = typer.Option([], "--via", help="classify: also by embeddings with this model (e.g. "
                                  "minilm-l6; repeatable)."),
    calibrate: bool = typer.Option(False, "--calibrate", help="classify: also the generative rows with the label "
                                   "prior divided out (the batch prior; content-free below 8 items)."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="classify: content-free or batch "
                                              "(implies --calibrate)."),
    instruction: Optional[str] = typer.Option(None, "--instruction", help="classify/extract: what to ask."),
    schema: Optional[Path] = typer.Option(None, "--schema", "-s", help="extract: a JSON Schema file of the fields."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", "-n",
                                             help="extract/generate: most tokens an answer (512 / 256)."),
    ctx: Optional[int] = typer.Option(None, "--ctx", "-c", help="perplexity: tokens per chunk (llama-perplexity's "
                                      f"-c, default {DEFAULT_CTX}); other tasks: the context (default: the model's)."),
    batch: Optional[int] = typer.Option(None, "--batch", "-b", help="perplexity: tokens per decode (llama-"
                                        f"perplexity's -b, default {DEFAULT_BATCH}): batch/ctx chunks go together."),
    parallel: Optional[int] = typer.Option(None, "--parallel", help="Texts at once (default: as many slots as fit, "
                                           "up to 4)."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="Threads (default: the physical cores)."),
    as_json: bool = typer.Option(False, "--json", help="A JSON list of rows: model, method and the figures."),
    llama_compat: bool = typer.Option(False, "--llama-compat",
                                      help="perplexity: round the reference's log-probabilities to 16 bits as "
                                           "llama-perplexity's --kl-divergence-base file does (its exact figures)."),
    force: bool = typer.Option(False, "--force", help="Load even when the memory estimate says it will not fit."),
    no_save: bool = typer.Option(False, "--no-save", help="Do not keep the results (the planner uses kept ones)."),
):
    """Measure models: perplexity and KL divergence from a reference, or a task on your data.

    --task perplexity (default): over a --text, the perplexity of each model and, with
    --reference, the KL divergence of each from it per token (mean, median, p99, max), top-1
    agreement and ln(PPL ratio), by llama-perplexity's method; `slmrun plan` ranks quants
    by them. --task classify / extract / generate on --data: accuracy, macro-F1, ECE and
    the confusion matrix / exact match and per-field F1 / ROUGE-L and BLEU, zero-shot and
    with --shots examples, one row per model and method, with texts/s and peak memory.
    Results are kept per model file and task."""
    from .eval_output import print_footer, print_rows

    key = task.strip().lower()
    runner = RUNNERS.get(key)
    if runner is None:
        raise InvalidArgumentError(f"unknown task {task!r}", hint=f"Use one of: {', '.join(RUNNERS)}.")
    check_options(key, {"--reference": reference, "--text": text, "--batch": batch, "--llama-compat": llama_compat,
                        "--data": data, "--train": train, "--shots": shots, "--parallel": parallel,
                        "--labels": labels, "--labels-file": labels_file, "--via": via, "--calibrate": calibrate,
                        "--calibration": calibration, "--instruction": instruction, "--schema": schema,
                        "--max-tokens": max_tokens})
    if calibration is not None and calibration not in ("content-free", "batch"):
        raise InvalidArgumentError(f"--calibration must be content-free or batch, got {calibration!r}")
    names = list(models or []) + list(model)
    if not names and not via:
        raise InvalidArgumentError("name a model to evaluate",
                                   hint="Example: slmrun eval -m smollm2-135m --task classify --data FILE.jsonl")
    rows = runner(names, dict(reference=reference, text=text, ctx=ctx, batch=batch, threads=threads,
                              llama_compat=llama_compat, force=force, no_save=no_save, data=data, train=train,
                              shots=shots, parallel=parallel, labels=labels, labels_file=labels_file, via=via,
                              calibrate=calibrate, calibration=calibration, instruction=instruction,
                              schema=schema, max_tokens=max_tokens))
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2, ensure_ascii=False))
        return
    print_rows(key, rows)
    print_footer(key, rows, ctx or DEFAULT_CTX)
