#!/usr/bin/env python3
"""Two tries at FAQ hit@1 beyond dense retrieval's, on knowledge.py's data and split (even lines
calibrate, odd lines are scored), printed as a table for KNOWLEDGE.md's analysis:

1. An FAQ entry scored by its question's vector as well as its whole entry's:
   (1 - a) * cos(q, entry) + a * cos(q, question), ``a`` from 0 to 1.
2. Query likelihood (UPR, Sachan et al. 2022): the hybrid top 5 reordered by the answering model's
   mean log-probability of the question's tokens after "Passage: ...\\n\\nA question this passage
   answers:", alone and plus ``w`` x the passage's cosine (``w`` calibrated).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/knowledge_trials.py [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import knowledge as K  # noqa: E402

UPR_PROMPT = "Passage: {body}\n\nA question this passage answers: "


def hit1(qs, rows, key) -> dict:
    out = {}
    for kind in ("faq", "doc", "all"):
        sel = [q for q in qs if K.answerable(q) and (kind == "all" or q["kind"] == kind)]
        out[kind] = sum(max(rows[q["id"]], key=key)[0] for q in sel) / len(sel)
    return out


def question_logprob(model, prompt: str, question: str) -> float:
    """Mean log-probability of ``question``'s tokens after ``prompt`` (teacher forcing)."""
    import numpy as np

    pt = model.tokenize(prompt, special=False)
    qt = model.tokenize(question, special=False, add_bos=False)
    r = model._submit(pt + qt, {"max_tokens": 0}, stops=(), strip_leading=False, score_from=len(pt)).wait()
    rows = np.asarray(r._s.score_rows, dtype=np.float64)[:-1]
    peak = rows.max(axis=1, keepdims=True)
    log_norm = peak[:, 0] + np.log(np.exp(rows - peak).sum(axis=1))
    return float(np.mean([rows[i, t] - log_norm[i] for i, t in enumerate(qt)]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--embed", default="minilm-l6")
    ap.add_argument("--model", default="smollm2-135m")
    a = ap.parse_args()
    import numpy as np

    import slmrun
    from slmrun.knowledge import retrieve as R

    emb, model = slmrun.load(a.embed), slmrun.load(a.model, n_parallel=4)
    os.environ["SLMRUN_HOME"] = tempfile.mkdtemp(prefix="slmrun-trials-")
    kb = slmrun.create_knowledge_base("shop", [K.DATA / "shop"], embed=emb)
    cal, held = K.load_questions()
    answerable = [q for q in cal + held if K.answerable(q)]
    ids, vecs, faq_ids, qvecs = kb.retriever.vectors()
    key = {i: (s, h) for i, s, h in kb._conn.execute(
        "SELECT c.id, d.source, c.heading FROM chunks c JOIN documents d ON d.id = c.doc_id")}
    qv = {q["id"]: np.asarray(emb.embed([q["question"]]).vectors[0]) for q in answerable}
    qpos = {int(c): j for j, c in enumerate(faq_ids)}

    lines = ["| method | calibration FAQ / doc / all hit@1 | held-out FAQ / doc / all hit@1 |", "|---|---|---|"]

    def row(name, rows, key_fn):
        c, h = hit1(cal, rows, key_fn), hit1(held, rows, key_fn)
        lines.append(f"| {name} | {c['faq']:.2f} / {c['doc']:.2f} / {c['all']:.2f} | "
                     f"{h['faq']:.2f} / {h['doc']:.2f} / {h['all']:.2f} |")

    # 1. question vectors: every chunk scored, the best taken (hit@1 over the whole base)
    for alpha in (0.0, 0.1, 0.2, 0.5, 1.0):
        rows = {}
        for q in answerable:
            s = vecs @ qv[q["id"]]
            for j, c in enumerate(ids):
                p = qpos.get(int(c))
                if p is not None:
                    s[j] = (1 - alpha) * s[j] + alpha * float(qvecs[p] @ qv[q["id"]])
            rows[q["id"]] = [(K.is_hit(q, *key[int(c)]), float(x)) for c, x in zip(ids, s)]
        row(f"dense, FAQ entries: (1 - {alpha}) cos(entry) + {alpha} cos(question)", rows, lambda r: r[1])

    # 2. query likelihood over the hybrid top 5 (the fusion knowledge.py calibrated: k=2, weight 0.1)
    R.FUSION_K, R.LEXICAL_WEIGHT = 2, 0.1
    t0, n = time.perf_counter(), 0
    rows = {}
    for q in answerable:
        hits = kb.retriever.search(q["question"], 5, embedder=kb.embedder(emb))
        scored = []
        for rank, h in enumerate(hits):
            body = f"{h.heading}\n{h.text}" if h.heading else h.text
            scored.append((K.is_hit(q, h.source, h.heading), -rank, h.dense or 0.0,
                           question_logprob(model, UPR_PROMPT.format(body=body), q["question"])))
            n += 1
        rows[q["id"]] = scored
    per_passage = (time.perf_counter() - t0) / max(1, n)
    row("hybrid (fused order)", rows, lambda r: r[1])
    row(f"hybrid top 5 by {a.model}'s log P(question given passage)", rows, lambda r: r[3])
    best = max((0.5, 1, 2, 4, 8, 16), key=lambda w: hit1(cal, rows, lambda r: r[3] + w * r[2])["all"])
    row(f"... + {best} x cosine (w calibrated)", rows, lambda r: r[3] + best * r[2])
    print("\n".join(lines))
    print(f"\nquery likelihood: {per_passage:.2f} s a passage (one at a time, 2 threads)")


if __name__ == "__main__":
    main()
