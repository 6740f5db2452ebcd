"""Time to first token over a 10-turn chat: does turn 10 cost what turn 1 does?

Follow-up turns reuse the KV cache of the conversation so far, so a turn's prompt
processing covers only the new text. Without reuse, turn 10 would re-evaluate the
whole history. Usage (writes benchmarks/CHAT_TTFT.md):

    .venv/bin/python benchmarks/chat_ttft.py [-m smollm2-135m] [--turns 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import slmrun  # noqa: E402
from slmrun.chat import ChatSession  # noqa: E402
from slmrun.runtime import measure  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_tools import analysis_block  # noqa: E402

QUESTIONS = ["What is 2+2?", "Name a color.", "What is the capital of France?", "Say hello.",
             "Count to three.", "What is water made of?", "Name an animal.", "What day follows Monday?",
             "What is 10 minus 3?", "Say goodbye."]


def run_once(model, turns: int, reuse: bool) -> list[dict]:
    session = ChatSession(model, temperature=0, max_tokens=48)
    measure.clear_kv(model)  # a new conversation: turn 1 evaluates its whole prompt
    rows = []
    for i in range(turns):
        if not reuse:
            measure.clear_kv(model)  # forget the KV cache: every turn re-evaluates the history
        list(session.send(QUESTIONS[i % len(QUESTIONS)]))
        s = session.last.stats
        rows.append({"turn": i + 1, "ttft_s": s.ttft_s, "prompt_tokens": s.prompt_tokens,
                     "evaluated": s.prompt_eval_tokens, "cached": s.cached_tokens})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", default="smollm2-135m")
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_name("CHAT_TTFT.md")))
    args = ap.parse_args()
    with slmrun.load(args.model, n_parallel=1) as model:  # as `slmrun chat` loads it
        run_once(model, 2, True)  # warm-up: page in the weights
        results = {}
        for reuse in (True, False):
            runs = [run_once(model, args.turns, reuse) for _ in range(args.repeats)]
            results[reuse] = [{**runs[0][t], "ttft_s": statistics.median(r[t]["ttft_s"] for r in runs)}
                              for t in range(args.turns)]
        opts = model.options
    lines = [
        "# Chat: time to first token by turn",
        "",
        f"Command: `.venv/bin/python benchmarks/chat_ttft.py -m {args.model} --turns {args.turns} "
        f"--repeats {args.repeats}`  ",
        f"Machine: {platform.machine()}, {opts.n_threads} threads, flash attention {opts.flash_attn}; "
        f"median of {args.repeats} runs per turn, temperature 0, replies of up to 48 tokens.",
        "",
        "| turn | prompt tokens | evaluated (reuse) | TTFT with KV reuse | TTFT re-evaluating all |",
        "|---:|---:|---:|---:|---:|",
    ]
    for a, b in zip(results[True], results[False]):
        lines.append(f"| {a['turn']} | {a['prompt_tokens']} | {a['evaluated']} | {a['ttft_s'] * 1000:.1f} ms | "
                     f"{b['ttft_s'] * 1000:.1f} ms |")
    r_reuse = results[True][-1]["ttft_s"] / results[True][0]["ttft_s"]
    r_full = results[False][-1]["ttft_s"] / results[False][0]["ttft_s"]
    lines += ["", f"**Turn {args.turns} / turn 1 TTFT: {r_reuse:.2f}× with KV reuse** (goal ≤ 1.2×); "
              f"{r_full:.2f}× when every turn re-evaluates the history.", ""]
    lines += analysis_block(Path(args.out))
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
