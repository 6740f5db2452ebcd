"""What rendering chat templates in the sandbox worker costs, and what reading a GGUF's
special tokens costs.

    .venv/bin/python benchmarks/template_render.py [--runs 400]   (writes benchmarks/TEMPLATE_RENDER.md)

Renders the default model's own chat template (SmolLM2-135M's ChatML, read from the
store) on a 6-message conversation whose last message changes every time (so no render
is answered from the cache, unless said): in-process in jinja2's immutable sandbox (what
slmrun did before), and through slmrun.template_sandbox's worker. The two are
interleaved, one run each in turn; medians are reported, and their difference is the
worker's own per-render cost. Then the cold start (first render after spawning the
worker), and gguf_info's special-token read against decoding the whole token list.
"""

from __future__ import annotations

import argparse
import mmap
import statistics
import struct
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def default_model() -> Path:
    from slmrun import api
    return api.resolve("smollm2-135m").path


def conversation(i: int) -> list[dict]:
    return [{"role": "system", "content": "You are a helpful assistant. Answer briefly."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Italy?"},
            {"role": "assistant", "content": "Rome."},
            {"role": "user", "content": f"And of Spain? (turn {i})"}]


def in_process(template: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    compiled = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template)

    def render(variables: dict) -> str:
        return compiled.render(**variables)
    return render


def full_token_decode(path: Path, info) -> float:
    """Seconds to decode every token string (what a reader without marks would do)."""
    arr = info.metadata["tokenizer.ggml.tokens"]
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        t0 = time.perf_counter()
        pos, unpack, out = arr.offset, struct.Struct("<Q").unpack_from, []
        for _ in range(int(arr)):
            n = unpack(buf, pos)[0]
            out.append(bytes(buf[pos + 8:pos + 8 + n]).decode("utf-8", "replace"))
            pos += 8 + n
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=400)
    args = ap.parse_args()

    from slmrun import gguf_info
    from slmrun.template_sandbox import TemplateSandbox, output_limit

    path = default_model()
    info = gguf_info.read_info(path)
    template = info.chat_template
    variables = lambda i: {"messages": conversation(i), "add_generation_prompt": True,  # noqa: E731
                           "bos_token": "", "eos_token": "<|im_end|>"}
    limit = output_limit(4096, 1000)

    cold = []
    for _ in range(5):
        box = TemplateSandbox()
        t0 = time.perf_counter()
        box.render(template, variables(-1), limit=limit)
        cold.append(time.perf_counter() - t0)
        box.close()

    local = in_process(template)
    box = TemplateSandbox()
    assert box.render(template, variables(0), limit=limit) == local(variables(0))
    t_local, t_worker, t_hit = [], [], []
    for i in range(1, args.runs + 1):
        v = variables(i)
        t0 = time.perf_counter()
        local(v)
        t1 = time.perf_counter()
        box.render(template, v, limit=limit)
        t2 = time.perf_counter()
        box.render(template, v, limit=limit)  # the same render again: ChatSession's count, then send
        t3 = time.perf_counter()
        t_local.append(t1 - t0)
        t_worker.append(t2 - t1)
        t_hit.append(t3 - t2)
    box.close()

    ri, sp, full = [], [], []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        for _ in range(20):
            t0 = time.perf_counter()
            gguf_info.read_info(path)
            t1 = time.perf_counter()
            gguf_info._special_tokens(buf, info.metadata)
            t2 = time.perf_counter()
            ri.append(t1 - t0)
            sp.append(t2 - t1)
            full.append(full_token_decode(path, info))

    us = lambda xs: statistics.median(xs) * 1e6  # noqa: E731
    ms = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    lines = [
        "# Chat-template rendering in the sandbox worker",
        "",
        f"Measured by `benchmarks/template_render.py --runs {args.runs}` on {path.name} "
        f"({len(template)}-character template, 6 messages; medians, interleaved runs).",
        "",
        "| render | median |",
        "|---|---|",
        f"| in-process, jinja2 immutable sandbox (before) | {us(t_local):.0f} µs |",
        f"| worker process, warm (now) | {us(t_worker):.0f} µs |",
        f"| worker's own cost (difference) | {us(t_worker) - us(t_local):.0f} µs |",
        f"| the same render again (answered from the cache) | {us(t_hit):.1f} µs |",
        f"| first render, worker started cold | {ms(cold):.0f} ms |",
        "",
        f"Worker / in-process: {us(t_worker) / us(t_local):.2f}x.",
        "",
        "# Reading a GGUF's special tokens",
        "",
        f"| {path.name} ({int(info.metadata['tokenizer.ggml.tokens'])} tokens) | median |",
        "|---|---|",
        f"| read_info (the whole header, special tokens included) | {ms(ri):.1f} ms |",
        f"| of which the special tokens (type array + marked strings) | {us(sp):.0f} µs |",
        f"| decoding the whole token list instead | {ms(full):.1f} ms |",
        "",
        f"Special tokens found: {len(info.special_tokens)}.",
    ]
    text = "\n".join(lines) + "\n"
    (ROOT / "benchmarks" / "TEMPLATE_RENDER.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
