#!/usr/bin/env python3
"""Which sampling lets a small model finish? Constrained JSON and chat replies, per setting.

1. Constrained JSON (``--task json``): JSONSchemaBench schemas of ../shared/jsonschemabench/,
   the default model asked for one valid instance (structured_grammar.e2e_messages: the
   schema in the system prompt), constrained by the schema, at most 512 tokens. Per schema:
   valid (parses and validates), length (ran out of tokens: refused by ``Response.json()``),
   violation (ended but does not validate: must never happen), refused (llguidance cannot
   enforce the schema), error. The *development* sample is every fifth file (the 54 of
   structured_e2e.py --limit 54), the *held-out* sample the files two places after each.
2. Chat (``--task chat``): benchmarks/data/chat_prompts.txt (open questions and tasks written for
   this benchmark), one reply each, at most 256 tokens: the share that end by themselves, the
   share caught in a loop (a 4-token sequence repeated 4 or more times in the reply) and the
   reply's distinct-2 ratio (unique token pairs / pairs; lower is more repetitive).
3. Facts (``--task facts``): benchmarks/data/fact_prompts.jsonl (short factual questions written
   for this benchmark), one reply each, at most 64 tokens: the share whose reply contains an
   expected answer (a word match, case-insensitive). What a penalty costs: a reply repeats its
   question's words.

Each setting is a named set of sampling parameters (SETTINGS); rows are appended to a JSON-lines
file as they finish (``--rows``), and ``--report`` writes the tables into benchmarks/STRUCTURED.md (its "sampling" block).

    .venv/bin/python benchmarks/sampling.py --task json --sample dev --settings greedy,greedy-dry
    .venv/bin/python benchmarks/sampling.py --report
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from llama_tools import write_marked  # noqa: E402
from structured_grammar import DATA, e2e_messages  # noqa: E402

ROWS = HERE / "data" / "sampling_rows.jsonl"
OUT = HERE / "STRUCTURED.md"
CHAT_PROMPTS = HERE / "data" / "chat_prompts.txt"
FACT_PROMPTS = HERE / "data" / "fact_prompts.jsonl"

# Each value passes explicitly (so a setting means the same whatever the library's defaults are);
# "library default" passes only the temperature, and measures what a caller gets.
SETTINGS = {
    "greedy": {"temperature": 0, "repeat_penalty": 1.0, "dry_multiplier": 0.0},
    "greedy-rp1.1": {"temperature": 0, "repeat_penalty": 1.1, "dry_multiplier": 0.0},
    "greedy-rp1.2": {"temperature": 0, "repeat_penalty": 1.2, "dry_multiplier": 0.0},
    "greedy-dry0.8": {"temperature": 0, "repeat_penalty": 1.0, "dry_multiplier": 0.8},
    "greedy-dry0.8-rp1.1": {"temperature": 0, "repeat_penalty": 1.1, "dry_multiplier": 0.8},
    "greedy-dry1.5": {"temperature": 0, "repeat_penalty": 1.0, "dry_multiplier": 1.5},
    "greedy-dry0.8-len1": {"temperature": 0, "repeat_penalty": 1.0, "dry_multiplier": 0.8, "dry_allowed_length": 1},
    "t0.8": {"temperature": 0.8, "repeat_penalty": 1.0, "dry_multiplier": 0.0, "seed": 1},
    "t0.8-rp1.1": {"temperature": 0.8, "repeat_penalty": 1.1, "dry_multiplier": 0.0, "seed": 1},
    "t0.8-dry0.8": {"temperature": 0.8, "repeat_penalty": 1.0, "dry_multiplier": 0.8, "seed": 1},
    "t0.8-dry0.8-rp1.1": {"temperature": 0.8, "repeat_penalty": 1.1, "dry_multiplier": 0.8, "seed": 1},
    "greedy-default": {"temperature": 0},  # the library's task defaults, greedy
    "default": {"seed": 1},  # the library's task defaults, as a caller gets them
}


def sample_files(which: str, limit: int = 54) -> list[Path]:
    files = sorted(DATA.glob("*---*.json"))
    step = len(files) / limit
    offset = {"dev": 0, "heldout": 2}[which]
    return [files[int(i * step) + offset] for i in range(limit)]


def run_json(model, setting: str, files: list[Path], sample: str, max_tokens: int, workers: int, emit) -> None:
    from slmrun.errors import SlmrunError, StructuredOutputError
    from slmrun.structured import constraint_spec, parse_json

    params = SETTINGS[setting]

    def one(path: Path) -> dict:
        case = json.loads(path.read_text())
        row = {"task": "json", "sample": sample, "setting": setting, "file": path.name,
               "split": path.name.split("---")[0]}
        try:
            spec = constraint_spec(json_schema=case["schema"])
        except SlmrunError as exc:
            return {**row, "status": "refused", "reason": exc.message}
        try:
            r = model.chat(e2e_messages(case["schema"]), max_tokens=max_tokens, json_schema=case["schema"],
                           **params).wait()
        except SlmrunError as exc:
            return {**row, "status": "error", "reason": exc.message}
        try:
            parse_json(r.text, spec, finish_reason=r.finish_reason)
            status = "valid"
        except StructuredOutputError as exc:
            status = "length" if r.finish_reason == "length" else "violation"
            row["reason"] = exc.message
        return {**row, "status": status, "tokens": r.stats.generated_tokens, "finish": r.finish_reason,
                "tail": r.text[-80:]}

    run_pool(files, one, workers, emit)


def run_pool(items, one, workers: int, emit) -> None:
    """``emit(one(item))`` for every item, ``workers`` at a time (the model's slots); emits one
    at a time, in the order they finish."""
    queue, lock = collections.deque(items), threading.Lock()

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                item = queue.popleft()
            row = one(item)
            with lock:
                emit(row)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def loop_stats(tokens: list[int]) -> tuple[bool, float]:
    """(looping, distinct-2): a 4-token sequence 4+ times; unique token pairs / pairs."""
    grams = collections.Counter(tuple(tokens[i:i + 4]) for i in range(len(tokens) - 3))
    looping = bool(grams) and max(grams.values()) >= 4
    pairs = [tuple(tokens[i:i + 2]) for i in range(len(tokens) - 1)]
    return looping, (len(set(pairs)) / len(pairs) if pairs else 1.0)


def run_chat(model, setting: str, max_tokens: int, workers: int, emit) -> None:
    prompts = [p.strip() for p in CHAT_PROMPTS.read_text().splitlines() if p.strip() and not p.startswith("#")]
    params = SETTINGS[setting]

    def one(item) -> dict:
        i, prompt = item
        r = model.chat([{"role": "user", "content": prompt}], max_tokens=max_tokens, **params).wait()
        looping, distinct = loop_stats(r.tokens)
        return {"task": "chat", "setting": setting, "prompt": i, "finish": r.finish_reason,
                "tokens": r.stats.generated_tokens, "looping": looping, "distinct2": distinct, "tail": r.text[-80:]}

    run_pool(enumerate(prompts), one, workers, emit)


def answered(text: str, answers: list[str]) -> bool:
    import re
    return any(re.search(r"(?<![\w.])" + re.escape(a.lower()) + r"(?![\w])", text.lower()) for a in answers)


def run_facts(model, setting: str, max_tokens: int, workers: int, emit) -> None:
    cases = [json.loads(line) for line in FACT_PROMPTS.read_text().splitlines() if line.strip()]
    params = SETTINGS[setting]

    def one(item) -> dict:
        i, case = item
        r = model.chat([{"role": "user", "content": case["question"]}], max_tokens=max_tokens, **params).wait()
        return {"task": "facts", "setting": setting, "prompt": i, "finish": r.finish_reason,
                "correct": answered(r.text, case["answers"]), "tokens": r.stats.generated_tokens,
                "text": r.text[:120]}

    run_pool(enumerate(cases), one, workers, emit)


def load_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report(rows: list[dict]) -> str:
    lines = []
    for sample in ("dev", "heldout"):
        mine = [r for r in rows if r["task"] == "json" and r["sample"] == sample]
        if not mine:
            continue
        lines += [f"### Constrained JSON, {'development' if sample == 'dev' else 'held-out'} sample", "",
                  "| setting | schemas | valid | valid of compiled | length | violation | refused | error | "
                  "mean tokens (valid) |", "|---|---|---|---|---|---|---|---|---|"]
        for setting in [s for s in SETTINGS if any(r["setting"] == s for r in mine)]:
            rs = [r for r in mine if r["setting"] == setting]
            c = collections.Counter(r["status"] for r in rs)
            n, compiled = len(rs), len(rs) - c["refused"]
            toks = [r["tokens"] for r in rs if r["status"] == "valid"]
            if n < len(sample_files(sample)):
                continue  # a run stopped part way: its share would mislead
            lines.append(f"| {setting} | {n} | {c['valid']} ({c['valid'] / n:.0%}) | "
                         f"{c['valid'] / max(1, compiled):.0%} | {c['length']} | {c['violation']} | {c['refused']} | "
                         f"{c['error']} | {sum(toks) / max(1, len(toks)):.0f} |")
        lines.append("")
    chat = [r for r in rows if r["task"] == "chat"]
    if chat:
        lines += ["### Chat replies", "", "| setting | prompts | ended by themselves | looping | "
                  "distinct-2 (mean) | mean tokens |", "|---|---|---|---|---|---|"]
        for setting in [s for s in SETTINGS if any(r["setting"] == s for r in chat)]:
            rs = [r for r in chat if r["setting"] == setting]
            n = len(rs)
            ended = sum(r["finish"] == "stop" for r in rs)
            loops = sum(r["looping"] for r in rs)
            lines.append(f"| {setting} | {n} | {ended} ({ended / n:.0%}) | {loops} ({loops / n:.0%}) | "
                         f"{sum(r['distinct2'] for r in rs) / n:.2f} | {sum(r['tokens'] for r in rs) / n:.0f} |")
    facts = [r for r in rows if r["task"] == "facts"]
    if facts:
        lines += ["", "### Short factual questions", "", "| setting | questions | reply holds the answer | "
                  "ended by themselves | mean tokens |", "|---|---|---|---|---|"]
        for setting in [s for s in SETTINGS if any(r["setting"] == s for r in facts)]:
            rs = [r for r in facts if r["setting"] == setting]
            n, ok = len(rs), sum(r["correct"] for r in rs)
            ended = sum(r["finish"] == "stop" for r in rs)
            lines.append(f"| {setting} | {n} | {ok} ({ok / n:.0%}) | {ended} ({ended / n:.0%}) | "
                         f"{sum(r['tokens'] for r in rs) / n:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=["json", "chat", "facts"], default="json")
    ap.add_argument("--sample", choices=["dev", "heldout"], default="dev")
    ap.add_argument("--settings", default="greedy")
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-tokens", type=int, default=None, help="512 for json, 256 for chat, 64 for facts")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (1 holds up best on a busy machine)")
    ap.add_argument("--rows", type=Path, default=ROWS)
    ap.add_argument("--report", action="store_true", help="only write the tables from --rows")
    a = ap.parse_args()
    if not a.report:
        import slmrun

        out = a.rows.open("a")

        def emit(row):
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(row.get("setting"), row.get("file", row.get("prompt")), row.get("status", row.get("finish")),
                  row.get("tokens"), file=sys.stderr)

        with slmrun.load(a.model, n_ctx=4096, n_parallel=a.workers, n_threads=a.threads,
                         n_threads_batch=a.threads) as model:
            for setting in a.settings.split(","):
                t0, load0 = time.perf_counter(), os.getloadavg()[0]
                if a.task == "json":
                    run_json(model, setting, sample_files(a.sample), a.sample, a.max_tokens or 512, a.workers, emit)
                elif a.task == "chat":
                    run_chat(model, setting, a.max_tokens or 256, a.workers, emit)
                else:
                    run_facts(model, setting, a.max_tokens or 64, a.workers, emit)
                print(f"{setting}: {time.perf_counter() - t0:.0f} s, load {load0:.1f} -> {os.getloadavg()[0]:.1f}",
                      file=sys.stderr)
    body = report(load_rows(a.rows))
    write_marked(OUT, "<!-- sampling:begin -->", "<!-- sampling:end -->",
                 f"<!-- sampling:begin -->\n{body}\n<!-- sampling:end -->", title="# Structured output")
    print(body)


if __name__ == "__main__":
    main()
