"""Record llama-perplexity's own figures on the tiny test models (and on the default model),
for tests/test_evaluate_recorded.py to compare `slmrun eval` with.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/record_perplexity.py [--out FILE]

Writes the tiny models (tests/tinymodels.py, fixed seeds; the quantized one made by
llama.cpp's quantizer through slmrun.runtime.quantize), runs llama-perplexity (built from
the llama.cpp vendored in the installed llama-cpp-python, benchmarks/llama_tools.py) on
them, and writes tests/data/quality/llama_perplexity.json (or --out): for each run its command
line, the SHA-256 of every file it read, and the figures it printed (as printed, as text), and
the CPU features llama.cpp was built for (``cpu``): the last digits depend on which SIMD kernels
ran, so the tests compare exactly with a recording of the same features (record one per kind
of machine the tests run on, as llama_perplexity.<features>.json) and within 0.5% with another.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from llama_tools import build_tools, log  # noqa: E402


def _tests_tinymodels():
    """tests/tinymodels.py, the tests' own writer of the tiny models, loaded from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tinymodels", ROOT / "tests" / "tinymodels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_tiny = _tests_tinymodels()
TINY, tiny_files = _tiny.RECORDED_TINY, _tiny.recorded_tiny_files

OUT = ROOT / "tests" / "data" / "quality" / "llama_perplexity.json"
TEXT_CHARS = 3000  # of tests/data/quality/text.txt: ~3000 tokens in the tiny byte-level vocabulary

# (name, model, base, n_ctx, n_batch): base None is a perplexity run.
RUNS = [
    ("ppl_f32_c128_b512", "f32", None, 128, 512),
    ("ppl_q4km_c128_b128", "q4km", None, 128, 128),
    ("kld_q4km_c128_b512", "q4km", "f32", 128, 512),
    ("kld_other_c128_b64", "other", "f32", 128, 64),
]


def text_file(folder: Path) -> Path:
    text = (ROOT / "tests" / "data" / "quality" / "text.txt").read_text()[:TEXT_CHARS]
    path = folder / "text.txt"
    path.write_text(text)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


FIGURES = {  # name -> regex on llama-perplexity's stdout/stderr
    "chunks": r"(?:calculating perplexity|computing) over (\d+) chunks",
    "final_ppl": r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)",
    "ppl_q": r"Mean PPL\(Q\)\s*:\s*([-0-9.]+)",
    "ppl_base": r"Mean PPL\(base\)\s*:\s*([-0-9.]+)",
    "ln_ratio": r"Mean ln\(PPL\(Q\)/PPL\(base\)\)\s*:\s*([-0-9.]+)",
    "kld_mean": r"Mean    KLD:\s*([-0-9.]+)",
    "kld_max": r"Maximum KLD:\s*([-0-9.]+)",
    "kld_p99": r"99\.0%   KLD:\s*([-0-9.]+)",
    "kld_median": r"Median  KLD:\s*([-0-9.]+)",
    "same_top_pct": r"Same top p:\s*([-0-9.]+)",
}


def parse(output: str) -> dict:
    out = {}
    for name, pattern in FIGURES.items():
        m = re.search(pattern, output)
        if m:
            out[name] = m.group(1)
    return out


def shown(cmd, tmp: str) -> str:
    """A command line as recorded: the tool by its name, the temporary folder as $TMP."""
    return " ".join(Path(str(c)).name if i == 0 else str(c).replace(tmp, "$TMP") for i, c in enumerate(cmd))


REAL_RUNS = [  # on the default model (SmolLM2-135M Q4_1) and a Q2_K made from it
    ("ppl_q4_1_c256_b1024", "q4_1", None, 256, 1024),
    ("kld_q2_k_c256_b1024", "q2_k", "q4_1", 256, 1024),
]


def run_llama(exe: Path, cmds: list, tmp: str, kl: bool) -> str:
    output = ""
    for cmd in cmds:
        log(shown(cmd, tmp))
        for _ in range(20):  # its log thread loses the last lines at exit now and then (more under load): again
            p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=True)
            output = p.stdout + p.stderr
            if "--kl-divergence-base" in cmd and "--kl-divergence" not in cmd or \
                    parse(output).get("same_top_pct" if kl else "final_ppl"):  # its last line
                break
    return output


def record_real(exe: Path, folder: Path) -> dict:
    """The same comparison on the real default model, for the real_model test."""
    from slmrun.api import resolve
    from slmrun.runtime.quantize import quantize_file

    files = {"q4_1": resolve("smollm2-135m:q4_1").path}
    quantize_file(files["q4_1"], folder / "smol-q2_k.gguf", "Q2_K", allow_requantize=True, n_threads=1)
    files["q2_k"] = folder / "smol-q2_k.gguf"
    text = ROOT / "tests" / "data" / "quality" / "text.txt"
    out = {"files": {k: sha(p) for k, p in files.items()} | {"text": sha(text)}, "runs": {}}
    for name, model, base, n_ctx, n_batch in REAL_RUNS:
        common = [exe, "-f", text, "-c", n_ctx, "-b", n_batch, "-t", 2]
        if base is None:
            cmds = [common + ["-m", files[model]]]
        else:
            kl = folder / f"real-{base}.kld"
            cmds = [common + ["-m", files[base], "--kl-divergence-base", kl],
                    common + ["-m", files[model], "--kl-divergence-base", kl, "--kl-divergence"]]
        output = run_llama(exe, cmds, str(folder), base is not None)
        out["runs"][name] = {"model": model, "base": base, "n_ctx": n_ctx, "n_batch": n_batch,
                             "commands": [shown(cmd, str(folder)).replace(str(ROOT) + "/", "")
                                          .replace(str(files["q4_1"].parent), "$STORE") for cmd in cmds],
                             "printed": parse(output)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    from slmrun.runtime.llama import cpu_features

    exe = build_tools("llama-perplexity")["llama-perplexity"]
    shown_out = a.out.resolve().relative_to(ROOT) if a.out.resolve().is_relative_to(ROOT) else a.out
    record = {"note": " ".join(__doc__.split("\n\n")[0].split()), "command": "PYTHONPATH=$PWD .venv/bin/python "
              f"benchmarks/record_perplexity.py --out {shown_out}", "cpu": cpu_features(),
              "tiny": TINY, "text_chars": TEXT_CHARS, "files": {}, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = tiny_files(folder)
        text = text_file(folder)
        record["files"] = {k: sha(p) for k, p in files.items()} | {"text": sha(text)}
        for name, model, base, n_ctx, n_batch in RUNS:
            common = [exe, "-f", text, "-c", n_ctx, "-b", n_batch, "-t", 2]
            cmds = []
            if base is None:
                cmds.append(common + ["-m", files[model]])
            else:
                kl = folder / f"{base}-{n_ctx}.kld"
                cmds.append(common + ["-m", files[base], "--kl-divergence-base", kl])
                cmds.append(common + ["-m", files[model], "--kl-divergence-base", kl, "--kl-divergence"])
            output = run_llama(exe, cmds, tmp, base is not None)
            record["runs"][name] = {"model": model, "base": base, "n_ctx": n_ctx, "n_batch": n_batch,
                                    "commands": [shown(cmd, tmp) for cmd in cmds],
                                    "printed": parse(output)}
        record["real"] = record_real(exe, folder)
    a.out.write_text(json.dumps(record, indent=2) + "\n")
    log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
