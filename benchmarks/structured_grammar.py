"""Grammar correctness and mask speed of slmrun.structured on JSONSchemaBench -> STRUCTURED.md.

    .venv/bin/python benchmarks/structured_grammar.py [--data ../shared/jsonschemabench] [--limit N]

No generation: for each schema, ``constraint_spec`` + a first ``Constraint`` on the default
model's real vocabulary (SmolLM2-135M, what generation sees) either compile or refuse it;
then every test instance, written as slmrun's generated JSON is laid out (``", "`` and
``": "``; the data's keys are already in schema order, MaskBench reordered them), is
tokenized with the model's tokenizer and fed token by token: at each token the mask is
computed and applied to a logits row, and the instance is accepted when every token was
allowed and the grammar accepts at the end. A schema passes when it compiled, every valid
instance was accepted and every invalid one rejected (MaskBench's definition). Each instance
is also checked with the jsonschema validator ``response.json()`` uses.

The model part (outputs that validate within 512 tokens, constrained against unconstrained,
tokens/s, classification) is benchmarks/structured_e2e.py; it uses this file's prompt
(``e2e_messages``) and writes its own blocks into the same report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# ../shared next to the main checkout; a worktree sits one level deeper.
DATA = next((p / "shared" / "jsonschemabench" for p in (ROOT.parent, ROOT.parent.parent)
             if (p / "shared" / "jsonschemabench").is_dir()), ROOT.parent / "shared" / "jsonschemabench")
OUT = ROOT / "benchmarks" / "STRUCTURED.md"

MASKBENCH = """\
| engine (MaskBench, all 11,306 schemas, Llama-3.1 tokenizer) | passing | compile error | accepted an invalid instance | rejected a valid instance | timeouts/crashes |
|---|---|---|---|---|---|
| LLGuidance 0.7.10 | 8,909 (78.8%) | 2,377 | 0 | 20 | 0 |
| XGrammar 0.1.17 | 8,122 (71.8%) | 90 | 1,368 | 1,408 | 278 |
| Outlines 0.2.3 | 7,050 (62.4%) | 1,773 | 822 | 1,415 | 248 |
| llama.cpp grammars (GBNF from json_schema_to_grammar) | 6,505 (57.5%) | 1,301 | 649 | 2,850 | 1 |

MaskBench mask computation per token, p50 / p99: LLGuidance 46 / 533 µs, llama.cpp grammars 17,021 / 60,371 µs."""


def instance_text(data) -> str:
    from slmrun.structured import JSON_LAYOUT

    return json.dumps(data, ensure_ascii=False, allow_nan=False,
                      separators=(JSON_LAYOUT["item_separator"], JSON_LAYOUT["key_separator"]))


def check_instance(tokenizer, spec, text: str, row, compute_us: list, apply_us: list, step_us: list):
    """(accepted, why-not) for one instance, feeding its tokens through a fresh Constraint."""
    import numpy as np

    from slmrun.errors import StructuredOutputError
    from slmrun.structured import mask_logits

    c = tokenizer.constraint(spec)
    n_vocab = tokenizer.n_vocab
    tokens = tokenizer.tokenize(text)
    for i, token in enumerate(tokens):
        row[:] = 0.0
        t0 = time.perf_counter()
        try:
            words = c.compute_mask()
        except StructuredOutputError as exc:
            return False, f"engine error at token {i}: {exc}"
        t1 = time.perf_counter()
        mask_logits(row, words[None, :], n_vocab)
        t2 = time.perf_counter()
        compute_us.append((t1 - t0) * 1e6)
        apply_us.append((t2 - t1) * 1e6)
        if row[token] == -np.inf:
            done = tokenizer.decode(tokens[:i]).decode("utf-8", "replace")
            return False, f"token {i} {tokenizer.decode([token])!r} not allowed after {done[-40:]!r}"
        if not c.commit(token):
            return False, f"commit failed at token {i}: {c.error}"
        c.forced_tokens()  # what a generating loop asks after each commit
        step_us.append((time.perf_counter() - t2) * 1e6)
    if not c.is_accepting():
        return False, "incomplete at the end"
    return True, ""


def run_file(path: Path, tokenizer, row, compute_us, apply_us, step_us) -> dict:
    from slmrun.errors import InvalidSchemaError, UnsupportedSchemaError
    from slmrun.structured import accepts, constraint_spec, is_valid

    case = json.loads(path.read_text())
    split = path.name.split("---")[0]
    result = {"file": path.name, "split": split, "status": "compiled", "valid_ok": 0, "valid_bad": 0,
              "invalid_ok": 0, "invalid_bad": 0, "validator_disagrees": 0, "token_only": 0, "notes": []}
    t0 = time.perf_counter()
    try:
        spec = constraint_spec(json_schema=case["schema"])
        t1 = time.perf_counter()
        tokenizer.constraint(spec)  # the first compile against the vocabulary
    except InvalidSchemaError as exc:
        result.update(status="invalid schema", reason=exc.message)
        return result
    except UnsupportedSchemaError as exc:
        result.update(status="unsupported", reason=exc.message)
        return result
    t2 = time.perf_counter()
    result["spec_s"], result["compile_s"] = t1 - t0, t2 - t0
    for i, test in enumerate(case["tests"]):
        text = instance_text(test["data"])
        accepted, why = check_instance(tokenizer, spec, text, row, compute_us, apply_us, step_us)
        by_bytes = accepts(spec, text)
        if test["valid"]:
            result["valid_ok" if accepted else "valid_bad"] += 1
            if not accepted:
                result["token_only"] += by_bytes
                result["notes"].append(f"valid #{i} rejected: {why}"
                                       + (" (accepted byte by byte)" if by_bytes else " (rejected byte by byte too)"))
        else:
            result["invalid_bad" if accepted else "invalid_ok"] += 1
            if accepted or by_bytes:
                result["notes"].append(f"invalid #{i} accepted ({'tokens' if accepted else 'bytes'}): "
                                       f"{test.get('description', '')[:80]}")
        if is_valid(test["data"], spec) != test["valid"]:
            result["validator_disagrees"] += 1
            result["notes"].append(f"jsonschema says {'in' if test['valid'] else ''}valid for #{i} "
                                   f"(labelled {'valid' if test['valid'] else 'invalid'})")
    result["passed"] = result["valid_bad"] == 0 and result["invalid_bad"] == 0
    return result


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def report(results: list[dict], compute_us: list, apply_us: list, step_us: list, *, model: str,
           seconds: float, load: tuple) -> str:
    from slmrun.structured import engine_version

    splits = sorted({r["split"] for r in results})
    rows = []
    totals = Counter()
    for split in splits + ["**all**"]:
        rs = results if split == "**all**" else [r for r in results if r["split"] == split]
        c = Counter()
        for r in rs:
            c["schemas"] += 1
            c[r["status"]] += 1
            c["passed"] += bool(r.get("passed"))
            for k in ("valid_ok", "valid_bad", "invalid_ok", "invalid_bad", "validator_disagrees", "token_only"):
                c[k] += r[k]
            c["schemas_valid_bad"] += r["valid_bad"] > 0
            c["schemas_invalid_bad"] += r["invalid_bad"] > 0
        if split == "**all**":
            totals = c
        n = c["schemas"]
        rows.append(f"| {split} | {n} | {c['passed']} ({100 * c['passed'] / n:.0f}%) | {c['invalid schema']} "
                    f"| {c['unsupported']} | {c['schemas_invalid_bad']} | {c['schemas_valid_bad']} "
                    f"| {c['valid_ok']}/{c['valid_ok'] + c['valid_bad']} "
                    f"| {c['invalid_ok']}/{c['invalid_ok'] + c['invalid_bad']} |")
    compile_ms = [r["compile_s"] * 1e3 for r in results if "compile_s" in r]
    spec_ms = [r["spec_s"] * 1e3 for r in results if "spec_s" in r]
    total_us = [a + b for a, b in zip(compute_us, apply_us)]
    refusals = Counter()
    for r in results:
        if "reason" in r:
            refusals[_reason_kind(r["reason"])] += 1
    slow = sorted((r for r in results if "compile_s" in r), key=lambda r: -r["compile_s"])[:5]
    lines = [
        "# Structured output: grammar correctness and speed",
        "",
        f"`benchmarks/structured_grammar.py` on the {totals['schemas']} schemas of `../shared/jsonschemabench/` "
        "(30 from each of nine JSONSchemaBench splits), no generation. llguidance "
        f"{engine_version()}, the vocabulary of {model} (49,152 tokens), Python {platform.python_version()}, "
        f"{platform.machine()}; whole run {seconds:.0f} s on a shared machine ({os.cpu_count()} cores, load average "
        f"{load[0]:.1f} at the start, {load[1]:.1f} at the end: the times below move with the other jobs).",
        "",
        "A schema is refused when `constraint_spec()` raises: *invalid* = fails the JSON Schema metaschema "
        "(jsonschema's `check_schema`), *unsupported* = llguidance cannot enforce a feature it uses. "
        "A compiled schema *passes* when every valid instance is accepted and every invalid one rejected. "
        "Instances are tokenized by the model's own tokenizer and fed one token at a time through the mask.",
        "",
        "| split | schemas | passing | refused: invalid | refused: unsupported | schemas accepting an invalid "
        "instance | schemas rejecting a valid instance | valid instances accepted | invalid instances rejected |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Of the {totals['valid_bad']} valid instances rejected, {totals['token_only']} are accepted byte by byte "
        "(`slmrun.structured.accepts`): the mask is stricter than the grammar where bytes are forced, allowing only "
        "llguidance's canonical tokens for them, so a differently split tokenization of the same text is refused. "
        "Generation is unaffected (the model is simply given the canonical tokens).",
        "",
        "For comparison, from JSONSchemaBench's MaskBench (its README, all schemas, no model):",
        "",
        MASKBENCH,
        "",
        "## Speed",
        "",
        f"- Compile time (`constraint_spec` + the first `Constraint` on the vocabulary, i.e. what a new schema "
        f"costs before its first mask; cached afterwards), over {len(compile_ms)} compiled schemas: "
        f"p50 {pct(compile_ms, 50):.1f} ms, p95 {pct(compile_ms, 95):.1f} ms, max {max(compile_ms):.0f} ms. "
        f"Of that, `constraint_spec` (mostly jsonschema's metaschema check, pure Python) is p50 "
        f"{pct(spec_ms, 50):.1f} ms, p95 {pct(spec_ms, 95):.1f} ms; a later `Constraint` of the same schema is a "
        "copy (tens of µs).",
        f"- Mask per token over {len(total_us):,} tokens: computing it (llguidance) p50 {pct(compute_us, 50):.0f} µs, "
        f"p99 {pct(compute_us, 99):.0f} µs; applying it to a float32 logits row p50 {pct(apply_us, 50):.0f} µs, "
        f"p99 {pct(apply_us, 99):.0f} µs; together p50 {pct(total_us, 50):.0f} µs, p99 {pct(total_us, 99):.0f} µs, "
        f"mean {statistics.fmean(total_us):.0f} µs. Committing the token and asking for forced tokens "
        f"(`commit` + `forced_tokens`) adds p50 {pct(step_us, 50):.0f} µs, p99 {pct(step_us, 99):.0f} µs.",
        "- Slowest compiles: " + ", ".join(f"{r['file']} {r['compile_s'] * 1e3:.0f} ms" for r in slow) + ".",
        "",
        "## Refusals",
        "",
        *(f"- {kind}: {n}" for kind, n in refusals.most_common()),
        "",
        "## Schema by schema (everything not plainly passing)",
        "",
        ANALYSIS_START + ANALYSIS_END,
        "",
    ]
    for r in results:
        if r["status"] != "compiled":
            lines.append(f"- `{r['file']}` refused ({r['status']}): {r['reason']}")
        elif r["notes"]:
            lines.append(f"- `{r['file']}`: " + "; ".join(r["notes"][:4]))
    if totals["validator_disagrees"]:
        lines += ["", f"jsonschema (the runtime validator) disagreed with the benchmark's labels on "
                      f"{totals['validator_disagrees']} instances (listed above)."]
    else:
        lines += ["", "jsonschema (the runtime validator) agreed with the benchmark's label on every instance "
                      "of every compiled schema."]
    lines += ["", "## End to end", "",
              "With the model, on the engine: `benchmarks/structured_e2e.py` writes the two blocks below (the "
              "share of schemas whose output validates, constrained and not; tokens/s; classification).", ""]
    return "\n".join(lines)


ANALYSIS_START, ANALYSIS_END = "<!-- analysis: kept when the script runs again -->\n", "<!-- /analysis -->"


def kept_analysis(path: Path) -> str:
    old = path.read_text() if path.is_file() else ""
    if ANALYSIS_START in old and ANALYSIS_END in old:
        return old[old.index(ANALYSIS_START):old.index(ANALYSIS_END) + len(ANALYSIS_END)]
    return ANALYSIS_START + "(analysis of the mismatches: written by hand)\n" + ANALYSIS_END


def _reason_kind(reason: str) -> str:
    reason = reason.replace("cannot enforce this JSON Schema: ", "")
    if "Unimplemented keys" in reason:
        return "unimplemented keyword " + reason.split("Unimplemented keys:")[1].strip()
    if reason.startswith("not a valid JSON Schema"):
        return "fails the metaschema"
    if "Unknown format" in reason:
        return "unknown format " + reason.split("Unknown format:")[1].strip()
    if "retrieving it failed" in reason:
        return "remote $ref"
    if "regex" in reason:
        return "regex feature"
    return reason.split(". ")[0]


# --- the prompt of the model part (benchmarks/structured_e2e.py runs it) -------------------------
def e2e_messages(schema: dict) -> list[dict]:
    """The paper's setting: the schema in the system prompt, asked for one valid instance."""
    return [{"role": "system", "content": "You are a helpful assistant that answers in JSON. Here is the JSON "
                                          f"Schema the answer must follow:\n{json.dumps(schema)}"},
            {"role": "user", "content": "Give one valid example instance, as JSON only."}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--model", default=None, help="registry name or .gguf (default: the default model)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N schemas (a quick look)")
    args = ap.parse_args()
    import numpy as np

    import slmrun

    files = sorted(args.data.glob("*---*.json"))
    if args.limit:
        files = files[:args.limit]
    if not files:
        sys.exit(f"no JSONSchemaBench files in {args.data}")
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    with slmrun.load(args.model, n_ctx=256) as model:
        n_vocab = model.n_vocab
        tokenizer = model._grammar()  # the engine's own: its end-of-generation tokens as the runtime knows them
        row = np.zeros(n_vocab, dtype=np.float32)
        # The first matcher on a vocabulary does one-time set-up: not a schema's compile time.
        from slmrun.structured import constraint_spec
        tokenizer.constraint(constraint_spec(json_object=True)).compute_mask()
        compute_us, apply_us, step_us, results = [], [], [], []
        for i, path in enumerate(files):
            r = run_file(path, tokenizer, row, compute_us, apply_us, step_us)
            results.append(r)
            print(f"[{i + 1}/{len(files)}] {path.name}: {r['status']}"
                  + ("" if r.get("passed", True) else " (mismatch)"), file=sys.stderr)
        tokenizer.close()
    text = report(results, compute_us, apply_us, step_us, model=model.name, seconds=time.perf_counter() - t_start,
                  load=(load_start, os.getloadavg()[0]))
    text = text.replace(ANALYSIS_START + ANALYSIS_END, kept_analysis(args.out))
    old = args.out.read_text() if args.out.is_file() else ""
    for name in ("e2e", "classify", "reading"):  # structured_e2e.py's blocks and the hand-written reading
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        if begin in old and end in old:
            text = text.rstrip() + "\n\n" + old[old.index(begin):old.index(end) + len(end)] + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
