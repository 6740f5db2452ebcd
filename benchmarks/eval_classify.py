#!/usr/bin/env python3
"""`slmrun eval --task classify` on a labelled set of benchmarks/data: zero-shot against few-shot
(examples from the set's train split), calibrated or not, and the embedding method, in one
run of the command a user would type; the table goes into CLASSIFY.md.

The set's rows are split by their ``split`` column into a data file (test) and a --train file
in a temporary folder; the command is printed in the .md as run, with the machine's load
average before, at its highest during, and after (the machine is shared: texts/s moves with
the other jobs; accuracy, F1 and ECE do not).

    .venv/bin/python benchmarks/eval_classify.py --set topics --shots 0,1,3 --via minilm-l6
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from llama_tools import log, write_marked  # noqa: E402

OUT = HERE / "CLASSIFY.md"


def split(name: str, folder: Path) -> tuple[Path, Path, int, int]:
    rows = [json.loads(line) for line in (HERE / "data" / f"{name}.jsonl").read_text().splitlines() if line.strip()]
    test, train = folder / f"{name}_test.jsonl", folder / f"{name}_train.jsonl"
    for path, part in ((test, "test"), (train, "train")):
        path.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n"
                                for r in rows if r["split"] == part))
    return test, train, sum(r["split"] == "test" for r in rows), sum(r["split"] == "train" for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default="topics", choices=["topics", "spam"])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--via", default="minilm-l6")
    ap.add_argument("--shots", default="0,1,3")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    exe = str(Path(sys.executable).with_name("slmrun")) if Path(sys.executable).with_name("slmrun").exists() \
        else shutil.which("slmrun")
    folder = Path(tempfile.mkdtemp(prefix="eval-classify-"))
    test, train, n_test, n_train = split(a.set, folder)
    args = ["eval", "-m", a.model, "--task", "classify", "--data", test.name, "--train", train.name,
            "--shots", a.shots, "--calibrate", "--via", a.via, "-t", str(a.threads), "--no-save"]
    loads, done = [os.getloadavg()[0]], threading.Event()

    def sample():
        while not done.wait(5):
            loads.append(os.getloadavg()[0])
    threading.Thread(target=sample, daemon=True).start()
    log("slmrun " + " ".join(args))
    t0 = time.perf_counter()
    p = subprocess.run([exe, *args, "--json"], cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    done.set()
    loads.append(os.getloadavg()[0])
    if p.returncode != 0:
        sys.exit(p.stderr)
    rows = json.loads(p.stdout)
    shutil.rmtree(folder, ignore_errors=True)

    begin, end = f"<!-- eval-classify:{a.set}:begin -->", f"<!-- eval-classify:{a.set}:end -->"
    lines = [begin, f"## `slmrun eval --task classify`: {a.set}", "",
             f"Command (`benchmarks/eval_classify.py --set {a.set} --shots {a.shots} --via {a.via}`, run from a "
             f"folder holding the set's test split as `{test.name}` ({n_test} items) and its train split as "
             f"`{train.name}` ({n_train}); `--no-save` keeps the user's store as it was):", "",
             f"    slmrun {' '.join(args)}", "",
             f"Whole run {wall / 60:.1f} min; load average {loads[0]:.2f} before, {max(loads):.2f} at most during, "
             f"{loads[-1]:.2f} after (a shared 2-core machine: texts/s moves with the other jobs; compare rows, "
             "not runs; a quiet-machine run is to come). k-shot: k examples of each label from the train split, "
             "the first in file order, in the prompt (generative) or as centroids with the label's prototype "
             "(embedding). Calibrated rows divide the batch prior (the mean over the test items) out of the "
             "row above's scores, so their texts/s is that row's.", "",
             "| model | method | shots | accuracy | macro-F1 | ECE | texts/s | peak memory |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        method = r["method"] + (f" ({r['calibration']})" if r.get("calibration") else "")
        lines.append(f"| {r['model']} | {method} | {r['shots']} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | "
                     f"{r['ece']:.3f} | {r['texts_per_s']:.1f} | {r['peak_rss'] / 2**20:.0f} MiB |")
    lines += ["", "Confusion matrices (rows: the true label; columns: the predicted one, in the order "
              f"{', '.join(rows[0]['confusion']['labels'])}):", ""]
    for r in rows:
        method = r["method"] + (f" ({r['calibration']})" if r.get("calibration") else "")
        matrix = "; ".join(" ".join(str(n) for n in row) for row in r["confusion"]["matrix"])
        lines.append(f"- {r['model']}, {method}, {r['shots']}-shot: {matrix}")
    lines.append(end)
    write_marked(OUT, begin, end, "\n".join(lines), title="# Classification")


if __name__ == "__main__":
    main()
