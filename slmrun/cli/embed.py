"""`slmrun embed`: one vector per text, as JSON lines or a .npy file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from .. import config
from . import app, fail
from .lines import chunks

BATCH_LINES = 256  # texts read from stdin per embed() call: streams out, bounded memory


def _texts(texts: list[str]):
    """The text arguments, or one text per non-empty line of stdin ('-' or none given)."""
    if texts and texts != ["-"]:
        for i, t in enumerate(texts):
            if not t.strip():
                fail(f"text {i + 1} is empty", "Give non-empty texts, or '-' to read one per line from stdin.", 2)
        yield from texts
        return
    if sys.stdin.isatty():
        fail("no text given", "Give texts as arguments, or pipe one text per line on stdin.", 2)
    for line in sys.stdin:
        if line.strip():
            yield line.rstrip("\n")


@app.command()
def embed(
    texts: list[str] = typer.Argument(None, help="Texts to embed; '-' or none: one text per line from stdin."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="NAME[:QUANT] or a .gguf path "
                                        "(default: $SLMRUN_EMBED_MODEL or minilm-l6)."),
    npy: Optional[Path] = typer.Option(None, "--npy", help="Write the vectors to this .npy file (float32, "
                                       "one row per text) instead of JSON lines."),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="L2-normalise each vector."),
    truncate: bool = typer.Option(True, "--truncate/--no-truncate", help="Cut a text longer than the model's "
                                  "context (else it is an error)."),
    pooling: Optional[str] = typer.Option(None, "--pooling", help="mean, cls or last (default: the model's own)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: the performance cores)."),
):
    """Embed texts: one JSON line per text, {"text", "embedding", "n_tokens"} ("truncated": true when a
    text was cut), or all vectors in a .npy file."""
    from ..api import load

    if npy is not None and npy.suffix != ".npy":
        fail(f"--npy {npy}: the file name must end in .npy", "Example: --npy vectors.npy", 2)
    with load(model or config.embed_model(), n_threads=threads, pooling=pooling) as m:
        rows = []
        for batch in chunks(_texts(texts or []), BATCH_LINES):
            e = m.embed(batch, normalize=normalize, truncate=truncate)
            if npy is not None:
                rows.append(e.vectors)
                continue
            for text, vec, n, cut in zip(batch, e.tolist(), e.n_tokens, e.truncated):
                line = {"text": text, "embedding": vec, "n_tokens": n, **({"truncated": True} if cut else {})}
                sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        if npy is not None:
            _save(npy, rows, m.n_embd)


def _save(path: Path, rows: list, n_embd: int) -> None:
    """Write atomically: a file the command did not finish is never left under the name asked for."""
    import os

    import numpy as np

    vectors = np.vstack(rows) if rows else np.zeros((0, n_embd), dtype=np.float32)
    tmp = path.with_name(path.name + ".incomplete.npy")
    try:
        np.save(tmp, vectors)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        fail(f"cannot write {path}: {exc.strerror}", "Check the directory exists and is writable.", 11)
    typer.echo(f"wrote {len(vectors)} vectors of {n_embd} dimensions to {path}", err=True)
