"""Knowledge bases, measured: retrieval, grounded answers, abstention, speed -> KNOWLEDGE.md.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/knowledge.py [--embed minilm-l6] [--model smollm2-135m]
        [--other PATH.gguf] [--sizes 1000,50000]

Data: benchmarks/knowledge_data/ (a fictional bike shop's FAQ, handbook and web page, and 121
questions of four kinds; its NOTE.md says how they were written). Questions on even lines
calibrate (the fusion's k and lexical weight, the FAQ and abstention thresholds); every figure
reported is on the odd lines, held out. Knowledge bases are built in a temporary SLMRUN_HOME.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from knowledge_report import write_report  # noqa: E402
from llama_tools import loadavg, log  # noqa: E402

DATA = HERE / "knowledge_data"
OUT = HERE / "KNOWLEDGE.md"


def load_questions():
    qs = [json.loads(line) for line in (DATA / "questions.jsonl").read_text().splitlines() if line.strip()]
    return qs[0::2], qs[1::2]  # calibration, held out


def answerable(q) -> bool:
    return q["kind"] in ("faq", "doc")


def is_hit(q, source, heading) -> bool:
    return (source, heading) == (q["source"], q["heading"])


def contains_fact(q, text: str) -> bool:
    return any(f.lower() in text.lower() for f in q.get("facts", []))


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else float("nan")


# --- retrieval -------------------------------------------------------------------------------

def ranked(kb, qs, emb):
    """Per question: lexical and dense candidate ids (50 each), and each id's (source, heading)."""
    out = {}
    for q in qs:
        lex = [h.id for h in kb.search(q["question"], 50, mode="lexical")]
        den = [h.id for h in kb.search(q["question"], 50, mode="dense", embed_with=emb)]
        out[q["id"]] = (lex, den)
    rows = kb._conn.execute("SELECT c.id, d.source, c.heading FROM chunks c JOIN documents d ON d.id = c.doc_id")
    return out, {i: (s, h) for i, s, h in rows}


def hit_rates(qs, lists, key, order):
    """{kind: (hit@1, hit@5, n)} for ``order(lex, den) -> ids``."""
    res = {}
    for kind in ("faq", "doc", "all"):
        sel = [q for q in qs if answerable(q) and (kind == "all" or q["kind"] == kind)]
        h1 = h5 = 0
        for q in sel:
            ids = order(*lists[q["id"]])[:5]
            ok = [is_hit(q, *key[i]) for i in ids]
            h1 += bool(ok and ok[0])
            h5 += any(ok)
        res[kind] = (h1 / len(sel), h5 / len(sel), len(sel))
    return res


def calibrate_fusion(cal, lists, key):
    from slmrun.knowledge.decide import rrf

    best = None
    for k in (2, 5, 10, 20, 60):
        for w in (0.1, 0.2, 0.35, 0.5, 0.7, 1.0):
            r = hit_rates(cal, lists, key, lambda lex, den: [i for i, _ in rrf([lex, den], k=k, weights=[w, 1.0])])
            score = (r["all"][0], r["all"][1])
            if best is None or score > best[0]:
                best = (score, k, w)
    return best[1], best[2]


# --- abstention thresholds ----------------------------------------------------------------------

def signals_for(kb, qs, emb, fusion):
    from slmrun.knowledge.retrieve import signals

    out = {}
    for q in qs:
        hits = kb.retriever.search(q["question"], 5, embedder=kb.embedder(emb), weights=(fusion[1], 1.0),
                                   rrf_k=fusion[0])
        faq = kb.retriever.best_faq(q["question"], hits)
        s = signals(q["question"], hits, faq)
        out[q["id"]] = (s, faq is not None and answerable(q) and is_hit(q, faq.source, faq.heading))
    return out


def calibrate_thresholds(cal, sig):
    """faq_similarity: the lowest threshold whose verbatim answers on the calibration questions are
    all right; min_dense: the highest share of answerable questions kept while >= 90% of the
    unanswerable ones are refused."""
    grid = [x / 100 for x in range(30, 100)]
    faq_t = 0.99
    for t in grid:
        chosen = [(q, sig[q["id"]]) for q in cal if sig[q["id"]][0].best_faq_similarity is not None
                  and sig[q["id"]][0].best_faq_similarity >= t]
        if chosen and all(right for _, (_, right) in chosen):
            faq_t = t
            break
    un = [q for q in cal if not answerable(q)]
    an = [q for q in cal if answerable(q)]
    best = (0.0, 0.0)
    for t in grid:
        recall = sum(sig[q["id"]][0].best_dense < t for q in un) / len(un)
        kept = sum(sig[q["id"]][0].best_dense >= t for q in an) / len(an)
        if recall >= 0.9 and kept > best[0]:
            best = (kept, t)
    return faq_t, best[1]


# --- answers ------------------------------------------------------------------------------------

def answer_run(kb, qs, emb, model, method, thresholds, rerank=False):
    rows = []
    for q in qs:
        t0 = time.perf_counter()
        a = kb.ask(q["question"], model=model, method=method, embed_with=emb, thresholds=thresholds, rerank=rerank)
        rows.append({"q": q, "answer": a.answer, "abstained": a.abstained, "method": a.method,
                     "s": time.perf_counter() - t0, "sources": a.sources})
    return rows


def answer_metrics(rows):
    an = [r for r in rows if answerable(r["q"])]
    un = [r for r in rows if not answerable(r["q"])]
    abst = [r for r in rows if r["abstained"]]
    answered = [r for r in an if not r["abstained"]]
    correct = [r for r in answered if contains_fact(r["q"], r["answer"])]
    cited = [r for r in answered if any(is_hit(r["q"], s["source"], s.get("heading")) for s in r["sources"])]
    by = {}
    for r in rows:
        by[r["method"]] = by.get(r["method"], 0) + 1
    return {"answered": len(answered) / len(an), "correct": len(correct) / len(an),
            "correct_of_answered": len(correct) / len(answered) if answered else float("nan"),
            "cited_right": len(cited) / len(answered) if answered else float("nan"),
            "abst_precision": sum(not answerable(r["q"]) for r in abst) / len(abst) if abst else float("nan"),
            "abst_recall": sum(r["abstained"] for r in un) / len(un),
            "p50": pct([r["s"] for r in rows], 50), "p95": pct([r["s"] for r in rows], 95),
            "p50_model": pct([r["s"] for r in rows if r["method"] in ("extracted", "generated")
                              or (r["abstained"] and r["s"] > 0.2)], 50),
            "by": by, "n_an": len(an), "n_un": len(un)}


# --- speed --------------------------------------------------------------------------------------

WORDS = ("wheel brake chain gear saddle frame tyre pedal spoke hub cable lever rim valve pump light lock helmet "
         "route hill river bridge town market station garden ride tour rider mechanic workshop service season "
         "weather morning evening weekend club race path road track trail gravel mud rain wind sun winter summer").split()


def synthetic_corpus(folder: Path, n_chunks: int, seed: int = 0) -> None:
    """n_chunks paragraphs of ~600 characters (one chunk each), 200 to a file."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    for f in range(0, n_chunks, 200):
        paras = []
        for _ in range(min(200, n_chunks - f)):
            sentences = []
            while sum(len(s) + 1 for s in sentences) < 600:
                words = rng.choices(WORDS, k=rng.randint(8, 16))
                sentences.append(" ".join(words).capitalize() + ".")
            paras.append(" ".join(sentences))
        (folder / f"notes-{f // 200:04d}.txt").write_text("\n\n".join(paras) + "\n")


class RandomVectors:
    """Unit vectors at random, for a corpus too large to embed here in a benchmark's time (the
    embedding model's own rate is the indexing figure at the smaller size): what search costs
    depends on how many vectors there are, not on their values."""

    def __init__(self, like):
        self.n_embd, self.path, self.rng = like.n_embd, like.path, __import__("numpy").random.default_rng(0)

    def embed(self, texts, **kw):
        import numpy as np

        v = self.rng.standard_normal((len(texts), self.n_embd)).astype(np.float32)
        return type("E", (), {"vectors": v / np.linalg.norm(v, axis=1, keepdims=True)})()


REAL_EMBED_MAX = 2000  # above this many chunks the speed corpus gets RandomVectors (hours to embed here)


def rss_peak_reset() -> int:
    """Reset this process's peak RSS (Linux: /proc/self/clear_refs) and return the RSS now, bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS") * 1024


def rss_peak() -> int:
    return _status_kb("VmHWM") * 1024


def _status_kb(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def speed(emb, model, sizes, questions, work: Path, thresholds):
    import slmrun
    from slmrun.knowledge import Thresholds

    out = []
    force = Thresholds(faq_similarity=1.01, min_dense=-1.0)  # always reach the model: its latency
    for n in sizes:
        corpus = work / f"synthetic-{n}"
        synthetic_corpus(corpus / "notes", n)
        load = loadavg()
        rss0 = rss_peak_reset()
        t0 = time.perf_counter()
        real = n <= REAL_EMBED_MAX
        kb = slmrun.create_knowledge_base(f"speed-{n}", [corpus / "notes", DATA / "shop"],
                                          embed=emb if real else RandomVectors(emb))
        index_s = time.perf_counter() - t0
        rss_growth = rss_peak() - rss0
        chunks = kb.info()["chunks"]
        t0 = time.perf_counter()
        kb.search(questions[0]["question"], 5, embed_with=emb)  # the first: reads the vectors
        cold = time.perf_counter() - t0
        lat = {}
        for mode in ("lexical", "dense", "hybrid"):
            times = []
            for q in questions:
                t0 = time.perf_counter()
                kb.search(q["question"], 5, mode=mode, embed_with=emb)
                times.append(time.perf_counter() - t0)
            lat[mode] = (pct(times, 50), pct(times, 95))
        ids, vecs, _, _ = kb.retriever.vectors()
        qv = emb.embed(["a question"]).vectors[0]
        t0 = time.perf_counter()
        for _ in range(20):
            sims = vecs @ qv
            sims.argpartition(-50)[-50:]
        matmul = (time.perf_counter() - t0) / 20
        full = []
        for q in questions[:6]:
            t0 = time.perf_counter()
            kb.ask(q["question"], model=model, embed_with=emb, thresholds=force)
            full.append(time.perf_counter() - t0)
        out.append({"n": chunks, "real": real, "index_s": index_s, "rate": chunks / index_s, "cold": cold, "lat": lat,
                    "matmul": matmul, "full": (pct(full, 50), pct(full, 95)), "size": kb.info()["size_bytes"],
                    "rss": rss_growth, "load": (load, loadavg())})
        log(f"{chunks} chunks: indexed {chunks / index_s:.0f}/s, hybrid p50 {lat['hybrid'][0] * 1000:.1f} ms")
        kb.close()
    return out


def rerank_rows(kb, held, emb, model, key, fusion, retrieval, name) -> float:
    """Rows "hybrid + rerank by NAME's P(yes)" (alone, and half and half with the fused order)
    added to ``retrieval``; the median seconds a passage."""
    from slmrun.knowledge.decide import fuse_rerank
    from slmrun.knowledge.retrieve import rerank

    p_yes, fused, per_passage = {}, {}, []
    for q in held:
        if not answerable(q):
            continue
        hits = kb.retriever.search(q["question"], 5, embedder=kb.embedder(emb), weights=(fusion[1], 1.0),
                                   rrf_k=fusion[0])
        t1 = time.perf_counter()
        rr = rerank(model, q["question"], hits)
        per_passage.append((time.perf_counter() - t1) / max(1, len(hits)))
        fused[q["id"]] = [h.id for h in hits]
        p_yes[q["id"]] = {h.id: h.rerank for h in rr}
    for weight in (1.0, 0.5):
        reordered = {i: fuse_rerank(fused[i], p_yes[i], weight) for i in fused}
        label = f"hybrid + rerank by {name}'s P(yes)" + ("" if weight == 1.0 else f", weight {weight} with the fused order")
        retrieval[label] = hit_rates([q for q in held if answerable(q)], {i: (v, v) for i, v in reordered.items()},
                                     key, lambda lex, den: lex)
        log(f"{label}: {retrieval[label]['all']}")
    return statistics.median(per_passage)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--embed", default="minilm-l6", help="embedding model: a name or a .gguf path")
    ap.add_argument("--model", default="smollm2-135m", help="the answering model")
    ap.add_argument("--other", default=None, help="a second answering model (a .gguf path) to compare")
    ap.add_argument("--other-label", default=None)
    ap.add_argument("--sizes", default="1000,50000", help="synthetic corpus sizes for the speed figures")
    ap.add_argument("--skip-rerank", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="every 6th held-out question only (a quick check)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    import slmrun
    from slmrun.knowledge import Thresholds
    from slmrun.knowledge.decide import rrf

    emb = slmrun.load(args.embed)
    model = slmrun.load(args.model, n_parallel=4)
    other = slmrun.load(args.other, n_parallel=4) if args.other else None
    other_label = args.other_label or (Path(args.other).name if args.other else None)
    load_start = loadavg()
    work = Path(tempfile.mkdtemp(prefix="slmrun-knowledge-"))
    os.environ["SLMRUN_HOME"] = str(work / "home")  # the models above are loaded; bases go here
    cal, held = load_questions()
    if args.smoke:
        held = held[::6]

    t0 = time.perf_counter()
    kb = slmrun.create_knowledge_base("shop", [DATA / "shop"], embed=emb)
    index_s = time.perf_counter() - t0
    info = kb.info()
    log(f"indexed {info['chunks']} chunks in {index_s:.1f}s")

    lists, key = ranked(kb, cal + held, emb)
    k, w = calibrate_fusion(cal, lists, key)
    log(f"fusion calibrated: k={k}, lexical weight {w}")
    retrieval = {
        "lexical (FTS5 BM25)": hit_rates(held, lists, key, lambda lex, den: lex),
        "dense (cosine)": hit_rates(held, lists, key, lambda lex, den: den),
        "hybrid, plain RRF (k=60, equal weights)": hit_rates(held, lists, key,
                                                             lambda lex, den: [i for i, _ in rrf([lex, den])]),
        f"hybrid, calibrated RRF (k={k}, lexical weight {w})": hit_rates(
            held, lists, key, lambda lex, den: [i for i, _ in rrf([lex, den], k=k, weights=[w, 1.0])]),
    }
    rerank_s = {}
    if not args.skip_rerank:
        rerankers = [(Path(args.model).name, model)] + ([(other_label, other)] if other is not None else [])
        for name, m in rerankers:
            rerank_s[name] = rerank_rows(kb, held, emb, m, key, (k, w), retrieval, name)

    from slmrun.knowledge import retrieve as R
    R.FUSION_K, R.LEXICAL_WEIGHT = k, w  # what kb.ask() fuses with from here on
    sig = signals_for(kb, cal, emb, (k, w))
    faq_t, dense_t = calibrate_thresholds(cal, sig)
    thresholds = Thresholds(faq_similarity=faq_t, min_dense=dense_t)
    log(f"thresholds: {thresholds}")

    runs = [(f"{args.model}, extract", model, "extract"), (f"{args.model}, generate", model, "generate")]
    if other is not None:
        runs.append((f"{other_label}, extract", other, "extract"))
    results = {}
    for label, m, method in runs:
        rows = answer_run(kb, held, emb, m, method, thresholds)
        results[label] = (answer_metrics(rows), rows)
        log(f"{label}: {results[label][0]}")

    sizes = [int(s) for s in args.sizes.split(",") if s]
    speeds = speed(emb, model, sizes, [q for q in held], work, thresholds) if sizes else []
    kb.close()
    write_report(args, info, index_s, retrieval, (k, w), thresholds, results, speeds, rerank_s,
                 (load_start, loadavg()))


if __name__ == "__main__":
    main()
