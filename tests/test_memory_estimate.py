"""The planner's memory and speed estimates against what llama.cpp really does on this machine.

Memory: each case loads a model in a fresh subprocess through ``slmrun.load`` (mmap on
and flash attention on, slmrun's defaults), evaluates a prompt of one full micro-batch
(min(n_ubatch, n_ctx - 16) tokens: the largest activation footprint a prompt reaches)
and generates a few tokens, then takes the growth of the process's resident set
(/proc/self/status VmRSS) over a baseline taken after every import. The mmap'd weights
count because generation reads every one of them; the measurement is RSS, not the
compute buffer llama.cpp reserves (see docs/CALIBRATION.md). The estimate
must be within 10% of the measured growth.

Speed: the default model's measured generation speed against estimate_speed() with this
machine's measured bandwidth; both are taken in the same test, best of three runs
each, because these machines are shared and noisy. Ratios only, no fixed seconds.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest

from slmrun import planner

MiB = 1 << 20

# Runs in a fresh interpreter: argv = path, n_ctx, flash_attn (0/1), verbose (0/1), n_threads, n_parallel.
_MEASURE = textwrap.dedent("""
    import json, sys

    def rss():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024

    path, n_ctx, flash_attn, verbose, n_threads = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4] == "1", int(sys.argv[5])
    n_parallel = int(sys.argv[6])
    import gguf, llama_cpp, numpy, psutil  # everything imported before the baseline
    import slmrun, slmrun.api, slmrun.chat, slmrun.gguf_info, slmrun.hardware, slmrun.planner, slmrun.runtime.model
    slmrun.gguf_info.read_info(path)
    slmrun.hardware.detect()  # load()'s memory check detects the hardware: not the model's memory
    n_batch = 512
    before = rss()
    model = slmrun.load(path, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch, flash_attn=flash_attn, verbose=verbose,
                        n_parallel=n_parallel)
    n_prompt = min(n_batch, n_ctx - 16)
    # Words every test vocabulary has as single tokens; no more text than needed, so the
    # measurement is not the Python heap's.
    tokens = model.tokenize(" hello world the" * (n_prompt // 3 + 1), special=False)[:n_prompt]
    completion = model.generate(tokens, max_tokens=4, temperature=0).wait()
    after = rss()
    model.close()
    print(json.dumps({"growth": after - before, "prompt_tokens": completion.stats.prompt_tokens}))
""")


def _measure(path, n_ctx, *, flash_attn=True, verbose=False, n_threads=1, n_parallel=1) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(path), str(n_ctx), str(int(flash_attn)),
                           str(int(verbose)), str(n_threads), str(n_parallel)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _estimate(path, n_ctx, *, flash_attn=True, n_parallel=1) -> planner.MemoryEstimate:
    from slmrun.gguf_info import read_info
    info = read_info(path)
    return planner.estimate_memory(planner.spec_from_gguf(info), weights_bytes=info.size, n_ctx=n_ctx,
                                   flash_attn=flash_attn, n_parallel=n_parallel)


def _check(path, n_ctx, *, flash_attn=True, n_parallel=1):
    measured, _ = _measure(path, n_ctx, flash_attn=flash_attn, n_parallel=n_parallel)
    est = _estimate(path, n_ctx, flash_attn=flash_attn, n_parallel=n_parallel)
    growth = measured["growth"]
    err = (est.total - growth) / growth
    detail = (f"{path.name} n_ctx={n_ctx} x {n_parallel}: estimate {est.total / MiB:.2f} MiB ({est}), "
              f"measured {growth / MiB:.2f} MiB, error {err:+.1%}")
    print(detail)
    assert abs(err) <= 0.10, detail


# Random-weight fixtures written by the tests, a little larger than the 0.4 MB ones the
# other tests use: at 0.4 MB the Python heap's own noise (0.1-0.4 MiB between runs) is
# 10% of the growth, which would test the heap rather than the estimate.
@pytest.fixture(scope="module")
def small_llama(tiny_dir):
    from tinymodels import write_tiny_gguf
    return write_tiny_gguf(tiny_dir / "small-llama.gguf", arch="llama", n_embd=256, n_layer=4, n_head=8,
                           n_head_kv=4, n_ff=1024, seed=3)


@pytest.fixture(scope="module")
def small_phi2(tiny_dir):
    from tinymodels import write_tiny_gguf
    return write_tiny_gguf(tiny_dir / "small-phi2.gguf", arch="phi2", n_embd=256, n_layer=4, n_head=8,
                           n_ff=1024, chat_template=None, seed=4)


@pytest.mark.parametrize("n_ctx", [128, 512])
def test_tiny_llama_memory_within_10_percent(small_llama, n_ctx):
    _check(small_llama, n_ctx)


@pytest.mark.parametrize("n_ctx", [128, 512])
def test_tiny_phi2_memory_within_10_percent(small_phi2, n_ctx):
    _check(small_phi2, n_ctx)


@pytest.mark.real_model
@pytest.mark.parametrize("n_ctx", [512, 2048, 8192])
def test_default_model_memory_within_10_percent(default_model_file, n_ctx):
    _check(default_model_file, n_ctx)


@pytest.mark.parametrize("n_parallel", [2, 4])
def test_parallel_slots_memory_within_10_percent(small_llama, n_parallel):
    """Every slot adds its context's cells to the one unified KV cache (and a logits row)."""
    _check(small_llama, 512, n_parallel=n_parallel)


@pytest.mark.real_model
def test_default_model_with_four_slots_within_10_percent(default_model_file):
    _check(default_model_file, 2048, n_parallel=4)


# An encoder (BERT): loaded as slmrun.load loads one (its own context, 64 inputs a batch), then
# one full batch embedded: as many inputs of embed_limit tokens as the batch holds.
_MEASURE_EMBED = textwrap.dedent("""
    import json, sys

    def rss():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024

    path, n_threads = sys.argv[1], int(sys.argv[2])
    import gguf, llama_cpp, numpy, psutil  # everything imported before the baseline
    import slmrun, slmrun.api, slmrun.gguf_info, slmrun.hardware, slmrun.planner, slmrun.runtime
    slmrun.gguf_info.read_info(path)
    slmrun.hardware.detect()
    before = rss()
    model = slmrun.load(path, n_threads=n_threads)
    word = model.tokenize("the", special=False)[1]
    n = model.embed_limit
    out = model.embed([[word] * n for _ in range(model.options.n_batch // n)])
    after = rss()
    o = model.options
    print(json.dumps({"growth": after - before, "tokens": sum(out.n_tokens), "n_ctx": o.n_ctx, "n_batch": o.n_batch,
                      "n_ubatch": o.n_ubatch, "n_parallel": o.n_parallel, "flash_attn": o.flash_attn}))
    model.close()
""")


def _check_encoder(path):
    from slmrun.gguf_info import read_info

    proc = subprocess.run([sys.executable, "-c", _MEASURE_EMBED, str(path), "1"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    assert m["tokens"] == m["n_batch"]  # a full batch, the estimate's worst case
    info = read_info(path)
    est = planner.estimate_memory(planner.spec_from_gguf(info), weights_bytes=info.size, n_ctx=m["n_ctx"],
                                  n_batch=m["n_batch"], n_ubatch=m["n_ubatch"], flash_attn=m["flash_attn"],
                                  n_parallel=m["n_parallel"])
    err = (est.total - m["growth"]) / m["growth"]
    detail = (f"{path.name} (encoder) batch {m['n_batch']}: estimate {est.total / MiB:.2f} MiB ({est}), "
              f"measured {m['growth'] / MiB:.2f} MiB, error {err:+.1%}")
    print(detail)
    assert est.kv_cache == 0 and abs(err) <= 0.10, detail


@pytest.fixture(scope="module")
def small_bert(tiny_dir):
    from tinymodels import write_tiny_bert
    return write_tiny_bert(tiny_dir / "small-bert.gguf", n_embd=256, n_layer=4, n_head=8, n_ff=1024, n_ctx=512,
                           seed=5)


def test_encoder_memory_within_10_percent(small_bert):
    """An encoder keeps no KV cache; its batch attends within itself."""
    _check_encoder(small_bert)


@pytest.mark.real_model
def test_minilm_memory_within_10_percent(minilm_store):
    """all-MiniLM-L6-v2: past its weights, mostly llama.cpp's output buffer (a logits row of 30522
    floats for every token of the batch, cleared when reserved)."""
    _check_encoder(minilm_store["F16"].path)


_MIB_LINE = r"{}\s*=\s*([0-9.]+) MiB"


@pytest.mark.real_model
def test_kv_cache_is_what_llama_cpp_allocates(default_model_file):
    """The KV term is exact: llama.cpp's own "KV buffer size" line (n_ctx 1000 is rounded up to 1024)."""
    _, log = _measure(default_model_file, 1000, verbose=True)
    kv = float(re.search(_MIB_LINE.format("CPU KV buffer size"), log).group(1))
    est = _estimate(default_model_file, 1000)
    assert abs(est.kv_cache / MiB - kv) < 0.01
    # The touched compute is below what llama.cpp reserves for its compute graph.
    reserved = float(re.search(_MIB_LINE.format("CPU compute buffer size"), log).group(1))
    assert est.compute / MiB < reserved


@pytest.mark.real_model
def test_kv_cache_q8_0_matches_llama_cpp(default_model_file):
    code = textwrap.dedent("""
        import sys, slmrun
        m = slmrun.load(sys.argv[1], n_ctx=1024, n_threads=1, type_k="q8_0", type_v="q8_0", verbose=True,
                        n_parallel=1)
        m.close()
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(default_model_file)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kv = float(re.search(_MIB_LINE.format("CPU KV buffer size"), proc.stderr).group(1))
    from slmrun.gguf_info import read_info
    spec = planner.spec_from_gguf(read_info(default_model_file))
    assert abs(planner.kv_cache_bytes(spec, 1024, "q8_0", "q8_0") / MiB - kv) < 0.01


_KV_TYPES = textwrap.dedent("""
    import sys, slmrun
    from slmrun.planner import KV_CACHE_TYPES
    for name in KV_CACHE_TYPES:
        print("TYPE", name, file=sys.stderr, flush=True)
        with slmrun.load(sys.argv[1], n_ctx=4096, n_threads=1, type_k=name, type_v=name, verbose=True,
                         n_parallel=1) as m:
            assert m.complete("hello world", max_tokens=2, temperature=0).stats.generated_tokens == 2
""")


def test_every_kv_cache_type_is_the_one_llama_cpp_allocates(small_llama):
    """One table gives the runtime each type's ggml id and the planner its size: llama.cpp names
    the type it got back ("K (q4_0): ...") and allocates what kv_cache_bytes() says."""
    from slmrun.gguf_info import read_info

    proc = subprocess.run([sys.executable, "-c", _KV_TYPES, str(small_llama)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    spec = planner.spec_from_gguf(read_info(small_llama))
    blocks = proc.stderr.split("TYPE ")[1:]
    assert [b.split()[0] for b in blocks] == list(planner.KV_CACHE_TYPES)
    for block in blocks:
        name = block.split()[0]
        assert f"K ({name}):" in block and f"V ({name}):" in block, block
        kv = float(re.search(_MIB_LINE.format("CPU KV buffer size"), block).group(1))
        assert abs(planner.kv_cache_bytes(spec, 4096, name, name) / MiB - kv) < 0.01, name


@pytest.mark.real_model
def test_flash_attention_off_is_not_underestimated(default_model_file):
    """Without flash attention the estimate includes the worst-case attention scores: never low."""
    measured, _ = _measure(default_model_file, 2048, flash_attn=False)
    est = _estimate(default_model_file, 2048, flash_attn=False)
    assert est.total >= 0.9 * measured["growth"]


_SPEED = textwrap.dedent("""
    import json, sys
    import slmrun
    path, threads = sys.argv[1], int(sys.argv[2])
    with slmrun.load(path, n_ctx=512, n_threads=threads) as m:
        m.complete("The history of the city", max_tokens=8, temperature=0).wait()  # warm-up: touch the weights
        runs = [m.complete("The history of the city", max_tokens=64, temperature=0).stats for _ in range(3)]
    print(json.dumps({"gen_tps": max(s.gen_tps for s in runs), "tokens": min(s.generated_tokens for s in runs)}))
""")


def _busy(seconds: float = 1.0) -> bool:
    """Whether other jobs hold the cores now (less than 70% idle over `seconds`).

    Multi-threaded llama.cpp then runs several times slower than the machine can
    (its threads wait for each other at every operation), which says nothing about
    the estimate. Read from /proc/stat; never busy where that does not exist.
    """
    import time

    def idle_total():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)

    try:
        i0, t0 = idle_total()
        time.sleep(seconds)
        i1, t1 = idle_total()
    except OSError:
        return False
    return (i1 - i0) < 0.7 * max(1, t1 - t0)


@pytest.mark.real_model
@pytest.mark.parametrize("threads", ["one", "performance_cores"])
def test_speed_estimate_matches_measured_generation(default_model_file, threads):
    """Estimated tokens/s within 0.5x-2x of measured, with the bandwidth measured alongside."""
    from slmrun import hardware
    from slmrun.gguf_info import read_info

    hw = hardware.detect()
    n_threads = 1 if threads == "one" else max(1, hw.performance_cores)
    if n_threads > 1 and _busy():
        pytest.skip("the machine is busy: a multi-threaded speed measurement would measure the other jobs")
    proc = subprocess.run([sys.executable, "-c", _SPEED, str(default_model_file), str(n_threads)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    assert measured["tokens"] > 8
    bandwidth = max(hardware.measure_bandwidth() for _ in range(2))
    info = read_info(default_model_file)
    est = planner.estimate_speed(planner.spec_from_gguf(info), weights_bytes=info.size,
                                 hw=planner.with_bandwidth(hw, bandwidth), n_threads=n_threads)
    ratio = est / measured["gen_tps"]
    print(f"speed: estimate {est:.1f} tok/s, measured {measured['gen_tps']:.1f} tok/s "
          f"({n_threads} threads, {bandwidth:.1f} GB/s), ratio {ratio:.2f}")
    # 0.5x-2x: the constants were measured on one machine, bandwidth differs run to run by
    # ~10%, and the per-thread compute rate differs between CPUs by more than that.
    assert 0.5 <= ratio <= 2.0
