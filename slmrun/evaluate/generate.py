"""``slmrun eval --task generate``: ROUGE-L and BLEU of each model's replies against the user's
references ({"prompt", "reference"} lines; a reference may be a list of them).

A model with a chat format is asked in a chat (the prompt as the user's turn; examples as
earlier turns answered by their first reference); one without gets the prompt as plain text
to continue (examples as "prompt\\nreference" blocks before it, and the reply ends at the first
blank line, as the examples do). Decoding is greedy (temperature 0) with the chat or text
task's default penalties (runtime/params.py), so a run is reproducible; at most
``max_tokens`` a reply. Figures: evaluate.metrics.generate_figures.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .data import read_data
from .extract import check_max_tokens, few_shot_groups
from .results import EvalRow
from .runs import Steps, each_row, predict_groups, require_generative, resolve_targets, save_rows, usage

DEFAULT_MAX_TOKENS = 256


def request(model, prompt: str, examples, max_tokens: int):
    """The Response (at once) of one prompt, with ``examples`` ((prompt, references) pairs)."""
    if model.has_chat_format:
        messages = []
        for p, refs in examples:
            messages += [{"role": "user", "content": p}, {"role": "assistant", "content": refs[0]}]
        messages.append({"role": "user", "content": prompt})
        return model.chat(messages, temperature=0, max_tokens=max_tokens)
    if not examples:
        return model.complete(prompt, temperature=0, max_tokens=max_tokens)
    shown = "".join(f"{p}\n{refs[0]}\n\n" for p, refs in examples)
    return model.complete(f"{shown}{prompt}\n", temperature=0, max_tokens=max_tokens, stop=["\n\n"])


def evaluate_generate(models: Sequence[str], data, *, shots=(0,), train=None, max_tokens: int = DEFAULT_MAX_TOKENS,
                      n_ctx: int | None = None, n_threads: int | None = None, n_parallel: int | None = None,
                      force: bool = False, progress: Callable[[int, int, str], None] | None = None,
                      save: bool = True) -> list[EvalRow]:
    """Reply to every prompt of ``data`` ({"prompt", "reference"} lines, or a list of such
    dicts) with each model, at each count of ``shots`` examples (from ``train``, else from the
    data, never an item's own), and score the replies against the references. One EvalRow per
    model and shot count (method: "chat" or "completion"); each kept per model file and task
    unless ``save=False``. Everything is checked before a model loads."""
    from .metrics import generate_figures

    d = read_data(data, "generate")
    tr = read_data(train, "generate", "--train") if train is not None else None
    max_tokens = check_max_tokens(max_tokens)
    groups = few_shot_groups(shots, d, tr)
    targets = resolve_targets(list(models))
    require_generative(targets, "generate")
    references = [it.target for it in d.items]
    meta = {"data": d.name, "data_sha256": d.sha256, "train": tr.name if tr else None,
            "train_sha256": tr.sha256 if tr else None, "max_tokens": max_tokens, "n_items": len(d.items)}

    def start(model, item, examples):
        return request(model, item.input, examples, max_tokens)

    def finish(response):
        return response.text.strip()

    steps = Steps(progress, len(targets) * len(groups) * len(d.items))
    rows = []
    by_name = {t.name: t for t in targets}
    for target, model, n, shot_sets in each_row(targets, groups, steps=steps, n_ctx=n_ctx, n_threads=n_threads,
                                                 n_parallel=n_parallel, force=force):
        replies, seconds = predict_groups(model, shot_sets, (tr or d).items, d.items, start, finish, steps)
        figures = generate_figures(replies, references)
        row_meta = {**meta, "shots": n, "rouge_tokenizer": figures.pop("rouge_tokenizer"),
                    "bleu_signature": figures.pop("bleu_signature")}
        row = EvalRow(model=target.name, method="chat" if model.has_chat_format else "completion", task="generate",
                      figures={**figures, **usage(len(d.items), seconds)}, meta=row_meta)
        if save:
            save_rows([row], by_name)
        rows.append(row)
    return rows
