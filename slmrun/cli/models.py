"""`slmrun pull | list | show | rm | import`: the local model store."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from ..units import format_bytes
from . import app


def _ago(ts: float) -> str:
    s = max(0, time.time() - ts)
    for unit, scale in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if s >= scale:
            return f"{int(s // scale)} {unit} ago"
    return "just now"


@app.command()
def pull(
    model: str = typer.Argument(..., help="NAME or NAME:QUANT from the registry (`slmrun show NAME` lists quants)."),
    force: bool = typer.Option(False, "--force", "-f", help="Download again even if the file is already here."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Download a model into the local store (verified, resumable)."""
    from ..api import pull as do_pull

    t0 = time.perf_counter()
    before = {m.path for m in _stored()}
    m = do_pull(model, force=force, progress=not quiet)
    if m.path in before and not force:
        typer.echo(f"{m.ref} is already here ({format_bytes(m.size)}): {m.path}")
    else:
        typer.echo(f"pulled {m.ref} ({format_bytes(m.size)}, sha256 {m.sha256[:12]}…) "
                   f"in {time.perf_counter() - t0:.1f}s: {m.path}")


def _stored():
    from ..store import list_models
    return list_models()


@app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List the models in the local store."""
    models = _stored()
    if as_json:
        typer.echo(json.dumps([m.to_dict() for m in models], indent=2))
        return
    if not models:
        typer.echo("No models yet. Try: slmrun pull smollm2-135m")
        return
    from .output import echo_table

    echo_table(("NAME", "QUANT", "SIZE", "KIND", "MODIFIED"),
               [(m.name, m.quant, format_bytes(m.size), m.kind, _ago(m.modified)) for m in models])


@app.command()
def rm(model: str = typer.Argument(..., help="NAME (every quant) or NAME:QUANT.")):
    """Remove a model (or one quant of it) from the local store."""
    from ..api import remove

    for m in remove(model):
        typer.echo(f"deleted {m.ref} ({format_bytes(m.size)})")


@app.command("import")
def import_cmd(
    path: str = typer.Argument(..., help="A .gguf file brought by hand (USB stick, scp, ...), or a Hugging Face "
                                         "model directory of the BERT family to convert."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Name in the store (default: from the file "
                                                                  "or directory name)."),
    link: bool = typer.Option(False, "--link", help="Symlink instead of copying."),
    prompt_format: Optional[str] = typer.Option(
        None, "--format", help="The prompt format to chat with (chatml, llama3, gemma, zephyr, mistral, phi3, "
                               "phi2, ...), recorded in the store; for a GGUF without a chat template."),
    quant: Optional[str] = typer.Option(None, "--quant", "-q", help="For a model directory: the GGUF type to "
                                                                    "convert to, f16 (default), f32 or q8_0."),
):
    """Validate a local GGUF and add it to the store, for air-gapped machines; or convert a Hugging Face
    model directory (BERT, e.g. a sentence-transformers embedding model) into one."""
    from ..api import import_model
    from ..store import read_sidecar

    m = import_model(path, name=name, link=link, prompt_format=prompt_format, quant=quant)
    recorded = read_sidecar(m.path).get("prompt_format")
    verb = "converted and imported" if Path(path).expanduser().is_dir() else "imported"
    typer.echo(f"{verb} {m.ref} ({format_bytes(m.size)}, sha256 {m.sha256[:12]}…): {m.path}"
               + (f"; prompt format {recorded}" if recorded else ""))


@app.command()
def show(
    model: str = typer.Argument(..., help="NAME, NAME:QUANT or a path to a .gguf."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check the stored file's SHA-256."),
):
    """Show a model: architecture, parameters, context, quant, license, format, file."""
    from ..api import describe

    d = describe(model, verify=verify)
    if as_json:
        typer.echo(json.dumps(d, indent=2, default=str))
        return
    from .output import echo_table

    rows = []
    for key, value in d.items():
        if key == "quants":
            value = ", ".join(f"{q}{'*' if here else ''}" for q, here in value.items()) + "   (* = downloaded)"
        elif key in ("size", "file_size") and isinstance(value, int):
            value = f"{format_bytes(value)} ({value} bytes)"
        elif key == "chat_template" and isinstance(value, str):
            value = value if len(value) < 300 else value[:300] + "…"
        rows.append((key.replace("_", " "), str(value)))
    echo_table(None, rows)
