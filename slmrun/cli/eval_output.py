"""`slmrun eval`'s tables: the columns of each task's rows, and what follows a table (the
measurement's setting, classification's confusion matrices)."""

from __future__ import annotations

import typer


def _f(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _kld(row, key):
    return (row.figures.get("kl_divergence") or {}).get(key)


def _method(row) -> str:
    """generative, 3-shot / generative-calibrated (batch), 0-shot / chat, 1-shot."""
    calibration = row.meta.get("calibration")
    return f"{row.method}{f' ({calibration})' if calibration else ''}, {row.meta.get('shots', 0)}-shot"


def _memory(row) -> str:
    from ..units import format_bytes
    return format_bytes(row.figures.get("peak_rss") or None, unknown="-")


USAGE = [("TEXTS/S", lambda r: _f(r.figures.get("texts_per_s"), ".1f")), ("PEAK MEM", _memory)]

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
    "classify": [
        ("MODEL", lambda r: r.model), ("METHOD", _method),
        ("ACCURACY", lambda r: _f(r.figures.get("accuracy"), ".3f")),
        ("MACRO-F1", lambda r: _f(r.figures.get("macro_f1"), ".3f")),
        ("ECE", lambda r: _f(r.figures.get("ece"), ".3f")),
        *USAGE,
    ],
    "extract": [
        ("MODEL", lambda r: r.model), ("METHOD", _method),
        ("EXACT", lambda r: _f(r.figures.get("exact_match"), ".3f")),
        ("FIELD F1", lambda r: _f(r.figures.get("mean_field_f1"), ".3f")),
        # then one column per field (columns_for)
        ("INVALID", lambda r: str(r.figures.get("n_invalid", "-"))),
        *USAGE,
    ],
    "generate": [
        ("MODEL", lambda r: r.model), ("METHOD", _method),
        ("ROUGE-L", lambda r: _f(r.figures.get("rouge_l"), ".4f")),
        ("BLEU", lambda r: _f(r.figures.get("bleu"), ".2f")),
        *USAGE,
    ],
}
MAX_FIELD_COLUMNS = 6  # more fields than this: their F1s are in --json only


def columns_for(task: str, rows) -> list:
    columns = list(COLUMNS[task])
    if task == "extract" and rows:
        fields = list(rows[0].figures.get("field_f1") or {})
        if 1 < len(fields) <= MAX_FIELD_COLUMNS:
            at = [h for h, _ in columns].index("FIELD F1") + 1
            columns[at:at] = [(f"F1 {name}", lambda r, n=name: _f((r.figures.get("field_f1") or {}).get(n), ".3f"))
                              for name in fields]
    return columns


def print_rows(task: str, rows) -> None:
    from .output import echo_table

    columns = columns_for(task, rows)
    cells = [[cell(r) for _, cell in columns] for r in rows]
    keep = [i for i in range(len(columns)) if any(c[i] != "-" for c in cells)]
    text = {"MODEL", "METHOD"}
    echo_table([columns[i][0] for i in keep], [[c[i] for i in keep] for c in cells],
               right=[j for j, i in enumerate(keep) if columns[i][0] not in text])


def print_footer(task: str, rows, ctx: int) -> None:
    """What the table measured, under it."""
    if not rows:
        return
    first = rows[0]
    if task == "perplexity":
        if first.meta.get("reference"):
            typer.echo(f"KL divergence from {first.meta['reference']} (nats per token), over "
                       f"{first.figures['n_tokens']} tokens in {first.meta['n_chunks']} chunks of {ctx}.")
        return
    source = ""
    if any(r.meta.get("shots") for r in rows):
        source = f"; examples from {first.meta['train']}" if first.meta.get("train") else \
            "; examples from the data (never an item's own)"
    typer.echo(f"{first.figures.get('n_items')} items of {first.meta.get('data')}{source}.")
    if task == "classify":
        typer.echo(f"Labels: {', '.join(first.meta['labels'])}. ECE: expected calibration error over 10 "
                   "confidence bins (lower is better). A calibrated row reuses its generative row's scores.")
        for row in rows:
            print_confusion(row)
    elif task == "extract":
        typer.echo("EXACT: the whole value as expected; FIELD F1: the mean of the top-level fields' F1; "
                   "INVALID: outputs cut at --max-tokens (they predict nothing).")
    elif task == "generate":
        typer.echo(f"ROUGE-L: mean F-measure (0-1, {first.meta.get('rouge_tokenizer')} tokens); BLEU: corpus "
                   f"BLEU (0-100, sacrebleu {first.meta.get('bleu_signature')}).")


def print_confusion(row) -> None:
    """One row's confusion matrix: true labels down, predicted across."""
    from .output import echo_table

    confusion = row.figures.get("confusion") or {}
    labels, matrix = confusion.get("labels") or [], confusion.get("matrix") or []
    typer.echo(f"\n{row.model}, {_method(row)}: true label (down) by predicted label (across)")
    echo_table(["", *labels], [[label, *map(str, counts)] for label, counts in zip(labels, matrix)],
               right=range(1, len(labels) + 1))
