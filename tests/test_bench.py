"""slmrun bench: the measurement logic and the output shapes, on tiny models.

Few tokens, one repetition; no test asserts a speed (these machines are shared and
noisy; speeds are reported in benchmarks/RESULTS.md instead).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path
import subprocess

import pytest
from conftest import slmrun_cmd
from typer.testing import CliRunner

from slmrun import bench, store
from slmrun.errors import ContextOverflowError, InvalidArgumentError, ModelFileNotFoundError, ModelNotFoundError

SMALL = dict(n_prompt=8, n_gen=4, reps=1)
ROW_KEYS = {"model", "quant", "path", "file_size", "n_threads", "flash_attn", "n_batch", "n_ctx", "test",
            "n_tokens", "reps", "unit", "samples", "samples_s", "mean_tps", "std_tps", "mean_s", "std_s",
            "peak_rss", "n_depth"}


# ------------------------------------------------------------------ pure logic

def _target():
    return bench.Target("m", "Q4_0", Path("/x/m.gguf"), 1000)


def test_make_row_rates_are_per_repetition_like_llama_bench():
    row = bench.make_row(_target(), bench.BenchConfig(2), 512, "tg128", 128, [1.0, 0.5])
    assert row.unit == "tok/s" and row.samples == [128.0, 256.0] and row.samples_s == [1.0, 0.5]
    assert row.mean_tps == 192.0  # the mean of the rates, not n / mean time
    assert row.std_tps == pytest.approx(90.50966799)  # sample standard deviation
    assert row.mean_s == 0.75 and row.reps == 2


def test_make_row_time_tests_and_single_repetition():
    row = bench.make_row(_target(), bench.BenchConfig(1), 512, "ttft", 30, [0.2])
    assert row.unit == "s" and row.mean_tps is None and row.std_tps is None
    assert row.mean_s == 0.2 and row.std_s == 0.0 and row.samples == [0.2]


def test_make_row_uses_actual_token_counts():
    row = bench.make_row(_target(), bench.BenchConfig(1), 512, "e2e8", 8, [1.0, 1.0], rate_tokens=[7, 3])
    assert row.samples == [7.0, 3.0] and row.n_tokens == 8


@pytest.mark.parametrize("kwargs, error", [
    (dict(n_prompt=0), InvalidArgumentError), (dict(n_gen=-1), InvalidArgumentError),
    (dict(reps=0), InvalidArgumentError), (dict(threads=[3]), InvalidArgumentError),
    (dict(threads=[0]), InvalidArgumentError), (dict(n_ctx=8), InvalidArgumentError),
    (dict(n_ctx=256, n_prompt=512), ContextOverflowError), (dict(n_ctx=64, n_gen=128), ContextOverflowError),
    (dict(n_depth=-1), InvalidArgumentError), (dict(n_ctx=1024, n_depth=600), ContextOverflowError),
])
def test_validate_rejects_bad_sizes(kwargs, error):
    args = dict(n_prompt=512, n_gen=128, reps=5, threads=[1, 2], n_ctx=None, max_threads=2) | kwargs
    with pytest.raises(error):
        bench.validate(**args)


def test_validate_accepts_good_sizes():
    bench.validate(n_prompt=512, n_gen=128, reps=1, threads=[1, 2], n_ctx=512, max_threads=2)


def test_sweep_threads_and_configs():
    assert bench.sweep_threads(2, 2, 2) == [1, 2]
    assert bench.sweep_threads(16, 12, 4) == [1, 2, 4, 8, 12, 16]
    assert bench.sweep_threads(1, 1, 1) == [1]
    configs = bench.sweep_configs([1, 2], 512)
    assert len(configs) == 2 * 2 * 3 and bench.BenchConfig(2, True, 512) in configs
    # batches at or above the prompt size behave alike: only the default is kept
    assert {c.n_batch for c in bench.sweep_configs([1], 64)} == {512}


def _row(test, tps, threads=2, fa=True, batch=512, quant="Q4_1"):
    n = int(test.lstrip("ptg"))
    return bench.make_row(bench.Target("m", quant, Path("/m"), 100), bench.BenchConfig(threads, fa, batch),
                          4096, test, n, [n / tps])


def test_sweep_summary_finds_the_fastest_and_rates_the_defaults():
    rows = [_row("pp512", 200), _row("tg128", 100), _row("pp512", 220, batch=256),
            _row("pp512", 120, threads=1), _row("tg128", 80, threads=1),
            _row("pp512", 190, fa=False), _row("tg128", 110, fa=False)]
    s = bench.sweep_summary(rows, bench.BenchConfig(2), n_prompt=512, n_gen=128)["m:Q4_1"]
    assert s["best_pp"]["n_batch"] == 256 and s["best_pp"]["pp_tps"] == pytest.approx(220)
    assert s["best_tg"] == {"n_threads": 2, "flash_attn": False, "n_batch": 512,
                            "pp_tps": pytest.approx(190), "tg_tps": pytest.approx(110)}
    assert s["default_vs_best"]["pp"] == pytest.approx(200 / 220, abs=1e-4)
    assert s["default_vs_best"]["tg"] == pytest.approx(100 / 110, abs=1e-4)
    assert s["recommended"] == {"n_threads": 2, "flash_attn": False, "n_batch": 512}


def test_summarize_ranks_by_generation_speed_and_computes_the_roofline():
    rows = [_row("pp512", 200, quant="Q8_0"), _row("tg128", 50, quant="Q8_0"),
            _row("pp512", 150, quant="Q4_K_M"), _row("tg128", 90, quant="Q4_K_M")]
    report = bench.Report({"machine": {"bandwidth_gbs": 1e-6}, "settings": {}}, rows)
    lines = bench.summarize(report)
    assert [(x["rank"], x["quant"]) for x in lines] == [(1, "Q4_K_M"), (2, "Q8_0")]
    assert lines[0]["tg_tps"] == pytest.approx(90) and lines[0]["e2e_tps"] is None
    assert lines[0]["roofline"] == pytest.approx(90 * 100 / 1000, abs=1e-3)  # tg x bytes / bandwidth


# ------------------------------------------------------------------ the runtime's decode methods

def test_raw_decode_timings_continue_and_clear_the_cache(tiny_llama):
    from slmrun.api import load
    from slmrun.runtime import measure

    with load(str(tiny_llama), n_ctx=64, n_threads=1, n_batch=16, n_parallel=2) as m:
        before = m.complete("the", max_tokens=3, temperature=0.0).text
        assert measure.bench_pp(m, 20, n_batch=8) > 0  # three batches: 8 + 8 + 4
        assert m._bench_pos == 20
        assert measure.bench_tg(m, 5) > 0
        assert m._bench_pos == 25
        with pytest.raises(ContextOverflowError):
            measure.bench_tg(m, 40)
        # generation after benchmarking: the bench's cells are not taken for a prompt cache
        out = m.complete("the", max_tokens=3, temperature=0.0)
        assert out.stats.prompt_eval_tokens == out.stats.prompt_tokens and out.text == before
        measure.clear_kv(m)
        assert m._bench_pos == 0 and m.status()["cached_tokens"] == [0, 0]
        with pytest.raises(InvalidArgumentError):
            measure.bench_pp(m, 0)
        out = m.complete("the", max_tokens=3, temperature=0.0)
        assert out.stats.prompt_eval_tokens == out.stats.prompt_tokens and out.text == before


# ------------------------------------------------------------------ a whole run on tiny models

def _check_report(data, tests, n_configs=1):
    assert data["schema"] == "slmrun.bench/1"
    h = data["header"]
    assert {"slmrun_version", "llama_cpp_python_version", "timestamp", "machine", "llama_cpp", "settings",
            "load_avg_start", "load_avg_end"} <= set(h)
    assert h["machine"]["logical_cores"] >= 1 and isinstance(h["llama_cpp"]["features"], list)
    assert len(data["results"]) == len(tests) * n_configs
    for row in data["results"]:
        assert set(row) == ROW_KEYS
        assert row["test"] in tests and row["reps"] == len(row["samples"]) == len(row["samples_s"])
        assert row["mean_s"] >= 0 and row["peak_rss"] and row["peak_rss"] > 0
        if row["unit"] == "tok/s":
            assert row["mean_tps"] is not None and row["std_tps"] is not None
    json.dumps(data)  # plain data throughout


def test_run_on_a_tiny_model(tiny_llama):
    seen = []
    report = bench.run([str(tiny_llama)], threads=[1], progress=lambda d, t, s: seen.append((d, t, s)), **SMALL)
    data = report.to_dict()
    _check_report(data, {"load", "ttft", "pp8", "tg4", "e2e4"})
    rows = {r["test"]: r for r in data["results"]}
    assert rows["pp8"]["n_tokens"] == 8 and rows["tg4"]["n_tokens"] == 4 and rows["load"]["unit"] == "s"
    assert rows["ttft"]["n_tokens"] > 5  # the chat template's tokens too
    assert rows["pp8"]["model"] == "tiny-llama" and rows["pp8"]["quant"] == "F32"
    assert rows["pp8"]["n_threads"] == 1 and rows["pp8"]["flash_attn"] is True and rows["pp8"]["n_ctx"] == 512
    assert data["sweep"] is None
    done = [d for d, _, _ in seen]
    assert done == sorted(done) and seen[-1][0] == seen[-1][1] == 5
    line, = bench.summarize(report)
    assert line["rank"] == 1 and line["pp_tps"] > 0 and line["ttft_s"] > 0


def test_run_without_a_chat_format_uses_a_plain_prompt(tiny_phi2):
    data = bench.run([str(tiny_phi2)], threads=[1], **SMALL).to_dict()
    _check_report(data, {"load", "ttft", "pp8", "tg4", "e2e4"})


def test_sweep_tries_flash_attention_and_threads(tiny_llama, monkeypatch):
    import slmrun.api
    monkeypatch.setattr(slmrun.api, "default_threads", lambda hw=None: 1)
    data = bench.run([str(tiny_llama)], threads=[1], sweep=True, **SMALL).to_dict()
    configs = {(r["n_threads"], r["flash_attn"], r["n_batch"]) for r in data["results"]}
    assert configs == {(1, True, 512), (1, False, 512)}
    tests = [r["test"] for r in data["results"] if not r["flash_attn"]]  # the non-default configuration
    assert tests == ["load", "pp8", "tg4"]  # only the default configuration gets ttft and e2e
    s, = data["sweep"].values()
    assert set(s) == {"default", "best_pp", "best_tg", "default_vs_best", "recommended"}
    assert 0 < s["default_vs_best"]["tg"] <= 1 and s["default"]["flash_attn"] is True


def test_depth_fills_the_cache_before_each_repetition(tiny_llama, monkeypatch):
    from slmrun.runtime import measure
    calls = []
    real_pp = measure.bench_pp
    monkeypatch.setattr(measure, "bench_pp", lambda model, n, **kw: calls.append(n) or real_pp(model, n, **kw))
    data = bench.run([str(tiny_llama)], threads=[1], n_depth=32, **SMALL).to_dict()
    rows = {r["test"]: r for r in data["results"]}
    assert {"pp8@d32", "tg4@d32", "e2e4"} <= set(rows) and data["header"]["settings"]["n_depth"] == 32
    assert rows["tg4@d32"]["n_depth"] == 32 and rows["e2e4"]["n_depth"] == 0
    # pp: depth + warm-up, depth + one repetition; tg: depth before its warm-up and its repetition
    assert calls == [32, 8, 32, 8, 32, 32]
    line, = bench.summarize(data)
    assert line["pp_tps"] == rows["pp8@d32"]["mean_tps"] and line["tg_tps"] == rows["tg4@d32"]["mean_tps"]
    with pytest.raises(ContextOverflowError):  # 500 + 16 > the tiny model's 512
        bench.run([str(tiny_llama)], threads=[1], n_prompt=16, n_gen=4, reps=1, n_depth=500)


def test_all_local_quants_and_context_errors(tiny_llama, isolated_home):
    for quant in ("Q4_K_M", "Q8_0"):  # the tiny file stands in for two quants of tinyllama
        tmp = store.staging_dir("tinyllama") / f"x.{quant}.incomplete"
        shutil.copyfile(tiny_llama, tmp)
        store.install(tmp, name="tinyllama", filename=f"tinyllama.{quant}.gguf", quant=quant, sha256="0" * 64,
                      source="import:test")
    targets = bench.resolve_targets(["tinyllama"], all_local=True)
    assert sorted(t.quant for t in targets) == ["Q4_K_M", "Q8_0"]
    assert {t.ref for t in targets} == {"tinyllama:q4_k_m", "tinyllama:q8_0"}
    assert len(bench.resolve_targets(["tinyllama:q8_0"])) == 1
    data = bench.run(["tinyllama"], all_local=True, threads=[1], **SMALL).to_dict()
    assert {r["quant"] for r in data["results"]} == {"Q4_K_M", "Q8_0"}
    assert [x["rank"] for x in bench.summarize(data)] == [1, 2]
    with pytest.raises(ContextOverflowError):  # the tiny model's own context is 512
        bench.run(["tinyllama:q8_0"], n_prompt=600, n_gen=4, reps=1, threads=[1])


def test_bad_models():
    with pytest.raises(ModelFileNotFoundError):
        bench.run(["/no/such/model.gguf"], **SMALL)
    with pytest.raises(ModelNotFoundError):
        bench.run(["no-such-model"], **SMALL)


# ------------------------------------------------------------------ the command

def _cli(*args):
    from slmrun.cli import _register, app
    _register()
    return CliRunner().invoke(app, ["bench", *args])


def test_cli_json_csv_md_and_table(tiny_llama):
    common = ["-m", str(tiny_llama), "-p", "8", "-n", "4", "-r", "1", "-t", "1", "-q"]
    result = _cli(*common, "--json")
    assert result.exit_code == 0, result.output
    _check_report(json.loads(result.stdout), {"load", "ttft", "pp8", "tg4", "e2e4"})
    result = _cli(*common, "--csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["test"] for r in rows] == ["load", "ttft", "pp8", "tg4", "e2e4"] and rows[0]["model"] == "tiny-llama"
    result = _cli(*common, "--md")
    assert "| # | model | quant |" in result.stdout and "pp8 t/s" in result.stdout
    result = _cli(*common)
    assert "tg4 t/s" in result.stdout and "tiny-llama" in result.stdout and "machine:" in result.stdout
    result = _cli(*common, "-d", "16")
    assert result.exit_code == 0 and "tg4@d16 t/s" in result.stdout


def test_cli_option_parsing():
    from slmrun.cli.bench import expand_quants, parse_threads
    assert parse_threads("1, 2,4,2") == [1, 2, 4] and parse_threads(None) is None
    with pytest.raises(InvalidArgumentError):
        parse_threads("two")
    assert expand_quants(["tinyllama"], "q4_k_m,Q8_0") == (["tinyllama:q4_k_m", "tinyllama:q8_0"], False)
    assert expand_quants(["tinyllama"], "all-local") == (["tinyllama"], True)
    assert expand_quants(["a"], None) == (["a"], False)


@pytest.mark.parametrize("args, message, code", [
    (["-p", "0"], "-p (prompt tokens) must be at least 1", 2),
    (["-n", "-5"], "-n (generated tokens) must be at least 1", 2),
    (["-d", "-1"], "-d (depth) must be 0 or more", 2),
    (["--threads", str((os.cpu_count() or 1) + 1)], "this machine has", 2),
    (["--ctx", "64", "-p", "128"], "do not fit the context of 64", 7),
    (["-m", "/no/such.gguf"], "no such model file", 4),
    (["--json", "--csv"], "choose one of", 2),
])
def test_cli_bad_input_is_one_clear_line(args, message, code):
    proc = subprocess.run(slmrun_cmd() + ["bench", "-q", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
