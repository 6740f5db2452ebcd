"""`slmrun classify` and `slmrun extract`: answers other programs read, one JSON value per text."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from . import app, fail
from .run import load_for_cli

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


@app.command()
def classify(
    text: Optional[str] = typer.Argument(None, help="The text; '-' or nothing: one text per line from stdin."),
    labels: str = typer.Option(..., "--labels", "-l", help="The labels, comma-separated: --labels spam,ham"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    instruction: Optional[str] = typer.Option(None, "--instruction", help="What to ask (default: pick a label)."),
    example: list[str] = typer.Option([], "--example", "-e", help="TEXT=LABEL, shown to the model first; repeatable."),
    ctx: Optional[int] = typer.Option(None, "--ctx", help="Context size in tokens."),
    threads: Optional[int] = typer.Option(None, "--threads"),
    parallel: Optional[int] = typer.Option(None, "--parallel", help="Texts scored at once (default: as many "
                                           "slots as fit, up to 4)."),
):
    """Pick a label for each text from the model's own probabilities; one JSON object per text:
    {"text", "label", "probabilities"}."""
    names = [x.strip() for x in labels.split(",")]
    examples = []
    for item in example:
        ex_text, sep, ex_label = item.rpartition("=")
        if not sep or not ex_text.strip():
            fail(f"--example {item!r} is not TEXT=LABEL", "Example: --example 'Free money!!!=spam'", 2)
        examples.append((ex_text, ex_label.strip()))
    from ..runtime.tasks import classify_stream

    one = text is not None and text != "-"
    # Texts from stdin are scored side by side, one per slot (the planner's slots); one text, one slot.
    with load_for_cli(model, ctx=ctx, threads=threads, seed=None, n_parallel=1 if one else parallel) as m:
        texts = []  # classify_stream reads the lines as slots free; each result names its text
        for c in classify_stream(m, _remember(_texts(text), texts), names, instruction=instruction,
                                 examples=examples):
            t = texts.pop(0)
            _emit({"text": t, "label": c.label, "probabilities": {k: round(v, 6) for k, v in c.probabilities.items()}})


def _remember(items, seen: list):
    for item in items:
        seen.append(item)
        yield item


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
    try:
        schema_text = schema.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read --schema {schema}: {exc.strerror}", "Check the path.", 2)
    with load_for_cli(model, ctx=ctx, threads=threads, seed=None) as m:
        for t in _texts(text):
            _emit(m.extract(t, schema_text, instruction=instruction, max_tokens=max_tokens))
