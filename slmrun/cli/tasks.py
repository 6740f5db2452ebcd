"""`slmrun classify` and `slmrun extract`: answers other programs read, one JSON value per text."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from . import app, fail
from .lines import chunks
from .run import check_sampling, load_for_cli

MODEL_HELP = "NAME[:QUANT] or a path to a .gguf (default: $SLMRUN_MODEL or smollm2-135m)."


def _texts(text: Optional[str]):
    """The text argument, or one text per non-empty line of stdin ('-' or none given)."""
    if text is not None and text != "-":
        if not text.strip():
            fail("the text is empty", "Give a text, or '-' to read one text per line from stdin.", 2)
        yield text
        return
    if sys.stdin.isatty():
        fail("no text given", "Give a text, or pipe one text per line on stdin.", 2)
    for line in sys.stdin:
        if line.strip():
            yield line.rstrip("\n")


def _emit(value) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
    sys.stdout.flush()


CHUNK = 64  # texts per call when classifying many (embedded together; bounded memory)


def _labels_and_examples(labels: Optional[str], labels_file: Optional[Path], train: Optional[Path], example: list[str]):
    """(LabelSet or None, [(text, label)]) from the options, every file read and checked first."""
    from ..classification import read_examples, read_labels_file, parse_labels

    if labels is not None and labels_file is not None:
        fail("give --labels or --labels-file, not both", code=2)
    label_set = parse_labels(labels) if labels is not None else read_labels_file(labels_file) if labels_file else None
    names = label_set.names if label_set else None
    examples = []
    for item in example:
        ex_text, sep, ex_label = item.rpartition("=")
        if not sep or not ex_text.strip():
            fail(f"--example {item!r} is not TEXT=LABEL", "Example: --example 'Free money!!!=spam'", 2)
        if names is not None and ex_label.strip() not in names:
            fail(f"--example {item!r}: the label {ex_label.strip()!r} is not one of the labels {list(names)}", code=2)
        examples.append((ex_text, ex_label.strip()))
    if train is not None:
        examples += read_examples(train, names)  # a bad line: its number, and nothing classified
    if label_set is None:
        if not examples:
            fail("no labels given", "Give --labels a,b,c (or a=description,...), --labels-file FILE, "
                 "or --train FILE.jsonl to take them from.", 2)
        from ..classification import label_set as make_label_set
        label_set = make_label_set(list(dict.fromkeys(label for _, label in examples)))
    return label_set, examples


@app.command()
def classify(
    text: Optional[str] = typer.Argument(None, help="The text; '-' or nothing: one text per line from stdin."),
    labels: Optional[str] = typer.Option(None, "--labels", "-l", help="The labels, comma-separated: --labels "
                                         "spam,ham; with descriptions: --labels 'spam=unsolicited advertising,"
                                         "ham=a normal message'."),
    labels_file: Optional[Path] = typer.Option(None, "--labels-file", help="The labels from a file: one a line, "
                                               "NAME or NAME=DESCRIPTION (or JSON: a list, or {name: description})."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " An embedding model "
                                        "(minilm-l6) classifies by embeddings."),
    via: Optional[str] = typer.Option(None, "--via", help="Classify by embeddings with this model (e.g. "
                                      "minilm-l6): label prototypes, or the centroids of --train examples."),
    train: Optional[Path] = typer.Option(None, "--train", help="Labelled examples, JSON lines of {\"text\", "
                                         "\"label\"}: centroids (--via) or examples in the prompt (generative)."),
    calibrate: bool = typer.Option(False, "--calibrate", help="Generative: divide out the model's label prior "
                                   "(the mean over the texts, by chunks of 64; content-free inputs for fewer than 8); embedding "
                                   "probabilities are calibrated anyway."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="How --calibrate estimates the prior: "
                                              "content-free, or batch (the mean over all the texts, read whole "
                                              "first; needs 8 or more). Implies --calibrate."),
    instruction: Optional[str] = typer.Option(None, "--instruction", help="What to ask (default: pick a label)."),
    example: list[str] = typer.Option([], "--example", "-e", help="TEXT=LABEL, a labelled example; repeatable."),
    ctx: Optional[int] = typer.Option(None, "--ctx", help="Context size in tokens."),
    threads: Optional[int] = typer.Option(None, "--threads"),
    parallel: Optional[int] = typer.Option(None, "--parallel", help="Generative: texts scored at once (default: "
                                           "as many slots as fit, up to 4)."),
):
    """Pick a label for each text; one JSON object per text: {"text", "label", "probabilities"}.
    A generative model scores each label by its own probabilities; an embedding model (--via
    minilm-l6) compares the text with each label's description or examples."""
    from ..api import load
    from ..classification import CALIBRATIONS, classify_texts

    if calibration is not None and calibration not in CALIBRATIONS:
        fail(f"--calibration must be one of {', '.join(CALIBRATIONS)}, got {calibration!r}", code=2)

    if via is not None and model is not None:
        fail("give --model or --via, not both", "--via NAME classifies by embeddings; --model NAME by either "
             "method, as the model is.", 2)
    label_set, examples = _labels_and_examples(labels, labels_file, train, example)
    if via is not None:
        m = load(via, n_threads=threads, n_ctx=ctx)
        method = "embedding"
    else:
        one = text is not None and text != "-"  # one text, one slot; many are scored side by side
        # Many short prompts side by side: one unified KV cache. With a stream per sequence llama.cpp
        # splits a step of unequal prompts into ubatches of equal tokens per sequence, which undoes
        # the batching (benchmarks/CLASSIFY_BULK.md: on a type with a batched kernel, 1.21x one at a
        # time with streams, 1.39x unified; on Q4_1, which has none on x86, 1.09x and 1.13x).
        m = load_for_cli(model, ctx=ctx, threads=threads, seed=None, n_parallel=1 if one else parallel,
                         kv_unified=not one)
        method = None
    with m:
        if method == "embedding" and not m.is_embedding_model:
            typer.echo(f"Note: {m.name} is a generative model; its embeddings classify poorly. An embedding "
                       "model (--via minilm-l6) is the tool for this.", err=True)
        if (calibrate or calibration) and (method == "embedding" or m.is_embedding_model):
            typer.echo("Note: --calibrate applies to generative classification; embedding probabilities are "
                       "calibrated by a fitted temperature already.", err=True)
        labels_arg = dict(zip(label_set.names, label_set.descriptions)) if label_set.described else list(label_set.names)
        # --calibrate: the batch prior per chunk of texts (content-free for fewer than 8), as measured best
        how = calibration or bool(calibrate)
        # Batch calibration needs every text before the first answer; otherwise they stream in chunks.
        parts = [list(_texts(text))] if how == "batch" else chunks(_texts(text), CHUNK)
        for chunk in parts:
            results = classify_texts(m, chunk, labels_arg, instruction=instruction, examples=examples or None,
                                     method=method, calibrate=how)
            for t, c in zip(chunk, results):
                _emit({"text": t, "label": c.label,
                       "probabilities": {k: round(v, 6) for k, v in c.probabilities.items()}})


@app.command()
def extract(
    text: Optional[str] = typer.Argument(None, help="The text; '-' or nothing: one text per line from stdin."),
    schema: Path = typer.Option(..., "--schema", "-s", help="A JSON Schema file: the fields to pull out."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    instruction: Optional[str] = typer.Option(None, "--instruction", help="What to ask (default: extract as JSON)."),
    max_tokens: int = typer.Option(512, "--max-tokens", "-n", help="Most tokens per answer."),
    ctx: Optional[int] = typer.Option(None, "--ctx", help="Context size in tokens."),
    threads: Optional[int] = typer.Option(None, "--threads"),
):
    """Pull the schema's fields out of each text; one validated JSON value per text."""
    check_sampling(max_tokens=max_tokens)
    try:
        schema_text = schema.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read --schema {schema}: {exc.strerror}", "Check the path.", 2)
    with load_for_cli(model, ctx=ctx, threads=threads, seed=None) as m:
        for t in _texts(text):
            _emit(m.extract(t, schema_text, instruction=instruction, max_tokens=max_tokens))
