"""The decisions of classification (slmrun.classification), from tables: no model."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from slmrun.classification import (CONTENT_FREE, choose_calibration, choose_method, parse_labels, read_examples,
                                   read_labels_file, recalibrated, scoring)
from slmrun.classification.labels import check_examples, label_set
from slmrun.errors import InvalidArgumentError, ModelCapabilityError
from slmrun.structured import Classification


def test_centroids_are_the_normalised_means_and_a_label_with_no_member_is_zero():
    X = [[1, 0], [0, 1], [3, 0]]
    C = scoring.centroids(X, [0, 0, 1], 3)
    assert np.allclose(C, [[math.sqrt(.5), math.sqrt(.5)], [1, 0], [0, 0]])


def test_cosine_scores_ignore_lengths():
    S = scoring.cosine_scores([[2, 0], [1, 1]], [[1, 0], [0, 5]])
    assert np.allclose(S, [[1, 0], [math.sqrt(.5), math.sqrt(.5)]])


@pytest.mark.parametrize("scores, t, expected", [
    ([[0.0, 0.0]], 1.0, [[0.5, 0.5]]),
    ([[0.1, 0.0]], 0.1, [[math.e / (math.e + 1), 1 / (math.e + 1)]]),
    ([[1000.0, 0.0]], 1.0, [[1.0, 0.0]]),  # no overflow
])
def test_softmax_with_a_temperature(scores, t, expected):
    assert np.allclose(scoring.softmax(scores, t), expected)


def test_softmax_refuses_a_temperature_of_zero():
    with pytest.raises(ValueError):
        scoring.softmax([[1, 2]], 0)


def test_leave_one_out_scores_leave_each_example_out_of_its_own_centroid():
    X = [[1, 0], [0.6, 0.8], [0, 1]]
    scores, kept = scoring.loo_scores(X, [0, 0, 1], 2)
    assert kept == [0, 1]  # example 2 is the only member of label 1: nothing to compare it with
    # example 0 meets label 0's centroid made of example 1 alone, and label 1's of example 2
    assert np.allclose(scores[0], [0.6, 0.0])
    assert np.allclose(scores[1], [0.6, 0.8])


def test_a_prototype_counts_as_one_more_member():
    X = [[1, 0], [0, 1]]
    protos = [[1, 0], [0, 1]]
    scores, kept = scoring.loo_scores(X, [0, 1], 2, extra=protos)
    assert kept == [0, 1]
    assert np.allclose(scores, [[1, 0], [0, 1]])  # each left with its prototype


def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_with():
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 0.5, size=(4000, 4))
    p = scoring.softmax(scores, 0.05)
    y = [rng.choice(4, p=row) for row in p]
    assert scoring.fit_temperature(scores, y) == pytest.approx(0.05, rel=0.1)


def test_fit_temperature_goes_to_the_upper_bound_when_the_scores_say_nothing():
    scores = np.array([[0.5, 0.1], [0.5, 0.1], [0.1, 0.5], [0.1, 0.5]])
    y = [0, 1, 0, 1]  # the higher score is right half the time: uniform is best
    assert scoring.fit_temperature(scores, y, hi=2.0) == pytest.approx(2.0, rel=0.01)


@pytest.mark.parametrize("probs, prior, expected", [
    ([[0.8, 0.2]], [0.8, 0.2], [[0.5, 0.5]]),
    ([[0.6, 0.4]], [0.9, 0.1], [[0.6 / 0.9 / (0.6 / 0.9 + 4), 4 / (0.6 / 0.9 + 4)]]),
    ([[0.3, 0.3, 0.4]], [1 / 3, 1 / 3, 1 / 3], [[0.3, 0.3, 0.4]]),  # a uniform prior changes nothing
])
def test_dividing_out_the_prior(probs, prior, expected):
    assert np.allclose(scoring.divide_prior(probs, prior), expected)


def test_mean_prior():
    assert np.allclose(scoring.mean_prior([[0.9, 0.1], [0.5, 0.5]]), [0.7, 0.3])


def test_recalibrated_moves_the_label_and_keeps_the_models_logprobs():
    c = Classification(label="sport", probabilities={"sport": 0.6, "tech": 0.4},
                       logprobs={"sport": -1.0, "tech": -1.4})
    r = recalibrated(c, [0.9, 0.1])
    assert r.label == "tech" and sum(r.probabilities.values()) == pytest.approx(1)
    assert r.logprobs == c.logprobs


@pytest.mark.parametrize("gold, pred, acc, f1", [
    (["a", "a", "b", "b"], ["a", "a", "b", "b"], 1.0, 1.0),
    (["a", "a", "b", "b"], ["a", "a", "a", "a"], 0.5, (2 * 2 / (4 + 2) + 0) / 2),
    (["a", "b", "c"], ["b", "c", "a"], 0.0, 0.0),
])
def test_accuracy_and_macro_f1(gold, pred, acc, f1):
    assert scoring.accuracy(gold, pred) == pytest.approx(acc)
    assert scoring.macro_f1(gold, pred) == pytest.approx(f1)


@pytest.mark.parametrize("conf, ok, ece", [
    ([1.0, 1.0], [True, True], 0.0),
    ([0.9, 0.9], [True, False], 0.4),
    ([0.55, 0.95], [True, True], 0.5 * 0.45 + 0.5 * 0.05),
])
def test_expected_calibration_error(conf, ok, ece):
    assert scoring.expected_calibration_error(conf, ok) == pytest.approx(ece)


# --- which method, which calibration ------------------------------------------------------------------

EMBEDDER = SimpleNamespace(is_embedding_model=True, name="minilm-l6")
GENERATOR = SimpleNamespace(is_embedding_model=False, name="smollm2-135m")


@pytest.mark.parametrize("model, asked, chosen", [
    (EMBEDDER, None, "embedding"), (GENERATOR, None, "generative"),
    (GENERATOR, "embedding", "embedding"), (EMBEDDER, "embedding", "embedding"),
])
def test_choose_method(model, asked, chosen):
    assert choose_method(model, asked) == chosen


def test_an_embedding_model_cannot_classify_by_generation():
    with pytest.raises(ModelCapabilityError, match="embedding model"):
        choose_method(EMBEDDER, "generative")


def test_an_unknown_method_is_refused():
    with pytest.raises(InvalidArgumentError, match="method must be"):
        choose_method(GENERATOR, "magic")


@pytest.mark.parametrize("calibrate, method, n, chosen", [
    (False, "generative", None, None), (True, "generative", None, "content-free"), (True, "generative", 20, "batch"),
    ("batch", "generative", 50, "batch"), ("content-free", "generative", 3, "content-free"),
    (True, "embedding", None, None),  # embedding probabilities are calibrated by their temperature
])
def test_choose_calibration(calibrate, method, n, chosen):
    assert choose_calibration(calibrate, method, n) == chosen


@pytest.mark.parametrize("calibrate, n, message", [("batch", None, "at least"), ("batch", 2, "at least"),
                                                    ("platt", 10, "calibrate must be")])
def test_choose_calibration_refuses(calibrate, n, message):
    with pytest.raises(InvalidArgumentError, match=message):
        choose_calibration(calibrate, "generative", n)


def test_content_free_inputs_are_zhaos():
    assert "N/A" in CONTENT_FREE


# --- labels and examples as users give them ---------------------------------------------------------

@pytest.mark.parametrize("spec, names, descriptions", [
    ("a,b,c", ("a", "b", "c"), (None, None, None)),
    ("spam=unsolicited advertising, ham=a normal message", ("spam", "ham"),
     ("unsolicited advertising", "a normal message")),
    ("x=, y", ("x", "y"), (None, None)),
])
def test_parse_labels(spec, names, descriptions):
    ls = parse_labels(spec)
    assert ls.names == names and ls.descriptions == descriptions


@pytest.mark.parametrize("spec, message", [("a", "at least two"), ("a,a", "twice"), ("a,,b", "empty")])
def test_parse_labels_refuses(spec, message):
    with pytest.raises(InvalidArgumentError, match=message):
        parse_labels(spec)


def test_label_descriptions_make_the_prototypes_and_the_instruction():
    ls = label_set({"spam": "unsolicited advertising", "ham": None})
    assert ls.prototype_text(0) == "unsolicited advertising" and ls.prototype_text(1) == "ham"
    assert "spam (unsolicited advertising), ham." in ls.instruction()


def test_labels_files(tmp_path):
    text = tmp_path / "labels.txt"
    text.write_text("# topics\nsport=games and races\n\npolitics\n")
    assert read_labels_file(text).names == ("sport", "politics")
    js = tmp_path / "labels.json"
    js.write_text(json.dumps({"sport": "games, with, commas", "politics": "government"}))
    assert read_labels_file(js).descriptions == ("games, with, commas", "government")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(InvalidArgumentError, match="not valid JSON"):
        read_labels_file(bad)


def test_a_train_file_with_a_malformed_line_names_the_line(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text('{"text": "goal!", "label": "sport"}\n\n{"text": "vote", "label": "politics"\n')
    with pytest.raises(InvalidArgumentError, match=r"line 3: not valid JSON"):
        read_examples(f)
    f.write_text('{"text": "goal!", "label": "sport"}\n{"text": "vote"}\n')
    with pytest.raises(InvalidArgumentError, match=r"line 2: expected an object"):
        read_examples(f)


def test_a_train_label_that_the_labels_omit_is_refused_with_its_line(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text('{"text": "goal!", "label": "sport"}\n{"text": "new phone", "label": "tech"}\n')
    assert read_examples(f) == [("goal!", "sport"), ("new phone", "tech")]
    with pytest.raises(InvalidArgumentError, match=r"line 2: the label 'tech' is not one of"):
        read_examples(f, ["sport", "politics"])


@pytest.mark.parametrize("examples, message", [
    ([("text", "x")], "not one of"), ([("", "a")], "non-empty"), (["just text"], "pair"),
    ([{"text": "t", "label": 3}], "label must be"),
])
def test_check_examples_refuses(examples, message):
    with pytest.raises(InvalidArgumentError, match=message):
        check_examples(examples, ["a", "b"])
