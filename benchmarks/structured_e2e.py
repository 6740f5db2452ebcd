#!/usr/bin/env python3
"""Structured output with a model: does the output validate, how fast, and how good is classify?

1. JSONSchemaBench end to end (the 270 schemas of ../shared/jsonschemabench/, or --data):
   for each schema the default model is asked, greedily, for one valid instance (the paper's
   setting: the schema in the system prompt), once constrained by the schema and once not,
   within 512 tokens. The share whose output validates (jsonschema, through
   slmrun.structured.parse_json) per split, beside the paper's figures.
2. Speed on the same prompts: generated tokens/s of each request (Stats.gen_tps, the real
   path) constrained vs unconstrained, and the share of tokens the grammar forced.
3. Classification on benchmarks/data/classify_set.jsonl (48 short texts written for this
   benchmark, three tasks: sentiment, spam, topic): accuracy and expected calibration error
   of ``Model.classify`` (label probabilities from the model's log-probabilities) against
   sampled-text classification (the model asked for the label, 5 samples at temperature 0.8,
   the majority as the answer and its share as the confidence).

Writes the "End to end" and "Classification" blocks of benchmarks/STRUCTURED.md (between
their markers; structured_grammar.py keeps them when it rewrites the rest).

    .venv/bin/python benchmarks/structured_e2e.py [--limit N] [--skip-e2e] [--skip-classify]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_tools import write_marked  # noqa: E402
from structured_grammar import DATA, OUT, e2e_messages  # noqa: E402

CLASSIFY_SET = Path(__file__).resolve().parent / "data" / "classify_set.jsonl"
PAPER = {"Github_hard": "Guidance 41%, llama.cpp 39%, XGrammar 28%, Outlines 3% (Llama-3.1-8B)",
         "Glaiveai2K": "every framework above 86% (Llama-3.1-8B)"}


def write_block(path: Path, name: str, body: str) -> None:
    """Put ``body`` between <!-- name:begin --> and <!-- name:end --> in the file (appended if absent)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    write_marked(path, begin, end, f"{begin}\n{body.rstrip()}\n{end}", title="# Structured output")


# ------------------------------------------------------------------ 1 and 2: JSONSchemaBench

def run_e2e(model, files: list[Path], max_tokens: int, workers: int) -> list[dict]:
    from slmrun.errors import SlmrunError, StructuredOutputError
    from slmrun.structured import constraint_spec, parse_json

    jobs = []
    for path in files:
        case = json.loads(path.read_text())
        row = {"file": path.name, "split": path.name.split("---")[0]}
        try:
            spec = constraint_spec(json_schema=case["schema"])
        except SlmrunError as exc:
            jobs.append(({**row, "status": "refused", "reason": exc.message}, None, None))
            continue
        for constrained in (True, False):
            jobs.append(({**row, "constrained": constrained}, case["schema"], spec))
    out, lock, queue = [], threading.Lock(), collections.deque(jobs)

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                row, schema, spec = queue.popleft()
            if spec is None:
                with lock:
                    out.append(row)
                continue
            kwargs = {"json_schema": schema} if row["constrained"] else {}
            try:
                r = model.chat(e2e_messages(schema), temperature=0, max_tokens=max_tokens, **kwargs).wait()
            except SlmrunError as exc:
                row.update(status="error", reason=exc.message)
                with lock:
                    out.append(row)
                continue
            try:
                parse_json(r.text, spec, finish_reason=r.finish_reason)
                status = "valid"
            except StructuredOutputError as exc:
                status, row["reason"] = "invalid", exc.message
            st = r.stats
            row.update(status=status, tokens=st.generated_tokens, forced=st.forced_tokens, gen_tps=st.gen_tps,
                       finish=r.finish_reason)
            with lock:
                out.append(row)
            print(f"{row['file']} {'constrained' if row['constrained'] else 'free'}: {status} "
                  f"({st.generated_tokens} tokens)", file=sys.stderr)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def e2e_report(rows: list[dict], *, model_name: str, max_tokens: int, seconds: float, load) -> str:
    splits = sorted({r["split"] for r in rows})
    lines = ["## End to end with the default model", "",
             f"`{' '.join(['benchmarks/structured_e2e.py', *sys.argv[1:]])}` with {model_name}: for every schema "
             "(with --limit N: N of them, evenly spread over the sorted files), greedy decoding asked for one "
             f"valid instance (the schema in the system prompt), at most {max_tokens} tokens, constrained by the "
             "schema and not; an output counts when it parses and validates (jsonschema). A refused schema counts "
             f"as a failure for the constrained run. Whole run {seconds / 60:.0f} min, load average "
             f"{load[0]:.1f} → {load[1]:.1f}.", "",
             "| split | schemas | refused | valid, constrained | valid, unconstrained | the paper (8B) |",
             "|---|---|---|---|---|---|"]
    totals = [0, 0, 0, 0]
    for split in splits + ["all"]:
        mine = [r for r in rows if split == "all" or r["split"] == split]
        schemas = {r["file"] for r in mine}
        refused = {r["file"] for r in mine if r["status"] == "refused"}
        c_ok = sum(1 for r in mine if r.get("constrained") and r["status"] == "valid")
        f_ok = sum(1 for r in mine if r.get("constrained") is False and r["status"] == "valid")
        n = len(schemas)
        name = f"**{split}**" if split == "all" else split
        lines.append(f"| {name} | {n} | {len(refused)} | {c_ok} ({c_ok / n:.0%}) | {f_ok} ({f_ok / n:.0%}) | "
                     f"{PAPER.get(split, '')} |")
        if split == "all":
            totals = [n, len(refused), c_ok, f_ok]
    both = {}
    for r in rows:
        if r.get("gen_tps"):
            both.setdefault(r["file"], {})[r["constrained"]] = r
    pairs = [(v[True], v[False]) for v in both.values() if True in v and False in v
             and v[True]["tokens"] > 8 and v[False]["tokens"] > 8]
    if pairs:
        ratios = [c["gen_tps"] / f["gen_tps"] for c, f in pairs]
        forced = sum(c["forced"] for c, _ in pairs) / max(1, sum(c["tokens"] for c, _ in pairs))
        lines += ["", f"Speed on the same prompts ({len(pairs)} schemas where both runs generated more than 8 tokens): "
                  f"constrained / unconstrained generated tokens/s per request (Stats.gen_tps), median "
                  f"**{statistics.median(ratios):.2f}×** (quartiles {statistics.quantiles(ratios, n=4)[0]:.2f}–"
                  f"{statistics.quantiles(ratios, n=4)[2]:.2f}); {forced:.0%} of the constrained tokens were forced "
                  "by the grammar (appended without sampling, decoded in one batch)."]
    lines += ["", f"Constrained: {totals[2]} of {totals[0]} valid; the rest were refused ({totals[1]}) or ran out of "
              "tokens (finish_reason length, which `response.json()` refuses)."]
    return "\n".join(lines)


# ------------------------------------------------------------------ 3: classification

def run_classify(model, samples: int) -> str:
    import re

    from slmrun.structured import classify_messages

    items = [json.loads(line) for line in CLASSIFY_SET.read_text().splitlines() if line.strip()]
    rows = []
    for item in items:
        c = model.classify(item["text"], item["labels"])
        votes = collections.Counter()
        for seed in range(samples):
            text = model.chat(classify_messages(item["text"], item["labels"]), temperature=0.8, seed=seed,
                              max_tokens=8).text.strip().lower()
            # The label the reply names first, anywhere in it (lenient: "Positive label: ..." counts),
            # the longer of two that start at the same place ("not spam" over "spam").
            hits = [(m.start(), -len(lab), lab) for lab in item["labels"]
                    for m in [re.search(r"\b" + re.escape(lab.lower()) + r"\b", text)] if m]
            votes[min(hits)[2] if hits else None] += 1
        answer, n = votes.most_common(1)[0]
        rows.append({"task": item["task"], "gold": item["label"], "classify": c.label,
                     "p": c.probabilities[c.label], "sampled": answer, "sampled_conf": n / samples})
        print(f"{item['task']}: gold {item['label']}, classify {c.label} ({c.probabilities[c.label]:.2f}), "
              f"sampled {answer} ({n}/{samples})", file=sys.stderr)

    def ece(pairs, bins=5):
        total, err = len(pairs), 0.0
        for b in range(bins):
            lo, hi = b / bins, (b + 1) / bins
            inside = [(conf, ok) for conf, ok in pairs if lo < conf <= hi or (b == 0 and conf == 0)]
            if inside:
                err += len(inside) / total * abs(statistics.fmean(ok for _, ok in inside)
                                                 - statistics.fmean(conf for conf, _ in inside))
        return err

    lines = ["## Classification", "",
             f"`Model.classify` against sampled-text classification on `benchmarks/data/classify_set.jsonl`: "
             f"{len(items)} short texts written for this benchmark (by the slmrun authors, public domain), "
             "balanced, in three tasks: sentiment (positive / negative), spam (spam / not spam) and topic "
             f"(sports / weather / food). Sampled text: the same chat prompt, {samples} replies at temperature "
             "0.8, the majority label (the label a reply names first, anywhere in it; a reply naming none counts "
             "as wrong) and its share as the "
             "confidence. Expected calibration error over 5 equal-width confidence bins (lower is better).", "",
             "| task | texts | classify accuracy | classify ECE | sampled accuracy | sampled ECE | sampled: no label |",
             "|---|---|---|---|---|---|---|"]
    for task in sorted({r["task"] for r in rows}) + ["all"]:
        mine = [r for r in rows if task == "all" or r["task"] == task]
        acc_c = statistics.fmean(r["classify"] == r["gold"] for r in mine)
        acc_s = statistics.fmean(r["sampled"] == r["gold"] for r in mine)
        ece_c = ece([(r["p"], r["classify"] == r["gold"]) for r in mine])
        ece_s = ece([(r["sampled_conf"], r["sampled"] == r["gold"]) for r in mine])
        none = sum(r["sampled"] is None for r in mine)
        name = f"**{task}**" if task == "all" else task
        lines.append(f"| {name} | {len(mine)} | {acc_c:.0%} | {ece_c:.2f} | {acc_s:.0%} | {ece_s:.2f} | {none} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--model", default=None)
    ap.add_argument("--limit", type=int, default=0, help="this many schemas, evenly spread (0: all)")
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--workers", type=int, default=4, help="concurrent requests (the engine batches them)")
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--skip-classify", action="store_true")
    a = ap.parse_args()
    import slmrun

    files = sorted(a.data.glob("*---*.json"))
    if a.limit and a.limit < len(files):  # an even spread over the splits, not the first split only
        step = len(files) / a.limit
        files = [files[int(i * step)] for i in range(a.limit)]
    with slmrun.load(a.model, n_ctx=4096, n_parallel=a.workers) as model:
        if not a.skip_e2e:
            t0, load0 = time.perf_counter(), os.getloadavg()[0]
            rows = run_e2e(model, files, a.max_tokens, a.workers)
            write_block(a.out, "e2e", e2e_report(rows, model_name=model.name, max_tokens=a.max_tokens,
                                                 seconds=time.perf_counter() - t0, load=(load0, os.getloadavg()[0])))
        if not a.skip_classify:
            write_block(a.out, "classify", run_classify(model, a.samples))
    print(a.out.read_text())


if __name__ == "__main__":
    main()
