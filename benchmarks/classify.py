#!/usr/bin/env python3
"""Classification by embeddings and by generation: accuracy, macro-F1, calibration and texts/s.

Data (benchmarks/data/, written for this benchmark; see data/NOTE.md): topics.jsonl (300 short
news sentences over 5 topics) and spam.jsonl (80 short messages, spam / ham), each with a
train / test split. Every figure is on the test split; the train split gives the few-shot
examples (the first k per label) and fits temperatures.

Methods:
- embedding (``--embed-model``, all-MiniLM-L6-v2 converted to GGUF): zero-shot from label names
  and from label descriptions (prototypes), few-shot nearest centroid at k = 1, 5 and all
  examples per label (``slmrun.EmbeddingClassifier``), and for comparison a logistic regression
  (numpy, L2) on the same embeddings;
- the same embedding method with the default generative model's embeddings;
- generative (``Model.classify``, the default model): zero-shot and one example per label in
  the prompt, uncalibrated, calibrated by content-free inputs, and by the batch prior.

    .venv/bin/python benchmarks/classify.py --embed-model minilm-l6 [--threads N]
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from llama_tools import analysis_block, write_marked  # noqa: E402

OUT = HERE / "CLASSIFY.md"
SETS = {
    "topics": {"business": "business, the economy, companies, markets and money",
               "entertainment": "entertainment: film, music, television, books and the arts",
               "politics": "politics: government, parliament, elections and diplomacy",
               "sport": "sport: football, tennis, athletics, games and competitions",
               "technology": "technology: computers, phones, the internet, software and gadgets"},
    "spam": {"spam": "spam: unsolicited advertising, scams, prizes and offers",
             "ham": "a normal personal or work message"},
}


def load_set(name: str):
    rows = [json.loads(line) for line in (HERE / "data" / f"{name}.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "test"]


def first_k(train, labels, k):
    out = []
    for label in labels:
        out += [(r["text"], r["label"]) for r in train if r["label"] == label][:k]
    return out


def figures(gold, results, seconds, labels):
    from slmrun.classification import scoring

    pred = [c.label for c in results]
    conf = [c.probabilities[c.label] for c in results]
    counts = collections.Counter(pred)
    top2 = sum(n for _, n in counts.most_common(2))
    return {"accuracy": scoring.accuracy(gold, pred), "macro_f1": scoring.macro_f1(gold, pred, labels),
            "ece": scoring.expected_calibration_error(conf, [g == p for g, p in zip(gold, pred)]),
            "texts_s": len(gold) / seconds if seconds > 0 else 0.0, "top2": top2, "n": len(gold)}


# --- embedding -----------------------------------------------------------------------------------

def logistic_regression(X, y, k, *, l2=1e-3, steps=500, lr=2.0):
    """Multinomial logistic regression by full-batch gradient descent (numpy); returns (W, b)."""
    import numpy as np

    n, d = X.shape
    W, b = np.zeros((d, k)), np.zeros(k)
    Y = np.eye(k)[y]
    for _ in range(steps):
        z = X @ W + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - Y) / n
        W -= lr * (X.T @ g + l2 * W)
        b -= lr * g.sum(axis=0)
    return W, b


def run_embedding(model, tag, train, test, described, rows):
    import numpy as np

    from slmrun.classification import EmbeddingClassification, EmbeddingClassifier, scoring

    labels = list(described)
    gold = [r["label"] for r in test]
    texts = [r["text"] for r in test]
    small = not model.is_embedding_model  # a generative model embeds slowly: fewer rows
    for what, spec in ((("descriptions", described),) if small else (("names", labels), ("descriptions", described))):
        clf = EmbeddingClassifier(model, spec)
        t0 = time.perf_counter()
        res = clf.predict(texts)
        rows.append({"model": tag, "method": f"embedding, zero-shot ({what})",
                     **figures(gold, res, time.perf_counter() - t0, labels)})
    k_all = min(collections.Counter(r["label"] for r in train).values())
    for k in ([k_all] if small else sorted({1, 5, k_all})):
        clf = EmbeddingClassifier(model, labels).fit(first_k(train, labels, k))
        t0 = time.perf_counter()
        res = clf.predict(texts)
        rows.append({"model": tag, "method": f"embedding, {k}-shot centroid + name (T={clf.temperature:.3g})",
                     **figures(gold, res, time.perf_counter() - t0, labels)})
    if small:
        return None
    # logistic regression on the same embeddings, all training examples
    ex = first_k(train, labels, k_all)
    Xtr = model.embed([t for t, _ in ex]).vectors.astype(np.float64)
    ytr = np.array([labels.index(lab) for _, lab in ex])
    W, b = logistic_regression(Xtr, ytr, len(labels))
    t0 = time.perf_counter()
    Xte = model.embed(texts).vectors.astype(np.float64)
    P = scoring.softmax(Xte @ W + b, 1.0)
    res = [EmbeddingClassification(label=labels[int(p.argmax())], probabilities=dict(zip(labels, map(float, p))),
                                   logprobs={}) for p in P]
    rows.append({"model": tag, "method": f"embedding, {k_all}-shot logistic regression",
                 **figures(gold, res, time.perf_counter() - t0, labels)})
    # the zero-shot temperature the train split would fit (label-name prototypes)
    P0 = EmbeddingClassifier(model, labels)._prototypes()
    Xtr_all = model.embed([r["text"] for r in train]).vectors
    T = scoring.fit_temperature(scoring.cosine_scores(Xtr_all, P0), [labels.index(r["label"]) for r in train])
    return T


# --- generative ----------------------------------------------------------------------------------

def run_generative(model, tag, train, test, described, rows, workers):
    from slmrun.classification import content_free_prior, recalibrated, scoring

    labels = list(described)
    gold = [r["label"] for r in test]
    texts = [r["text"] for r in test]
    for shots in (0, 1):
        examples = first_k(train, labels, shots) or None
        t0 = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            raw = list(pool.map(lambda t: model.classify(t, labels, examples=examples), texts))
        seconds = time.perf_counter() - t0
        name = "zero-shot" if not shots else f"{shots}-shot (in the prompt)"
        rows.append({"model": tag, "method": f"generative, {name}", **figures(gold, raw, seconds, labels)})
        t1 = time.perf_counter()
        prior = content_free_prior(model, labels, examples=examples)
        cf_s = time.perf_counter() - t1
        rows.append({"model": tag, "method": f"generative, {name}, calibrated (content-free)",
                     **figures(gold, [recalibrated(c, prior) for c in raw], seconds + cf_s, labels),
                     "prior": [round(float(x), 3) for x in prior]})
        batch = scoring.mean_prior([list(c.probabilities.values()) for c in raw])
        rows.append({"model": tag, "method": f"generative, {name}, calibrated (batch)",
                     **figures(gold, [recalibrated(c, batch) for c in raw], seconds, labels),
                     "prior": [round(float(x), 3) for x in batch]})


def table(rows, set_name):
    lines = [f"### {set_name}", "", "| model | method | accuracy | macro-F1 | ECE | texts/s | in the 2 most chosen labels |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['accuracy']:.2f} | {r['macro_f1']:.2f} | {r['ece']:.2f} | "
                     f"{r['texts_s']:.1f} | {r['top2']} of {r['n']} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--embed-model", default="minilm-l6")
    ap.add_argument("--model", default=None, help="the generative model (default: the default model)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workers", type=int, default=4, help="texts classified at once by the generative model")
    ap.add_argument("--sets", default="topics,spam")
    ap.add_argument("--skip-generative", action="store_true")
    ap.add_argument("--skip-generative-embeddings", action="store_true")
    a = ap.parse_args()
    import slmrun

    t_start, load0 = time.perf_counter(), os.getloadavg()[0]
    results, temps = {}, {}
    with slmrun.load(a.embed_model, n_threads=a.threads, n_threads_batch=a.threads) as emb, \
            slmrun.load(a.model, n_parallel=a.workers, n_ctx=2048, n_threads=a.threads,
                        n_threads_batch=a.threads) as gen:
        for set_name in a.sets.split(","):
            train, test = load_set(set_name)
            rows = results[set_name] = []
            temps[set_name] = run_embedding(emb, emb.name, train, test, SETS[set_name], rows)
            if not a.skip_generative_embeddings:
                run_embedding(gen, gen.name, train, test, SETS[set_name], rows)
            if not a.skip_generative:
                run_generative(gen, gen.name, train, test, SETS[set_name], rows, a.workers)
            for r in rows:
                print(json.dumps(r), file=sys.stderr)
        emb_name, gen_name = emb.name, gen.name
    minutes = (time.perf_counter() - t_start) / 60
    lines = ["# Classification: embeddings and generation", "",
             f"`{' '.join(['benchmarks/classify.py', *sys.argv[1:]])}`: embedding model {emb_name}, generative model "
             f"{gen_name}; whole run {minutes:.0f} min on a shared 2-core machine (load average {load0:.1f} → "
             f"{os.getloadavg()[0]:.1f}; texts/s move with the other jobs: compare rows, not runs). Test splits: "
             + ", ".join(f"{k} {len(load_set(k)[1])} texts" for k in results) + ". ECE: expected calibration error "
             "over 10 confidence bins (lower is better). texts/s: embedding in one call per method (batched "
             f"on the engine); generative {a.workers} texts at once.", ""]
    for set_name, rows in results.items():
        lines += table(rows, set_name) + [""]
    lines += ["Zero-shot temperature the train split fits (label-name prototypes, "
              f"{emb_name}): " + ", ".join(f"{k} {v:.3f}" for k, v in temps.items()) + ".", ""]
    lines += analysis_block(OUT)
    OUT.write_text("\n".join(lines))
    print(OUT.read_text())


if __name__ == "__main__":
    main()
