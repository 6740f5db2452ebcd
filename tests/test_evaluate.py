"""`slmrun eval`'s perplexity task on the tiny models: llama-perplexity's chunking from tables,
the per-token math against a float64 rendering of its definitions, the results store and
what the planner reads from it, the command line, and the refusals (a text shorter than two
chunks, a reference with another vocabulary, a batch llama-perplexity would not take).
(tests/test_evaluate_recorded.py compares the figures with llama-perplexity's own.)"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from conftest import slmrun_cmd
from slmrun.errors import InvalidArgumentError, VocabularyMismatchError
from slmrun.evaluate import TASKS, EvalRow, results, task_function
from slmrun.evaluate.perplexity import evaluate_perplexity, read_text
from slmrun.evaluate.stats import median, percentile, summarize
from slmrun.runtime.scoring import chunk_plan, row_figures, row_figures_16bit
from tinymodels import write_tiny_gguf

TEXT = ("The market opens at six. The first stalls to set up are the ones that sell bread, because the "
        "bakers have been awake since three and want to go home. ") * 12


@pytest.mark.parametrize("n_tokens,n_ctx,n_batch,n_seq,batch,n_chunk,decodes", [
    (1024, 512, 2048, 4, 2048, 2, 1),   # llama-perplexity's defaults: four chunks a decode
    (1100, 512, 512, 1, 512, 2, 1),     # one chunk a decode; the tail past the last chunk is dropped
    (4096, 512, 256, 1, 256, 8, 2),     # a chunk in two decodes
    (900, 128, 384, 3, 384, 7, 1),
    (256, 128, 100, 1, 100, 2, 2),      # a batch that does not divide the context: a short last decode
])
def test_chunk_plan(n_tokens, n_ctx, n_batch, n_seq, batch, n_chunk, decodes):
    p = chunk_plan(n_tokens, n_ctx, n_batch)
    assert (p.n_seq, p.n_batch, p.n_chunk, p.decodes_per_chunk) == (n_seq, batch, n_chunk, decodes)
    assert p.first == n_ctx // 2 and p.n_scored == n_chunk * (n_ctx - 1 - n_ctx // 2)
    groups = list(p.groups())
    assert sum(c for _, c in groups) == n_chunk and all(c <= n_seq for _, c in groups)


@pytest.mark.parametrize("n_tokens,n_ctx,n_batch,words", [
    (1023, 512, 2048, "needs at least 1024"),
    (10, 8, 8, "needs at least 16"),
    (5000, 512, 768, "neither below the context"),
    (5000, 511, 512, "even number"),
    (5000, 512, 0, "at least 1 token"),
])
def test_chunk_plan_refusals(n_tokens, n_ctx, n_batch, words):
    with pytest.raises(InvalidArgumentError) as info:
        chunk_plan(n_tokens, n_ctx, n_batch)
    assert words in info.value.message
    if words.startswith("needs"):
        assert "--ctx" in info.value.hint


def _reference_figures(rows, targets, ref_rows):
    """The definitions in float64: log-softmax, KL(reference || model), argmax."""
    def log_softmax(x):
        x = x.astype(np.float64)
        m = x.max(axis=1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))
    lq, lp = log_softmax(rows), log_softmax(ref_rows)
    idx = np.arange(len(targets))
    return -lq[idx, targets], -lp[idx, targets], (np.exp(lp) * (lp - lq)).sum(axis=1)


@pytest.mark.parametrize("scale,noise", [(1.0, 0.05), (4.0, 0.5), (12.0, 0.01), (0.1, 1.0)])
def test_row_figures_match_the_definitions(scale, noise):
    rng = np.random.default_rng(int(scale * 100))
    ref = (rng.standard_normal((40, 3000)) * scale).astype(np.float32)
    rows = (ref + rng.standard_normal(ref.shape) * noise + 3.0).astype(np.float32)  # a shift changes nothing
    targets = rng.integers(0, 3000, 40)
    nll, ref_nll, kld = _reference_figures(rows, targets, ref)
    f = row_figures(rows, targets, ref)
    np.testing.assert_allclose(f.nll, nll, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(f.ref_nll, ref_nll, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(f.kld, kld, rtol=1e-4, atol=5e-7)  # float32 logits: ~1e-7 nats
    assert (f.kld >= -1e-7).all()
    assert (f.same_top == (rows.argmax(1) == ref.argmax(1))).all()
    g = row_figures_16bit(rows, targets, ref)  # 16-bit rounding of the reference: close, not equal
    np.testing.assert_allclose(g.kld, kld, atol=2e-4 + 1e-3 * kld.max())
    assert row_figures(rows, targets).kld is None


@pytest.mark.parametrize("values,fraction,expected", [
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 0.99, 8.91), ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 0.5, 4.5),
    ([1.0, 2.0], 0.25, 1.25), ([3.0], 0.99, 3.0), ([0, 10], 1.0, 10.0), ([0, 10], 0.0, 0.0),
])
def test_percentile_interpolates_like_llama_perplexity(values, fraction, expected):
    assert percentile(np.asarray(values, dtype=np.float32), fraction) == pytest.approx(expected, rel=1e-6)


def test_median_and_summary():
    assert median(np.float32([1, 2, 3])) == 2.0 and median(np.float32([1, 2, 3, 10])) == 2.5
    nll = np.array([1.0, 2.0, 3.0] * 10)
    s = summarize(nll, ref_nll=nll - 0.5, kld=np.linspace(0, 1, 30), same_top=np.arange(30) % 3 != 0)
    assert s["perplexity"] == pytest.approx(np.exp(2.0)) and s["reference_perplexity"] == pytest.approx(np.exp(1.5))
    assert s["ln_ppl_ratio"] == pytest.approx(0.5) and s["ln_ppl_ratio_uncertainty"] == pytest.approx(0, abs=1e-6)
    assert s["kl_divergence"]["mean"] == pytest.approx(0.5) and s["kl_divergence"]["max"] == pytest.approx(1.0)
    assert s["top1_agreement"] == pytest.approx(20 / 30) and s["n_tokens"] == 30


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair")
    return (write_tiny_gguf(folder / "a.gguf", seed=10), write_tiny_gguf(folder / "b.gguf", seed=11))


def test_a_model_against_itself(pair):
    seen = []
    rows = evaluate_perplexity([str(pair[0]), str(pair[1])], TEXT, reference=str(pair[0]), n_ctx=64, n_batch=128,
                               n_threads=1, progress=lambda d, t, label: seen.append((d, t)))
    same, other = rows
    k = same.figures["kl_divergence"]
    assert abs(k["mean"]) < 1e-6 and abs(k["max"]) < 1e-5 and same.figures["top1_agreement"] == 1.0
    assert same.figures["perplexity"] == pytest.approx(same.figures["reference_perplexity"], rel=1e-9)
    assert other.figures["kl_divergence"]["mean"] > 0.01 and other.figures["top1_agreement"] < 1.0
    assert other.figures["reference_perplexity"] == same.figures["reference_perplexity"]
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1] == same.figures["n_tokens"]
    assert same.meta["reference"] == "a.gguf" and same.meta["n_ctx"] == 64 and same.meta["n_batch"] == 128
    d = same.to_dict()
    assert {"model", "method", "task", "perplexity", "reference_perplexity", "kl_divergence", "top1_agreement",
            "n_tokens", "ln_ppl_ratio"} <= set(d)
    assert set(d["kl_divergence"]) >= {"mean", "median", "p99", "max"}
    kept = results.records(same.sha256, "perplexity")  # kept per file SHA-256 and task
    assert len(kept) == 1 and kept[0]["figures"]["perplexity"] == same.figures["perplexity"]


def test_a_text_shorter_than_two_chunks_is_refused_and_nothing_is_kept(pair, isolated_home):
    with pytest.raises(InvalidArgumentError) as info:
        evaluate_perplexity([str(pair[1])], "Too short a text.", reference=str(pair[0]), n_ctx=64, n_batch=64,
                            n_threads=1)
    assert "needs at least 128" in info.value.message and "--ctx" in info.value.hint
    assert not (isolated_home / "evals").exists()


def test_a_reference_with_another_vocabulary_is_refused_before_loading(pair, tmp_path, monkeypatch,
                                                                       isolated_home):
    bigger = write_tiny_gguf(tmp_path / "bigger.gguf", seed=10, extra_tokens=(("▁extra", 1),))
    other_texts = write_tiny_gguf(tmp_path / "gemma.gguf", seed=10, vocab_style="gemma")  # same size, other tokens
    import slmrun.runtime as runtime

    monkeypatch.setattr(runtime, "Model", lambda *a, **k: pytest.fail("loaded a model before refusing"))
    for ref, words in ((bigger, "different vocabularies"), (other_texts, "different texts")):
        with pytest.raises(VocabularyMismatchError) as info:
            evaluate_perplexity([str(pair[0])], TEXT, reference=str(ref), n_ctx=64, n_batch=64)
        assert words in info.value.message and "same model" in info.value.hint
    assert not (isolated_home / "evals").exists()


def test_results_are_kept_per_file_and_replaced_by_the_same_measurement(isolated_home):
    sha = "a" * 64
    def row(kld, ref_sha, n_ctx=512, ref_quant="F16"):
        return EvalRow(model="m:q4_k_m", method="perplexity", task="perplexity",
                       figures={"perplexity": 10.0, "n_tokens": 1000, "kl_divergence": {"mean": kld}},
                       meta={"reference": "m:f16", "reference_quant": ref_quant, "reference_sha256": ref_sha,
                             "text_sha256": "t" * 64, "n_ctx": n_ctx})
    results.save(sha, row(0.1, "r" * 64))
    results.save(sha, row(0.2, "r" * 64))  # the same measurement again: replaced
    results.save(sha, row(0.3, "r" * 64, n_ctx=256))  # another context: kept beside it
    kept = results.records(sha, "perplexity")
    assert sorted(r["figures"]["kl_divergence"]["mean"] for r in kept) == [0.2, 0.3]
    assert json.loads((isolated_home / "evals" / f"{sha}.json").read_text())["sha256"] == sha
    assert results.records("b" * 64, "perplexity") == []
    with pytest.raises(ValueError):
        results.records("../../etc/passwd", "perplexity")


def test_measured_quality_for_the_planner(isolated_home):
    files = {"Q4_K_M": "1" * 64, "Q2_K": "2" * 64, "Q8_0": "3" * 64, "F16": "f" * 64, "Q6_K": None}

    def save(sha, kld, ref_sha="f" * 64, ref_quant="F16", text="t"):
        results.save(sha, EvalRow(model="m", method="perplexity", task="perplexity",
                                  figures={"n_tokens": 500, "kl_divergence": {"mean": kld}, "ln_ppl_ratio": kld / 2},
                                  meta={"reference": "m:f16", "reference_quant": ref_quant, "reference_sha256": ref_sha,
                                        "text_sha256": text * 64, "n_ctx": 512}))
    assert results.measured_quality(files) == {}
    save("1" * 64, 0.05)
    save("2" * 64, 0.40)
    save("3" * 64, 0.9, ref_sha="1" * 64, ref_quant="Q4_K_M")  # a quantized reference: not a loss
    save("3" * 64, 0.002, text="u")  # another text, alone in its setting: the larger setting wins
    got = results.measured_quality(files)
    assert {q: m.kld for q, m in got.items()} == {"Q4_K_M": 0.05, "Q2_K": 0.40, "F16": 0.0}
    assert got["Q2_K"].reference == "m:f16" and got["Q2_K"].n_tokens == 500


def test_tasks_dispatch():
    assert "perplexity" in TASKS and task_function("Perplexity") is not None
    with pytest.raises(InvalidArgumentError) as info:
        task_function("classify-all-the-things")
    assert "perplexity" in info.value.hint


def test_read_text_drops_one_final_newline_and_refuses_other_encodings(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"one\ntwo\n\n")
    assert read_text(tmp_path / "a.txt") == "one\ntwo\n"
    (tmp_path / "b.txt").write_bytes(b"caf\xe9")
    with pytest.raises(InvalidArgumentError) as info:
        read_text(tmp_path / "b.txt")
    assert "UTF-8" in info.value.message
    with pytest.raises(InvalidArgumentError):
        read_text(tmp_path / "missing.txt")


def _cli(*args):
    return subprocess.run([*slmrun_cmd(), "eval", *map(str, args)], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=120)


def test_cli_eval(pair, tmp_path, isolated_home):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    p = _cli(pair[1], "--reference", pair[0], "--text", text, "--ctx", 64, "--batch", 128, "-t", 1, "--json")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert len(rows) == 1 and rows[0]["model"] == "b.gguf" and rows[0]["method"] == "perplexity"
    assert 0 < rows[0]["top1_agreement"] < 1 and rows[0]["kl_divergence"]["p99"] >= rows[0]["kl_divergence"]["median"]
    assert "tokens scored" in p.stderr  # the progress, one line a group off a terminal
    assert list((isolated_home / "evals").glob("*.json"))
    p = _cli(pair[1], "--reference", pair[0], "--text", text, "--ctx", 64, "--batch", 128, "-t", 1)
    assert p.returncode == 0 and "KLD MEAN" in p.stdout and "b.gguf" in p.stdout
    p = _cli(pair[1], "--ctx", 64)
    assert p.returncode == 2 and "--text" in p.stderr
    p = _cli(pair[1], "--task", "bogus", "--text", text)
    assert p.returncode == 2 and "perplexity" in p.stderr
    short = tmp_path / "short.txt"
    short.write_text("Hello there.")
    p = _cli(pair[1], "--text", short, "--ctx", 64)
    assert p.returncode == 2 and "needs at least 128" in p.stderr
