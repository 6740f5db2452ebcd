"""The task evaluations' pure parts, from tables: the figures (confusion, per-label and macro F1,
ECE, exact match, per-field F1, the ROUGE-L and BLEU wrappers) and the data rules (reading
JSON lines with line numbers, labels, few-shot groups, --shots, the schema file)."""

from __future__ import annotations

import pytest

from slmrun.errors import InvalidArgumentError
from slmrun.evaluate import metrics as M
from slmrun.evaluate.data import (check_labels, labels_in, parse_shots, read_data, read_schema, shot_groups)

# --- classify ---------------------------------------------------------------------------------------

GOLD = ["a", "a", "a", "b", "b", "c"]
PRED = ["a", "b", "a", "b", "a", "a"]


def test_confusion_matrix_rows_true_columns_predicted():
    m = M.confusion_matrix(GOLD, PRED, ["a", "b", "c"])
    assert m == [[2, 1, 0],
                 [1, 1, 0],
                 [1, 0, 0]]
    # per label: a: tp 2, fp 2, fn 1 -> 4/7; b: tp 1, fp 1, fn 1 -> 1/2; c: never right -> 0
    assert M.per_label_f1(m, ["a", "b", "c"]) == pytest.approx({"a": 4 / 7, "b": 0.5, "c": 0.0})
    assert M.per_label_f1(M.confusion_matrix(["a"], ["a"], ["a", "z"]), ["a", "z"]) == {"a": 1.0, "z": None}


def test_classify_figures():
    conf = [0.9, 0.6, 0.8, 0.7, 0.55, 0.95]
    f = M.classify_figures(GOLD, PRED, conf, ["a", "b", "c"])
    assert f["accuracy"] == pytest.approx(3 / 6)
    assert f["macro_f1"] == pytest.approx((4 / 7 + 0.5 + 0.0) / 3)
    # bins (0.5,0.6]: 0.6 wrong, 0.55 wrong -> |0 - 0.575| x 2/6; (0.6,0.7]: 0.7 right -> |1 - 0.7| x 1/6;
    # (0.7,0.8]: 0.8 right -> 0.2/6; (0.8,0.9]: 0.9 right -> 0.1/6; (0.9,1]: 0.95 wrong -> 0.95/6
    assert f["ece"] == pytest.approx((2 * 0.575 + 0.3 + 0.2 + 0.1 + 0.95) / 6)
    assert f["confusion"] == {"labels": ["a", "b", "c"], "matrix": M.confusion_matrix(GOLD, PRED, ["a", "b", "c"])}
    assert f["n_items"] == 6


# --- extract ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("a, b, same", [
    (31, 31.0, True), (True, 1, False), (False, 0, False), (True, True, True), ("31", 31, False),
    ({"a": 1, "b": [1, 2]}, {"b": [1, 2.0], "a": 1}, True), ([1, 2], [2, 1], False), ({"a": 1}, {"a": 1, "b": None}, False),
    (None, None, True), ("Alice", "alice", False), ([True], [1], False),
])
def test_same_value_is_typed_json_equality(a, b, same):
    assert M.same_value(a, b) is same and M.same_value(b, a) is same


def test_extract_figures():
    expected = [{"name": "Al", "age": 3}, {"name": "Bo", "age": 40}, {"name": "Cy", "age": None},
                {"name": "Di", "age": 7}]
    predicted = [{"name": "Al", "age": 3},           # exact
                 {"name": "Bo", "age": 41},          # name right, age wrong
                 {"name": "Cy", "age": 9},           # age predicted where none is expected
                 M.MISSING]                          # cut at max_tokens: predicts nothing
    f = M.extract_figures(expected, predicted, ["name", "age"])
    assert f["exact_match"] == pytest.approx(1 / 4) and f["n_invalid"] == 1 and f["n_items"] == 4
    # name: predicted 3, expected 4, correct 3 -> 6/7; age: predicted 3, expected 3, correct 1 -> 2/6
    assert f["field_f1"] == pytest.approx({"name": 6 / 7, "age": 1 / 3})
    assert f["mean_field_f1"] == pytest.approx((6 / 7 + 1 / 3) / 2)
    g = M.extract_figures([[1, 2], "x"], [[1, 2], "y"], [])  # not objects: exact match only
    assert g["exact_match"] == 0.5 and g["field_f1"] == {} and g["mean_field_f1"] is None
    assert M.extract_figures([{"a": None}], [{}], ["a"])["field_f1"] == {"a": None}  # never there: no score
    with pytest.raises(ValueError):
        M.extract_figures([], [], [])


def test_fields_come_from_the_schema_then_the_expected_values():
    schema = {"type": "object", "properties": {"name": {}, "age": {}}}
    assert M.fields_of(schema, [{"age": 1, "city": "x"}, {"zip": "1"}]) == ["name", "age", "city", "zip"]
    assert M.fields_of({"type": "array"}, [[1]]) == []


# --- generate ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction, references, f", [
    ("the cat sat on the mat", ["the cat on mat"], 0.8),          # LCS 4: P 4/6, R 4/4
    ("the cat on mat", ["the cat sat on the mat"], 0.8),
    ("a b c d", ["a b c d"], 1.0),
    ("x y", ["a b"], 0.0),
    ("", ["a b"], 0.0),
    ("a dog ran", ["the cat sat", "a dog"], 0.8),                 # the best reference: LCS 2, P 2/3, R 2/2
    ("The Cat, sat!", ["the cat sat"], 1.0),                      # rouge-score lower-cases and drops punctuation
])
def test_rouge_l_per_item(prediction, references, f):
    value, tokenizer = M.rouge_l([prediction], [references])
    assert value == pytest.approx(f) and tokenizer == "rouge-score"


def test_rouge_l_other_scripts_use_a_unicode_tokenizer():
    # rouge-score alone reads "猫が座った" as no tokens (0 against itself) and "café" as "caf".
    assert M.rouge_l(["猫が座った"], [["猫が座った"]]) == (pytest.approx(1.0), "unicode")
    value, _ = M.rouge_l(["猫が座"], [["猫が座った"]])  # 3 of 5 characters: P 1, R 3/5
    assert value == pytest.approx(2 * 0.6 / 1.6)
    assert M.rouge_l(["café noir"], [["café"]])[0] == pytest.approx(2 / 3)
    assert M.UnicodeTokenizer().tokenize("Ça va, 東京!") == ["ça", "va", "東", "京"]
    # the mean over items
    assert M.rouge_l(["a b", "x"], [["a b"], ["y"]])[0] == pytest.approx(0.5)


def test_bleu_wrapper():
    # sacrebleu's README example: 48.53 with two reference streams.
    refs = [["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
            ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]]
    hyps = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    score, signature = M.bleu(hyps, [list(r) for r in zip(*refs)])
    assert score == pytest.approx(48.530827, abs=1e-5)
    assert "tok:13a" in signature and "nrefs:2" in signature
    assert M.bleu(["the cat sat on the mat"], [["the cat sat on the mat"]])[0] == pytest.approx(100)
    assert M.bleu(["x y z w"], [["a b c d"]])[0] == 0.0
    # items with different numbers of references
    score, signature = M.bleu(hyps, [[refs[0][0], refs[1][0]], [refs[0][1]], [refs[0][2], refs[1][2]]])
    assert 0 < score < 100 and "nrefs:var" in signature
    figures = M.generate_figures(["a b c d"], [["a b c d"]])
    assert figures["rouge_l"] == 1.0 and figures["bleu"] == pytest.approx(100) and figures["n_items"] == 1


# --- data -------------------------------------------------------------------------------------------

def _write(tmp_path, lines, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("task, lines, words", [
    ("classify", ['{"text": "a", "label": "x"}', '{"text": "b" "label": "y"}'], "d.jsonl, line 2: not valid JSON"),
    ("classify", ['{"text": "a", "label": "x"}', '', '["a", "x"]'], 'line 3: expected an object with "text" and "label"'),
    ("classify", ['{"text": "a"}'], 'line 1: expected an object with "text" and "label", got an object with \'text\''),
    ("classify", ['{"text": " ", "label": "x"}'], 'line 1: "text" must be a non-empty string'),
    ("classify", ['{"text": "a", "label": ["x"]}'], 'line 1: "label" must be a non-empty string'),
    ("classify", ['{"text": "a", "label": true}'], 'line 1: "label" must be a non-empty string'),
    ("extract", ['{"text": "a", "label": "x"}'], 'expected an object with "text" and "expected"'),
    ("generate", ['{"prompt": "a", "reference": 3}'], '"reference" must be a non-empty string or a list'),
    ("generate", ['{"prompt": "a", "reference": []}'], '"reference" must be a non-empty string or a list'),
    ("classify", [], "holds no items"),
    ("classify", ["", "  "], "holds no items"),
])
def test_bad_data_names_the_line(tmp_path, task, lines, words):
    with pytest.raises(InvalidArgumentError) as info:
        read_data(_write(tmp_path, lines), task)
    assert words in info.value.message
    assert info.value.hint  # says what a line must look like (or how to read the file)


def test_data_is_read_whole(tmp_path):
    d = read_data(_write(tmp_path, ['{"text": "a", "label": "x", "split": "test"}', "",
                                    '{"text": "b", "label": 2}']), "classify")
    assert [(i.input, i.target, i.where) for i in d.items] == [("a", "x", "d.jsonl, line 1"), ("b", "2", "d.jsonl, line 3")]
    assert d.name == "d.jsonl" and len(d.sha256) == 64
    g = read_data([{"prompt": "p", "reference": ["r1", "r2"]}], "generate")
    assert g.items[0].target == ("r1", "r2") and g.items[0].where == "item 0"
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "caf\xe9", "label": "x"}\n')
    with pytest.raises(InvalidArgumentError, match="not UTF-8"):
        read_data(tmp_path / "latin1.jsonl", "classify")
    with pytest.raises(InvalidArgumentError, match="no such file"):
        read_data(tmp_path / "missing.jsonl", "classify")


def test_labels_the_given_ones_leave_out_are_named_with_their_lines(tmp_path):
    d = read_data(_write(tmp_path, ['{"text": "a", "label": "x"}', '{"text": "b", "label": "y"}',
                                    '{"text": "c", "label": "z"}', '{"text": "d", "label": "y"}']), "classify")
    assert labels_in(d) == ["x", "y", "z"]
    check_labels(["z", "y", "x", "w"], d)  # more labels than the data uses: fine
    with pytest.raises(InvalidArgumentError) as info:
        check_labels(["x"], d)
    assert "'y' (d.jsonl, line 2), 'z' (d.jsonl, line 3)" in info.value.message
    assert "x,y,z" in info.value.hint


@pytest.mark.parametrize("values, out", [(None, [0]), ([], [0]), (["0,3"], [0, 3]), (["2", "0", "2"], [2, 0]),
                                         ([" 1 , 5"], [1, 5])])
def test_parse_shots(values, out):
    assert parse_shots(values) == out


@pytest.mark.parametrize("values", [["x"], ["-1"], ["1,,2"]])
def test_parse_shots_refusals(values):
    with pytest.raises(InvalidArgumentError, match="--shots"):
        parse_shots(values)


KEYS = ["a", "b", "a", "b", "a", "b", "a"]  # items 0..6


def test_shots_from_the_data_never_show_an_item_its_own_example():
    groups = shot_groups(2, KEYS, ["a", "b"])
    # the first two of each label, interleaved; an item among them takes the next of its label instead
    assert [(g.examples, g.items) for g in groups] == [
        ((0, 1, 2, 3), (4, 5, 6)),
        ((4, 1, 2, 3), (0,)), ((0, 5, 2, 3), (1,)), ((0, 1, 4, 3), (2,)), ((0, 1, 2, 5), (3,)),
    ]
    for g in groups:
        assert not set(g.examples) & set(g.items)
        assert sorted(KEYS[i] for i in g.examples) == ["a", "a", "b", "b"]
    assert sorted(i for g in groups for i in g.items) == list(range(7))  # every item, once
    assert shot_groups(0, KEYS, ["a", "b"]) == [type(groups[0])((), tuple(range(7)))]


def test_shots_from_a_train_set_are_the_same_for_every_item():
    (g,) = shot_groups(1, ["b", "a", "a"], ["a", "b"], n_items=5)
    assert g.examples == (1, 0) and g.items == tuple(range(5))
    (g,) = shot_groups(2, [None] * 4, [None], n_items=3)  # tasks without labels: n examples in all
    assert g.examples == (0, 1)


@pytest.mark.parametrize("n, pool, order, n_items, words, hint", [
    (3, KEYS, ["a", "b"], None, "--shots 3 needs 3 examples of each label besides the item evaluated; "
                                "--train has 2 of 'b'", "--shots 2 or fewer"),
    (1, ["a", "a"], ["a", "b"], None, "has 0 of 'b'", "--shots 0 or fewer"),
    (2, ["a", "b", "b"], ["a", "b"], 4, "--shots 2 needs 2 examples of each label; --train has 1 of 'a'",
     "--shots 1 or fewer"),
])
def test_more_shots_than_examples_is_refused(n, pool, order, n_items, words, hint):
    with pytest.raises(InvalidArgumentError) as info:
        shot_groups(n, pool, order, n_items=n_items)
    assert words in info.value.message and hint in info.value.hint


def test_read_schema(tmp_path):
    good = tmp_path / "s.json"
    good.write_text('{"type": "object", "properties": {"a": {"type": "string"}}}')
    assert read_schema(good)["type"] == "object" and read_schema(str(good)) == read_schema(good)
    assert read_schema({"type": "string"}) == {"type": "string"}
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "object",\n "properties": }')
    with pytest.raises(InvalidArgumentError) as info:
        read_schema(bad)
    assert "--schema bad.json is not JSON (line 2" in info.value.message and "JSON Schema" in info.value.hint
    with pytest.raises(InvalidArgumentError, match="no such file"):
        read_schema(tmp_path / "none.json")
    assert read_schema('{"type": "integer"}') == {"type": "integer"}  # JSON text is taken as the schema
    from pydantic import BaseModel

    class Person(BaseModel):
        name: str
        age: int
    assert set(read_schema(Person)["properties"]) == {"name", "age"}  # as Model.extract takes one
