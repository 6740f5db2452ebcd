"""KNOWLEDGE.md from benchmarks/knowledge.py's figures (the tables; the hand-written analysis
block is kept when the script runs again)."""

from __future__ import annotations

import json
import sys
import time

from llama_tools import analysis_block, write_marked


def f3(x):
    return f"{x:.2f}"


def write_report(args, info, index_s, retrieval, fusion, thresholds, results, speeds, rerank_s, loads):
    cmd = "PYTHONPATH=$PWD .venv/bin/python benchmarks/knowledge.py " + " ".join(sys.argv[1:])
    lines = ["<!-- knowledge:begin -->", f"`{cmd}` ({time.strftime('%Y-%m-%d %H:%M')}; load average "
             f"{loads[0]:.1f} at the start, {loads[1]:.1f} at the end, on 2 cores shared with other jobs"
             + (": timings are upper bounds)" if max(loads) >= 1.5 else ")"), "",
             f"Embedding model: `{args.embed}`; answering model: `{args.model}`"
             + (f"; other model: `{args.other_label or args.other}`" if args.other else "")
             + f". The shop's knowledge base: {info['documents']} documents, {info['chunks']} chunks "
             f"({info['faq_entries']} FAQ entries), indexed in {index_s:.1f} s ({info['chunks'] / index_s:.0f} "
             "chunks/s, embeddings included).", "",
             "### Retrieval (held-out questions: FAQ paraphrases and questions answered only in the documents)", "",
             "| method | FAQ hit@1 | FAQ hit@5 | document hit@1 | document hit@5 | all hit@1 | all hit@5 |",
             "|---|---|---|---|---|---|---|"]
    for label, r in retrieval.items():
        lines.append(f"| {label} | {f3(r['faq'][0])} | {f3(r['faq'][1])} | {f3(r['doc'][0])} | {f3(r['doc'][1])} "
                     f"| {f3(r['all'][0])} | {f3(r['all'][1])} |")
    n = next(iter(retrieval.values()))
    cost = "; ".join(f"{name} {s:.2f} s" for name, s in rerank_s.items())
    lines += ["", f"{n['faq'][2]} FAQ paraphrases and {n['doc'][2]} document questions held out. A hit: a passage "
              "from the expected file under the expected heading. Reranking reorders the hybrid top 5 "
              "(hit@5 cannot change)" + (f"; it cost, a passage (median, 5 scored side by side): {cost}." if cost
                                         else "."), "",
              f"Calibrated on the other half: fusion k={fusion[0]}, lexical weight {fusion[1]}; verbatim FAQ answer "
              f"at question similarity >= {thresholds.faq_similarity:.2f}; abstain when the best passage's cosine "
              f"< {thresholds.min_dense:.2f}.", "",
              "### Answers (held-out: answerable and unanswerable questions)", "",
              "| model, method | answered (of answerable) | correct (of answerable) | correct (of answered) "
              "| right source cited | abstention precision | abstention recall | p50 s | p95 s | how |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for label, (m, _) in results.items():
        how = ", ".join(f"{k} {v}" for k, v in sorted(m["by"].items()))
        lines.append(f"| {label} | {f3(m['answered'])} | {f3(m['correct'])} | {f3(m['correct_of_answered'])} | "
                     f"{f3(m['cited_right'])} | {f3(m['abst_precision'])} | {f3(m['abst_recall'])} | {m['p50']:.2f} "
                     f"| {m['p95']:.2f} | {how} |")
    m0 = next(iter(results.values()))[0]
    lines += ["", f"{m0['n_an']} answerable and {m0['n_un']} unanswerable held-out questions (off-topic and "
              "on-topic-but-absent). Correct: the answer contains one of the question's expected facts. The answers "
              "themselves: KNOWLEDGE.answers.jsonl.", ""]
    if speeds:
        lines += speed_table(speeds)
    lines.append("<!-- knowledge:end -->")
    write_marked(args.out, "<!-- knowledge:begin -->", "<!-- knowledge:end -->", "\n".join(lines),
                 title="# Knowledge bases: retrieval, grounded answers, abstention, speed")
    text = args.out.read_text()
    if "<!-- analysis:begin -->" not in text:
        args.out.write_text(text + "\n## How to read it\n\n" + "\n".join(analysis_block(args.out)))
    args.out.with_suffix(".answers.jsonl").write_text("".join(
        json.dumps({"run": label, "id": r["q"]["id"], "question": r["q"]["question"], "answer": r["answer"],
                    "abstained": r["abstained"], "method": r["method"], "seconds": round(r["s"], 3)},
                   ensure_ascii=False) + "\n" for label, (_, rows) in results.items() for r in rows))


def speed_table(speeds) -> list[str]:
    from slmrun.units import format_bytes

    lines = ["### Speed (synthetic chunks plus the shop's documents)", "",
             "| chunks | embeddings | indexing chunks/s | peak RSS growth while indexing | database | first query "
             "(reads vectors) | lexical p50 / p95 ms | dense p50 / p95 ms | hybrid p50 / p95 ms | exact cosine top-50 ms "
             "| full answer p50 / p95 s | load average |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in speeds:
        lat = s["lat"]
        lines.append(f"| {s['n']} | {'the embedding model' if s['real'] else 'random vectors'} | {s['rate']:.0f} | "
                     f"{format_bytes(s['rss'])} | {format_bytes(s['size'])} | {s['cold'] * 1000:.0f} ms | "
                     + " | ".join(f"{lat[m][0] * 1000:.1f} / {lat[m][1] * 1000:.1f}" for m in ("lexical", "dense", "hybrid"))
                     + f" | {s['matmul'] * 1000:.2f} | {s['full'][0]:.2f} / {s['full'][1]:.2f} "
                     f"| {s['load'][0]:.1f} -> {s['load'][1]:.1f} |")
    return lines + ["", "At the larger size the vectors are random unit vectors written by the same indexer (embedding "
                    "50k chunks with MiniLM on 2 shared cores takes hours; the rate with real embeddings is the smaller "
                    "size's): search cost depends on their number, not their values. Query latency includes "
                    "embedding the question. Peak RSS growth: the process's high-water mark over its RSS before "
                    "indexing (models already loaded). The full answer forces the model's path (no verbatim FAQ, no "
                    "abstention) on 6 questions."]
