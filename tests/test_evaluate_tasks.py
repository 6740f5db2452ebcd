"""`slmrun eval --task classify / extract / generate` on real llama.cpp: the tiny models (the
figures against answers the same model gives through the library, so an item the library gets
right scores as right), the results store, the command line's table and JSON, the refusals
before anything loads (a malformed line, labels --labels leaves out, more --shots than
examples, a schema that is not JSON, an empty file, an embedding model asked to generate),
and one small classify eval with the default model (real_model)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

import slmrun
from conftest import DEFAULT_SHA, slmrun_cmd
from slmrun.classification import classify_texts, recalibrated, scoring
from slmrun.errors import InvalidArgumentError, InvalidSchemaError, ModelCapabilityError
from slmrun.evaluate import evaluate_classify, evaluate_extract, evaluate_generate, results
from slmrun.evaluate.metrics import bleu
from tinymodels import write_tiny_gguf

TEXTS = ["a b c", "the cat", "dogs run", "x y", "hello there", "one two three", "blue", "green tea", "up", "down"]
LABELS = ["yes", "no"]
TRAIN = [{"text": "the sun is out", "label": "yes"}, {"text": "it rains", "label": "no"},
         {"text": "a fine day", "label": "yes"}, {"text": "grey skies", "label": "no"}]
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 5}, "ok": {"type": "boolean"}},
          "required": ["name", "ok"], "additionalProperties": False}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # "▁" lets a forced space be one token (see test_structured's tiny model): extraction works.
    return write_tiny_gguf(tmp_path_factory.mktemp("eval-tasks") / "tiny.gguf", extra_tokens=(("▁", 1),), seed=3)


def _records(row, task):
    return results.records(row.sha256, task)


# --- classify ---------------------------------------------------------------------------------------

def test_classify_rows_per_model_method_and_shots(tiny, tiny_bert_gguf, isolated_home):
    with slmrun.load(str(tiny), n_parallel=1, n_threads=1) as m:  # one slot, as the eval below
        gold = [c.label for c in m.classify_many(TEXTS, LABELS)]
        one_shot = m.classify_many(TEXTS, LABELS, examples=[("the sun is out", "yes"), ("it rains", "no")])
    data = [{"text": t, "label": g} for t, g in zip(TEXTS, gold)]
    seen = []
    rows = evaluate_classify([str(tiny)], data, labels=LABELS, shots=[0, 1], train=TRAIN, via=[str(tiny_bert_gguf)],
                             calibrate=True, n_parallel=1, n_threads=1,
                             progress=lambda done, total, label: seen.append((done, total, label)))
    assert [(r.model, r.method, r.meta["shots"]) for r in rows] == [
        ("tiny.gguf", "generative", 0), ("tiny.gguf", "generative-calibrated", 0),
        ("tiny.gguf", "generative", 1), ("tiny.gguf", "generative-calibrated", 1),
        ("tiny-bert.gguf", "embedding", 0), ("tiny-bert.gguf", "embedding", 1)]
    zero, zero_cal, one, one_cal, emb0, emb1 = rows
    # labelled with the model's own answers: all right, the confusion matrix on its diagonal
    assert zero.figures["accuracy"] == 1.0 and zero.figures["macro_f1"] > 0
    matrix = zero.figures["confusion"]["matrix"]
    assert zero.figures["confusion"]["labels"] == LABELS and sum(map(sum, matrix)) == len(TEXTS)
    assert matrix[0][1] == matrix[1][0] == 0
    # the first example of each label of --train in the prompt: what the library says with them
    assert one.figures["accuracy"] == pytest.approx(sum(c.label == g for c, g in zip(one_shot, gold)) / len(gold))
    # calibrated: the batch prior of all the items divided out of the same scores
    raw = [list(c.probabilities.values()) for c in one_shot]
    cal = [recalibrated(c, scoring.mean_prior(raw)) for c in one_shot]
    assert one_cal.meta["calibration"] == "batch"
    assert one_cal.figures["accuracy"] == pytest.approx(sum(c.label == g for c, g in zip(cal, gold)) / len(gold))
    assert one_cal.figures["texts_per_s"] == pytest.approx(one.figures["texts_per_s"], rel=1e-6)
    # the embedding method, with prototypes, then the train set's centroids
    with slmrun.load(str(tiny_bert_gguf)) as bert:
        e0 = classify_texts(bert, TEXTS, LABELS, method="embedding")
        e1 = classify_texts(bert, TEXTS, LABELS, method="embedding", examples=[(r["text"], r["label"]) for r in TRAIN[:2]])
    for row, found in ((emb0, e0), (emb1, e1)):
        predicted = [c.label for c in found]
        assert row.figures["accuracy"] == pytest.approx(sum(p == g for p, g in zip(predicted, gold)) / len(gold))
        assert row.figures["ece"] == pytest.approx(scoring.expected_calibration_error(
            [c.probabilities[c.label] for c in found], [p == g for p, g in zip(predicted, gold)]), abs=1e-3)
        # (the eval embedded one text a batch, as --parallel 1 asks: not bit-identical to 64 a batch)
    for row in rows:
        d = row.to_dict()
        assert {"model", "method", "accuracy", "macro_f1", "ece", "confusion", "texts_per_s", "peak_rss",
                "shots", "n_items"} <= set(d)
        assert d["texts_per_s"] > 0 and d["peak_rss"] > 10 * 2**20 and d["n_items"] == len(TEXTS)
    # kept per model file and task: four rows of the generative model, two of the embedding one
    assert len(_records(zero, "classify")) == 4 and len(_records(emb0, "classify")) == 2
    assert seen[-1][0] == seen[-1][1] == 2 * 2 * len(TEXTS)  # 2 models x 2 counts of shots; calibrated rows: no work
    # measured again: the records are replaced, not added
    evaluate_classify([str(tiny)], data, labels=LABELS, train=TRAIN, n_parallel=1, n_threads=1)
    assert len(_records(zero, "classify")) == 4


def test_classify_shots_from_the_data_and_labels_from_it(tiny, tiny_bert_gguf):
    data = [{"text": t, "label": LABELS[i % 2]} for i, t in enumerate(TEXTS)]
    rows = evaluate_classify([str(tiny_bert_gguf)], data, shots=[0, 2], save=False)
    assert [r.method for r in rows] == ["embedding", "embedding"] and rows[0].meta["labels"] == LABELS
    assert all(r.figures["n_items"] == len(TEXTS) for r in rows)  # every item, at every count of shots
    assert rows[1].meta["train"] is None and rows[1].meta["shots"] == 2
    # --calibrate on fewer items than a batch prior needs: the content-free prior
    few = evaluate_classify([str(tiny)], data[:4], calibrate=True, n_parallel=1, n_threads=1, save=False)
    assert [r.method for r in few] == ["generative", "generative-calibrated"]
    assert few[1].meta["calibration"] == "content-free"


# --- extract ----------------------------------------------------------------------------------------

def test_extract_against_the_models_own_values(tiny, isolated_home):
    texts = ["Al is here", "Bo is not", "Cy maybe", "Di yes"]
    with slmrun.load(str(tiny), n_parallel=1, n_threads=1) as m:
        values = [m.extract(t, SCHEMA, max_tokens=64) for t in texts]
    data = [{"text": t, "expected": v} for t, v in zip(texts, values)]
    data[0] = {"text": texts[0], "expected": {**values[0], "ok": not values[0]["ok"]}}  # one field wrong
    (row,) = evaluate_extract([str(tiny)], data, schema=SCHEMA, max_tokens=64, n_parallel=1, n_threads=1)
    f = row.figures
    assert row.method == "chat" and f["n_invalid"] == 0 and f["exact_match"] == pytest.approx(3 / 4)
    assert f["field_f1"] == pytest.approx({"name": 1.0, "ok": 3 / 4})
    assert f["mean_field_f1"] == pytest.approx(7 / 8)
    cut = evaluate_extract([str(tiny)], data, schema=SCHEMA, max_tokens=3, n_threads=1, shots=[1], save=False)[0]
    assert cut.figures["n_invalid"] == 4 and cut.figures["exact_match"] == 0 and cut.meta["shots"] == 1
    assert len(_records(row, "extract")) == 1 and _records(row, "extract")[0]["meta"]["max_tokens"] == 64


# --- generate ---------------------------------------------------------------------------------------

def test_generate_against_the_models_own_replies(tiny, isolated_home):
    prompts = ["Say hi", "Tell me a story", "What is two plus two", "Name a colour"]
    with slmrun.load(str(tiny), n_parallel=1, n_threads=1) as m:
        replies = [m.chat([{"role": "user", "content": p}], temperature=0, max_tokens=12).text.strip() for p in prompts]
    assert all(replies)
    data = [{"prompt": p, "reference": [r, "another acceptable reply"]} for p, r in zip(prompts, replies)]
    rows = evaluate_generate([str(tiny)], data, shots=[0, 1], max_tokens=12, n_parallel=1, n_threads=1)
    zero, one = rows
    # the replies are the references: ROUGE-L 1; BLEU what sacrebleu gives the same pairs (random weights
    # reply in strings with no spaces, one 13a token each, so no 4-grams: test_evaluate_figures has real BLEU)
    assert zero.figures["rouge_l"] == pytest.approx(1.0)
    assert zero.figures["bleu"] == pytest.approx(bleu(replies, [d["reference"] for d in data])[0])
    assert "nrefs:2" in zero.meta["bleu_signature"] and zero.meta["rouge_tokenizer"] in ("rouge-score", "unicode")
    assert one.meta["shots"] == 1 and 0 <= one.figures["rouge_l"] <= 1 and 0 <= one.figures["bleu"] <= 100
    assert {"model", "method", "rouge_l", "bleu", "texts_per_s", "peak_rss"} <= set(zero.to_dict())
    assert len(_records(zero, "generate")) == 2


# --- refusals: nothing loads, nothing is kept -------------------------------------------------------

@pytest.fixture
def no_loading(monkeypatch):
    import slmrun.runtime as runtime
    monkeypatch.setattr(runtime, "Model", lambda *a, **k: pytest.fail("a model was loaded before the refusal"))


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_bad_inputs_are_refused_before_any_model_loads(tiny, tiny_bert_gguf, tmp_path, no_loading, isolated_home):
    good = [{"text": t, "label": LABELS[i % 2]} for i, t in enumerate(TEXTS)]
    bad_line = _jsonl(tmp_path / "bad.jsonl", [good[0], '{"text": "b", "label": }', good[1]])
    cases = [
        (lambda: evaluate_classify([str(tiny)], bad_line), InvalidArgumentError, "bad.jsonl, line 2: not valid JSON"),
        (lambda: evaluate_classify([str(tiny)], good, labels="yes,maybe"), InvalidArgumentError,
         "labels that --labels leaves out: 'no' (item 1)"),
        (lambda: evaluate_classify([str(tiny)], good, shots=[5]), InvalidArgumentError,
         "--shots 5 needs 5 examples of each label besides the item evaluated; --data items has 4 of 'yes'"),
        (lambda: evaluate_classify([str(tiny)], good, shots=[0, 3], train=TRAIN), InvalidArgumentError,
         "--train items has 2 of 'yes'"),
        (lambda: evaluate_classify([str(tiny)], _jsonl(tmp_path / "empty.jsonl", [])), InvalidArgumentError,
         "--data empty.jsonl holds no items"),
        (lambda: evaluate_classify([str(tiny)], good[:4], calibrate="batch"), InvalidArgumentError, "at least 8"),
        (lambda: evaluate_classify([str(tiny)], [{"text": "a", "label": "x"}]), InvalidArgumentError,
         "only one label"),
        (lambda: evaluate_extract([str(tiny)], [{"text": "a", "expected": {}}], schema=tmp_path / "s.json"),
         InvalidArgumentError, "--schema s.json is not JSON (line 1"),
        (lambda: evaluate_extract([str(tiny)], [{"text": "a", "expected": {}}], schema={"type": "nonsense"}),
         InvalidSchemaError, ""),
        (lambda: evaluate_extract([str(tiny)], [{"text": "a", "expected": {"name": 3, "ok": True}}], schema=SCHEMA),
         InvalidArgumentError, 'item 0: "expected" does not validate against the schema'),
        (lambda: evaluate_generate([str(tiny_bert_gguf)], [{"prompt": "a", "reference": "b"}]), ModelCapabilityError,
         "tiny-bert.gguf is an embedding model: it cannot generate text, which --task generate needs"),
        (lambda: evaluate_extract([str(tiny_bert_gguf)], [{"text": "a", "expected": {"name": "a", "ok": True}}],
                                  schema=SCHEMA), ModelCapabilityError, "which --task extract needs"),
        (lambda: evaluate_generate([str(tiny)], [{"prompt": "a", "reference": "b"}], max_tokens=0),
         InvalidArgumentError, "max_tokens must be"),
    ]
    (tmp_path / "s.json").write_text('{"type": "object", properties}')
    for run, cls, words in cases:
        with pytest.raises(cls) as info:
            run()
        assert words in info.value.message, info.value.message
    assert not (isolated_home / "evals").exists()


def _cli(*args):
    return subprocess.run([*slmrun_cmd(), "eval", *map(str, args)], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=180)


def test_cli_classify_table_and_json(tiny, tiny_bert_gguf, tmp_path, isolated_home):
    data = _jsonl(tmp_path / "data.jsonl", [{"text": t, "label": LABELS[i % 2], "split": "test"}
                                            for i, t in enumerate(TEXTS)])
    p = _cli("-m", tiny, "--task", "classify", "--data", data, "--shots", "0,1", "--calibrate", "--via",
             tiny_bert_gguf, "-t", 1)
    assert p.returncode == 0, p.stderr
    assert "ACCURACY" in p.stdout and "MACRO-F1" in p.stdout and "ECE" in p.stdout and "PEAK MEM" in p.stdout
    assert "generative-calibrated (batch), 1-shot" in p.stdout and "embedding, 0-shot" in p.stdout
    assert "true label (down) by predicted label (across)" in p.stdout
    assert "texts classified" in p.stderr  # progress, a line a row and about every 5% off a terminal
    p = _cli(tiny, "--task", "classify", "--data", data, "--json", "--no-save", "-t", 1)
    rows = json.loads(p.stdout)
    assert [(r["model"], r["method"], r["shots"]) for r in rows] == [("tiny.gguf", "generative", 0)]
    assert 0 <= rows[0]["accuracy"] <= 1 and rows[0]["confusion"]["labels"] == LABELS


def test_cli_refusals(tiny, tiny_bert_gguf, tmp_path, isolated_home):
    data = _jsonl(tmp_path / "data.jsonl", [{"text": t, "label": LABELS[i % 2]} for i, t in enumerate(TEXTS)])
    bad = _jsonl(tmp_path / "bad.jsonl", ['{"text": "a", "label": "yes"}', '{"text": "b" "label": "no"}'])
    gen = _jsonl(tmp_path / "gen.jsonl", [{"prompt": "a", "reference": "b"}])
    (tmp_path / "schema.json").write_text("{type: object}")
    (tmp_path / "empty.jsonl").write_text("\n")
    cases = [
        (("-m", tiny, "--task", "classify", "--data", bad), 2, "bad.jsonl, line 2: not valid JSON"),
        (("-m", tiny, "--task", "classify", "--data", data, "--labels", "yes"), 2, "--labels leaves out: 'no'"),
        (("-m", tiny, "--task", "classify", "--data", data, "--shots", 5), 2, "--shots 5 needs 5 examples"),
        (("-m", tiny, "--task", "extract", "--data", gen, "--schema", tmp_path / "schema.json"), 2,
         'expected an object with "text" and "expected"'),
        (("-m", tiny, "--task", "extract", "--data", _jsonl(tmp_path / "ex.jsonl", [{"text": "a", "expected": {}}]),
          "--schema", tmp_path / "schema.json"), 2, "--schema schema.json is not JSON"),
        (("-m", tiny, "--task", "classify", "--data", tmp_path / "empty.jsonl"), 2, "holds no items"),
        (("-m", tiny_bert_gguf, "--task", "generate", "--data", gen), 20, "is an embedding model"),
        (("-m", tiny, "--task", "classify"), 2, "--task classify needs --data"),
        (("-m", tiny, "--task", "extract", "--data", gen), 2, "--task extract needs --schema"),
        (("-m", tiny, "--task", "classify", "--data", data, "--text", data), 2, "--text is for --task perplexity"),
        (("-m", tiny, "--task", "generate", "--data", gen, "--labels", "a,b"), 2, "--labels is for --task classify"),
        (("--task", "classify", "--data", data), 2, "name a model"),
    ]
    for args, code, words in cases:
        p = _cli(*args)
        assert p.returncode == code and words in p.stderr and "Hint:" in p.stderr, (args, p.stderr)
        assert p.stdout == ""
    assert not (isolated_home / "evals").exists()


# --- the default model ------------------------------------------------------------------------------

REVIEWS = [("I loved this film, the acting was wonderful.", "positive"),
           ("The food was cold and the waiter was rude.", "negative"),
           ("Best purchase I have made all year, it works perfectly.", "positive"),
           ("It broke after two days and support never answered.", "negative"),
           ("What a delightful little hotel, we will come back.", "positive"),
           ("Terrible service, I want my money back.", "negative")]


@pytest.mark.real_model
def test_a_small_classify_eval_with_the_default_model(default_model_in_store, isolated_home):
    data = [{"text": t, "label": label} for t, label in REVIEWS]
    rows = evaluate_classify(["smollm2-135m"], data, shots=[0, 1], n_parallel=1)
    zero, one = rows
    assert (zero.model, zero.meta["shots"], one.meta["shots"]) == ("smollm2-135m:q4_1", 0, 1)
    with slmrun.load("smollm2-135m", n_parallel=1) as m:
        found = m.classify_many([t for t, _ in REVIEWS], ["positive", "negative"])
    gold = [label for _, label in REVIEWS]
    assert zero.figures["accuracy"] == pytest.approx(sum(c.label == g for c, g in zip(found, gold)) / len(gold))
    assert zero.figures["confusion"]["labels"] == ["positive", "negative"]
    for row in rows:
        assert sum(map(sum, row.figures["confusion"]["matrix"])) == len(REVIEWS) and 0 <= row.figures["ece"] <= 1
    kept = results.records(zero.sha256, "classify")
    assert zero.sha256 == DEFAULT_SHA  # kept under the file's SHA-256
    assert {(r["method"], r["meta"]["shots"]) for r in kept} == {("generative", 0), ("generative", 1)}
