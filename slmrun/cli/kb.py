"""`slmrun kb create|update|list|show|rm`, `slmrun ask --kb NAME`, and `slmrun chat --kb NAME`."""

from __future__ import annotations

import json
import sys
import time
from typing import Optional

import typer

from ..units import format_bytes, parse_size
from . import app, fail

kb_app = typer.Typer(help="Knowledge bases: index your documents, then `slmrun ask --kb NAME`.",
                     no_args_is_help=True)
app.add_typer(kb_app, name="kb")

EMBED_HELP = ("The embedding model for dense search (a name or a .gguf path); 'none': lexical (BM25) search only.")
MODEL_HELP = "The model that answers (and reranks): NAME[:QUANT] or a .gguf path (default: $SLMRUN_MODEL)."


def _echo_event(kind: str, value) -> None:
    if kind == "skip":
        typer.echo(value.line(), err=True)
    elif kind == "warn":
        typer.echo(f"warning: {value}", err=True)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        fail(f"--max-file-size: {exc}", code=2)


def _summary(report, what: str) -> str:
    parts = [f"{report.added} added"]
    if report.updated or what == "updated":
        parts.append(f"{report.updated} updated")
    if report.unchanged:
        parts.append(f"{report.unchanged} unchanged")
    if report.removed:
        parts.append(f"{report.removed} removed")
    if report.skipped:
        parts.append(f"{len(report.skipped)} skipped")
    rate = f", {report.chunks / report.seconds:.0f} chunks/s" if report.chunks and report.seconds > 0 else ""
    return f"{', '.join(parts)}; {report.chunks} chunks written in {report.seconds:.1f}s{rate}"


@kb_app.command("create")
def create(
    name: str = typer.Argument(..., help="A name for it (lower case, digits, '.', '_', '-')."),
    paths: list[str] = typer.Argument(..., help="Files and folders: .md .txt .html .pdf .csv .jsonl."),
    embed: str = typer.Option("minilm-l6", "--embed", help=EMBED_HELP),
    max_file_size: str = typer.Option("64M", "--max-file-size", help="Skip files larger than this."),
):
    """Index files and folders into a new knowledge base."""
    from ..knowledge import create_knowledge_base

    kb = create_knowledge_base(name, paths, embed=None if embed.lower() == "none" else embed,
                               on_event=_echo_event, max_file_bytes=_size(max_file_size))
    with kb:
        info = kb.info()
        typer.echo(f"created {kb.name}: {info['documents']} documents, {info['chunks']} chunks "
                   f"({info['faq_entries']} FAQ entries), {format_bytes(info['size_bytes'])}; "
                   f"{_summary(kb.last_report, 'created')}")


@kb_app.command("update")
def update(
    name: str = typer.Argument(...),
    max_file_size: str = typer.Option("64M", "--max-file-size", help="Skip files larger than this."),
):
    """Re-index the files that changed (by content hash) and drop those that are gone."""
    from ..knowledge import knowledge_base

    with knowledge_base(name) as kb:
        report = kb.update(on_event=_echo_event, max_file_bytes=_size(max_file_size))
        typer.echo(f"{kb.name}: {_summary(report, 'updated')}")


@kb_app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List the knowledge bases."""
    from ..knowledge import list_knowledge_bases

    bases = list_knowledge_bases()
    if as_json:
        typer.echo(json.dumps(bases, indent=2))
        return
    if not bases:
        typer.echo("No knowledge bases yet. Try: slmrun kb create NAME ./docs")
        return
    from .output import echo_table

    echo_table(("NAME", "DOCUMENTS", "CHUNKS", "EMBEDDINGS", "SIZE", "UPDATED"),
               [(b["name"], "?", "?", "?", "?", b["error"]) if "error" in b else
                (b["name"], str(b["documents"]), str(b["chunks"]), b["embed_model"] or "none (lexical)",
                 format_bytes(b["size_bytes"]), _when(b["updated"])) for b in bases], right=(1, 2, 4))


def _when(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "?"


@kb_app.command("show")
def show(
    name: str = typer.Argument(...),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Show a knowledge base: its files, chunks, models and size."""
    from ..knowledge import knowledge_base

    with knowledge_base(name) as kb:
        info, docs = kb.info(), kb.documents()
    if as_json:
        typer.echo(json.dumps({**info, "files": docs}, indent=2))
        return
    dim = f" ({info['embed_dim']} dimensions)" if info["embed_dim"] else ""
    typer.echo(f"name:       {info['name']}\n"
               f"indexed:    {', '.join(info['paths'])}\n"
               f"documents:  {info['documents']}   chunks: {info['chunks']}   FAQ entries: {info['faq_entries']}\n"
               f"embeddings: {info['embed_model'] or 'none (lexical search only)'}{dim}\n"
               f"size:       {format_bytes(info['size_bytes'])}   ({info['path']})\n"
               f"created:    {_when(info['created'])}   updated: {_when(info['updated'])}\n")
    from .output import echo_table

    echo_table(("FILE", "TYPE", "SIZE", "CHUNKS"),
               [(d["source"], d["kind"], format_bytes(d["size_bytes"]), str(d["chunks"])) for d in docs], right=(2, 3))


@kb_app.command("rm")
def rm(name: str = typer.Argument(...)):
    """Delete a knowledge base's index (your documents are not touched)."""
    from ..knowledge import remove_knowledge_base

    remove_knowledge_base(name)
    typer.echo(f"deleted knowledge base {name}")


def _print_answer(answer, *, as_json: bool, show_passages: bool = False) -> None:
    if as_json:
        out = answer.to_dict()
        if show_passages:
            out["passages"] = [h.to_dict() for h in answer.passages]
        typer.echo(json.dumps(out, ensure_ascii=False))
        return
    typer.echo(answer.with_footnotes())
    if show_passages:
        for n, h in enumerate(answer.passages, 1):
            typer.echo(f"  passage {n}: {h.source}" + (f" | {h.heading}" if h.heading else "")
                       + f" (score {h.score:.4f})", err=True)


@app.command()
def ask(
    question: str = typer.Argument(..., help="The question; '-' reads one question per line from stdin."),
    kb: str = typer.Option(..., "--kb", help="The knowledge base to answer from."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help='One JSON object: {"answer", "sources", "abstained"}.'),
    rerank: bool = typer.Option(False, "--rerank", help="Rerank the passages by the model's yes/no judgement."),
    top_k: int = typer.Option(5, "--top-k", "-k", help="Passages to answer from."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show the passages retrieved (stderr)."),
):
    """Answer from a knowledge base, with sources; "I don't know from these documents" when it holds no answer."""
    from ..knowledge import knowledge_base

    if top_k < 1:
        fail(f"--top-k must be >= 1, got {top_k}", code=2)
    questions = (line.strip() for line in sys.stdin) if question == "-" else iter([question])
    with knowledge_base(kb) as base:
        for q in questions:
            if not q:
                continue
            answer = base.ask(q, model=model, rerank=rerank, k=top_k)
            _print_answer(answer, as_json=as_json, show_passages=verbose)


def chat_kb(name: str, model: Optional[str], *, rerank: bool, top_k: int) -> None:
    """`slmrun chat --kb NAME`: each message is a question to the knowledge base."""
    from ..knowledge import knowledge_base

    interactive = sys.stdin.isatty()
    with knowledge_base(name) as base:
        if interactive:
            typer.echo(f"Asking {base.name}. Each message is a question; /bye to leave.", err=True)
        while True:
            try:
                line = input(">>> ") if interactive else sys.stdin.readline()
            except (EOFError, KeyboardInterrupt):
                typer.echo("")
                return
            if not interactive and line == "":
                return
            text = line.strip()
            if not text:
                continue
            if text in ("/bye", "/exit", "/quit"):
                return
            _print_answer(base.ask(text, model=model, rerank=rerank, k=top_k), as_json=False)
