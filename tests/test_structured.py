"""slmrun.structured without the real model: specs and their refusals, masks on a tiny model's
vocabulary, output validation, the JSONSchemaBench sample, and the classification math."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import slmrun
from slmrun import structured as S
from slmrun.errors import (ContextOverflowError, InvalidArgumentError, InvalidGrammarError, InvalidSchemaError,
                           SlmrunError, StructuredOutputError, UnsupportedSchemaError)

from tinymodels import write_tiny_gguf

DATA = Path(__file__).parent / "data" / "jsonschemabench"
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                           "city": {"type": "string"}},
          "required": ["name", "age", "city"], "additionalProperties": False}
SMALL = {"type": "object", "additionalProperties": False, "required": ["name", "n", "ok", "colour"],
         "properties": {"name": {"type": "string", "maxLength": 8}, "n": {"type": "integer", "minimum": 0,
                                                                            "maximum": 99},
                        "ok": {"type": "boolean"}, "colour": {"enum": ["red", "green"]}}}


# --- specs ----------------------------------------------------------------------------------------
def test_a_dict_and_its_json_text_give_the_same_cached_spec():
    a = S.constraint_spec(json_schema=PERSON)
    b = S.constraint_spec(json_schema=json.dumps(PERSON))
    assert a is b and a.kind == "json_schema" and a.is_json and a.schema == PERSON


def test_a_pydantic_model_class_is_a_schema():
    pydantic = pytest.importorskip("pydantic")

    class Person(pydantic.BaseModel):
        name: str
        age: int

    spec = S.constraint_spec(json_schema=Person)
    assert spec.schema == Person.model_json_schema()
    assert S.accepts(spec, '{"name": "Ann", "age": 3}')
    assert not S.accepts(spec, '{"name": "Ann", "age": "3"}')


def test_properties_are_generated_in_the_schema_order_with_fixed_separators():
    spec = S.constraint_spec(json_schema={"type": "object", "properties": {"b": {"type": "integer"},
                                                                           "a": {"type": "integer"}},
                                          "required": ["b", "a"]})
    assert S.accepts(spec, '{"b": 1, "a": 2}')
    assert not S.accepts(spec, '{"a": 2, "b": 1}')  # valid JSON Schema-wise, but not how it is generated
    assert not S.accepts(spec, '{"b":1,"a":2}') and not S.accepts(spec, '{\n  "b": 1, "a": 2}')


def test_the_schema_own_x_guidance_options_win_over_the_layout():
    spec = S.constraint_spec(json_schema={"type": "object", "x-guidance": {"whitespace_flexible": True}})
    assert S.accepts(spec, '{ "x" :1 }')


def test_json_object_and_the_true_schema():
    any_object = S.constraint_spec(json_object=True)
    assert any_object.kind == "json_object"
    assert S.accepts(any_object, '{"x": [1, 2.5, null, "s"]}') and not S.accepts(any_object, "[1]")
    anything = S.constraint_spec(json_schema=True)
    assert S.accepts(anything, "[1, 2]") and S.accepts(anything, '"s"')


@pytest.mark.parametrize("text", ['start: "yes" | "no"', 'root ::= "yes" | "no"'])
def test_grammars_in_lark_and_gbnf(text):
    spec = S.constraint_spec(grammar=text)
    assert spec.kind == "grammar" and not spec.is_json
    assert S.accepts(spec, "yes") and S.accepts(spec, "no") and not S.accepts(spec, "maybe")


def test_no_constraint_is_none_and_two_are_refused():
    assert S.constraint_spec() is None
    with pytest.raises(InvalidArgumentError, match="json_schema and grammar were both given"):
        S.constraint_spec(json_schema=PERSON, grammar='start: "x"')


BAD_SPECS = [
    (dict(json_schema='{"type": "object",'), InvalidSchemaError, "the JSON Schema is not valid JSON"),
    (dict(json_schema=[1, 2]), InvalidSchemaError, "a JSON Schema is an object, got list"),
    (dict(json_schema={"type": 5}), InvalidSchemaError, r"not a valid JSON Schema \(draft 2020-12\) at \$.type"),
    (dict(json_schema={"$schema": "http://json-schema.org/draft-04/schema#",
                       "properties": {"a": {"minimum": "3"}}}),
     InvalidSchemaError, r"\(draft 4\) at \$.properties.a.minimum: '3' is not of type 'number'"),
    (dict(json_schema={"type": "object", "properties": {"a": {"not": {"type": "string"}}}}),
     UnsupportedSchemaError, r'cannot enforce this JSON Schema: Unimplemented keys: \["not"\]'),
    (dict(json_schema={"type": "string", "pattern": "(?=a)b"}), UnsupportedSchemaError,
     r"the regex \(\?=a\)b: look-around, including look-ahead and look-behind, is not supported"),
    (dict(json_schema={"$ref": "https://example.com/s.json"}), UnsupportedSchemaError, "https://example.com/s.json"),
    (dict(json_schema={"oneOf": [{"type": "integer"}, {"type": "number"}]}), UnsupportedSchemaError, "oneOf"),
    (dict(json_schema={"type": "string", "format": "no-such-format"}), UnsupportedSchemaError,
     "Unknown format: no-such-format"),
    (dict(json_schema=False), UnsupportedSchemaError, "no value satisfies it"),
    (dict(grammar=""), InvalidGrammarError, "the grammar is empty"),
    (dict(grammar=5), InvalidGrammarError, "a grammar must be text"),
    (dict(grammar="x ::= "), InvalidGrammarError, r"neither Lark \(no `start:` rule\) nor valid GBNF"),
    (dict(grammar="start: foo"), InvalidGrammarError, 'the Lark grammar does not compile: .*unknown name: "foo"'),
]


@pytest.mark.parametrize("kwargs,cls,message", BAD_SPECS)
def test_bad_schemas_and_grammars_are_refused_in_one_line_with_a_hint(kwargs, cls, message):
    with pytest.raises(cls, match=message) as info:
        S.constraint_spec(**kwargs)
    err = info.value
    assert isinstance(err, SlmrunError) and isinstance(err, ValueError)
    assert "\n" not in err.message and len(err.message) < 320 and err.hint


def test_refusal_hints_name_the_way_out():
    with pytest.raises(UnsupportedSchemaError) as info:
        S.constraint_spec(json_schema={"oneOf": [{"type": "integer"}, {"type": "number"}]})
    assert "coerce_one_of" in info.value.hint
    with pytest.raises(UnsupportedSchemaError) as info:
        S.constraint_spec(json_schema={"$ref": "https://example.com/s.json"})
    assert "$defs" in info.value.hint


# --- output validation ----------------------------------------------------------------------------
def test_parse_json_returns_the_validated_value():
    assert S.parse_json('{"name": "Ann", "age": 3, "city": "Rome"}', PERSON) == {"name": "Ann", "age": 3,
                                                                                  "city": "Rome"}
    assert S.parse_json("[1, 2]") == [1, 2]  # no schema: any JSON


@pytest.mark.parametrize("text,schema,finish,message", [
    ('{"name": "Ann", "age": 31', PERSON, "length", "stopped at max_tokens before the value was complete"),
    ("31", {"type": "integer"}, "length", "stopped at max_tokens"),  # parses, but may be cut from 314
    ('{"name": "Ann", "age": ', PERSON, "stop", "the output is not valid JSON"),
    ('{"name": "Ann", "age": "old", "city": "Rome"}', PERSON, "stop",
     r"does not validate against the schema at \$.age: 'old' is not of type 'integer'"),
])
def test_parse_json_refuses_incomplete_invalid_and_non_validating_text(text, schema, finish, message):
    with pytest.raises(StructuredOutputError, match=message) as info:
        S.parse_json(text, schema, finish_reason=finish)
    assert info.value.hint and "\n" not in info.value.message


def test_formats_are_validated_too():
    case = json.loads((DATA / "Github_easy---o42028.json").read_text())
    bad = case["tests"][3]
    assert not bad["valid"] and bad["data"]["schema"]["url"] == "Invalid URL"
    with pytest.raises(StructuredOutputError, match="is not a 'uri'"):
        S.parse_json(json.dumps(bad["data"]), case["schema"])


# --- masks on a tiny model's vocabulary -------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # The tiny vocabulary plus "▁": SentencePiece writes a space as "▁", and without that token
    # a forced space would come back as its three UTF-8 byte tokens, which do not read as " ".
    path = write_tiny_gguf(tmp_path_factory.mktemp("tiny-json") / "tiny-json.gguf", extra_tokens=(("▁", 1),), seed=3)
    with slmrun.load(path, n_ctx=512, n_threads=1) as model:
        yield model, model._grammar()


def test_the_tokenizer_is_built_once_per_model_and_released(tiny):
    model, tok = tiny
    assert model._grammar() is tok
    assert tok.n_vocab == model.n_vocab and set(tok.eos_tokens) == set(model._h.eog_tokens)
    other = S.tokenizer_for("another key", model._h.vocab_table)
    S.release_tokenizer("another key")
    S.release_tokenizer("another key")  # twice is fine
    assert other.closed
    with pytest.raises(InvalidArgumentError, match="was closed"):
        other.constraint(S.constraint_spec(json_schema=PERSON))


def test_apply_mask_leaves_exactly_the_allowed_tokens(tiny):
    model, tok = tiny
    c = tok.constraint(S.constraint_spec(json_schema={"enum": ["yes", "no"]}))
    allowed = c.allowed_tokens()
    row = np.zeros(tok.n_vocab, dtype=np.float32)
    c.apply_mask(row)
    assert np.array_equal(np.isfinite(row), allowed)
    pieces = [tok.decode([t]) for t in np.flatnonzero(allowed)]
    assert pieces and all(b'"yes"'.startswith(p) or b'"no"'.startswith(p) for p in pieces)


def test_apply_mask_checks_the_row_and_blocks_columns_past_the_vocabulary(tiny):
    model, tok = tiny
    c = tok.constraint(S.constraint_spec(json_object=True))
    wide = np.zeros(tok.n_vocab + 7, dtype=np.float32)
    c.apply_mask(wide)
    assert np.all(wide[tok.n_vocab:] == -np.inf)
    with pytest.raises(InvalidArgumentError, match="do not cover"):
        c.apply_mask(np.zeros(tok.n_vocab - 1, dtype=np.float32))


def test_a_batch_of_masks_equals_the_masks_one_by_one(tiny):
    model, tok = tiny
    spec = S.constraint_spec(json_schema=SMALL)
    constraints = [tok.constraint(spec) for _ in range(3)]
    for n, c in enumerate(constraints):  # three different positions in the grammar
        assert c.commit_tokens(tok.tokenize('{"name": "ab", "n": 1'[:5 + 6 * n]))
    batch = np.zeros((3, tok.n_vocab), dtype=np.float32)
    S.apply_masks(constraints, batch)
    for c, row in zip(constraints, batch):
        one = np.zeros(tok.n_vocab, dtype=np.float32)
        c.apply_mask(one)
        assert np.array_equal(one, row)
    assert len({tuple(np.isfinite(r)) for r in batch}) > 1


def test_a_batch_of_masks_checks_its_shapes(tiny):
    model, tok = tiny
    spec = S.constraint_spec(json_object=True)
    pair = [tok.constraint(spec), tok.constraint(spec)]
    S.apply_masks([], np.zeros((0, tok.n_vocab), dtype=np.float32))  # nothing to do
    with pytest.raises(InvalidArgumentError, match=r"logits of shape \(3, \d+\) for 2 constraints"):
        S.apply_masks(pair, np.zeros((3, tok.n_vocab), dtype=np.float32))
    with pytest.raises(InvalidArgumentError, match="from the same model as the logits"):
        S.apply_masks(pair, np.zeros((2, tok.n_vocab - 1), dtype=np.float32))


def test_a_disallowed_token_puts_the_constraint_in_error(tiny):
    model, tok = tiny
    c = tok.constraint(S.constraint_spec(json_schema=PERSON))
    x = tok.tokenize("x")[0]
    assert not c.allowed_tokens()[x]
    assert c.commit(x) is False and c.error
    with pytest.raises(StructuredOutputError, match="the grammar engine stopped"):
        c.apply_mask(np.zeros(tok.n_vocab, dtype=np.float32))


def test_forced_tokens_fork_and_the_end_state(tiny):
    model, tok = tiny
    spec = S.constraint_spec(json_schema={"type": "object", "properties": {"colour": {"const": "red"}},
                                          "required": ["colour"], "additionalProperties": False})
    c = tok.constraint(spec)
    text = b""
    while not c.is_stopped():  # the whole value is forced: no sampling at all
        forced = c.forced_tokens()
        if not forced:  # the last bytes can merge with what follows: the one allowed token
            forced = [int(t) for t in np.flatnonzero(c.allowed_tokens()) if t not in tok.eos_tokens][:1]
        assert forced and c.commit_tokens(forced)
        text += tok.decode(forced)
    assert text == b'{"colour": "red"}' and c.is_accepting() and c.error is None
    d = tok.constraint(spec)
    d.commit_tokens(tok.tokenize('{"col'))
    e = d.fork()
    assert e.commit_tokens(tok.tokenize('our": "red"}')) and e.is_accepting()
    assert not d.is_accepting()  # the fork moved on alone


def test_the_tokenizer_equals_llguidances_own_reading_of_the_vocab(tiny):
    """GrammarTokenizer reads the vocabulary through the runtime instead of
    llguidance.llamacpp (which imports llama_cpp's whole package): the same bytes, the same
    special tokens, the same tokenization of text."""
    import warnings

    import llguidance.llamacpp

    model, ours = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        theirs = llguidance.llamacpp.lltokenizer_from_vocab(model._h.vocab)
    mine = ours.llguidance_tokenizer
    every = list(range(model.n_vocab))
    assert [mine.decode_bytes([t]) for t in every] == [theirs.decode_bytes([t]) for t in every]
    assert [mine.is_special_token(t) for t in every] == [theirs.is_special_token(t) for t in every]
    assert any(mine.is_special_token(t) for t in every)
    text = "Ada Lovelace, 36, wrote {\"notes\": [1, 2]} in 1843."
    assert mine.tokenize_str(text) == theirs.tokenize_str(text)


def test_forced_tokens_refuse_once_the_model_is_gone(tiny):
    model, _ = tiny
    tok = S.GrammarTokenizer.from_vocab_table(model._h.vocab_table())
    c = tok.constraint(S.constraint_spec(json_schema=PERSON))
    tok.close()
    with pytest.raises(InvalidArgumentError, match="was closed"):
        c.forced_tokens()


def test_random_weights_under_a_schema_still_give_valid_json(tiny):
    model, tok = tiny
    prompt = model.tokenize("the world is", special=False)
    for seed in range(3):
        r = model.generate(prompt, json_schema=SMALL, max_tokens=120, temperature=1.0, seed=seed)
        pieces = list(r)  # streaming works under a constraint
        value = r.json()
        assert "".join(pieces) == r.text and r.finish_reason == "stop" and set(value) == {"name", "n", "ok", "colour"}
        assert 0 < r.stats.forced_tokens < r.stats.generated_tokens  # keys, quotes, separators: not sampled
    free = model.generate(prompt, max_tokens=40, temperature=1.0, seed=0)
    with pytest.raises(StructuredOutputError):
        S.parse_json(free.text, SMALL, finish_reason=free.finish_reason)


def test_a_value_that_cannot_finish_in_max_tokens_is_an_error_not_a_result(tiny):
    model, tok = tiny
    r = model.generate(model.tokenize("the", special=False), max_tokens=20, temperature=1.0,
                       json_schema={"type": "array", "items": {"type": "integer"}, "minItems": 50})
    assert r.finish_reason == "length" and len(r.tokens) == 20
    with pytest.raises(StructuredOutputError, match="stopped at max_tokens before the value was complete"):
        r.json()


# --- the JSONSchemaBench sample -------------------------------------------------------------------------
CASES = sorted(DATA.glob("*---*.json"))
REFUSED = {"Github_trivial---o91408.json": '"not"', "Github_easy---o88596.json": "oneOf"}


def test_the_sample_is_there():
    assert len(CASES) == 7 and set(REFUSED) <= {p.name for p in CASES}


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.name.split("---")[1][:20])
def test_benchmark_schemas_accept_valid_and_reject_invalid_instances(path, tiny):
    model, tok = tiny
    case = json.loads(path.read_text())
    if path.name in REFUSED:
        with pytest.raises(UnsupportedSchemaError, match=REFUSED[path.name]):
            S.constraint_spec(json_schema=case["schema"])
        return
    spec = S.constraint_spec(json_schema=case["schema"])
    assert any(t["valid"] for t in case["tests"]) and any(not t["valid"] for t in case["tests"])
    for test in case["tests"]:
        text = json.dumps(test["data"], ensure_ascii=False, separators=(", ", ": "))
        c = tok.constraint(spec)
        fed = True
        for token in tok.tokenize(text):  # token by token through the mask, as generation sees it
            if not c.allowed_tokens()[token]:
                fed = False
                break
            assert c.commit(token)
        assert (fed and c.is_accepting()) == test["valid"], test.get("description")
        assert S.accepts(spec, text) == test["valid"]
        assert S.is_valid(test["data"], spec) == test["valid"]


# --- classification math ---------------------------------------------------------------------------------
@pytest.mark.parametrize("labels,message", [
    ([], "at least two labels, got none"),
    (["spam"], "at least two labels, got only 'spam'"),
    ("spam,ham", "labels must be a list of strings, got the string"),
    (["spam", "spam"], "the label 'spam' is given twice"),
    (["spam", " "], "a label is empty"),
    (["spam", 3], "labels must be strings, got 3"),
])
def test_bad_label_lists(labels, message):
    with pytest.raises(InvalidArgumentError, match=message) as info:
        S.check_labels(labels)
    assert "\n" not in info.value.message


def test_labels_that_tokenize_the_same_are_refused():
    def tokenize(s):
        return [len(s)]
    assert S.label_tokens(["ab", "abc"], tokenize) == [(2,), (3,)]
    with pytest.raises(InvalidArgumentError, match="'ab' and 'cd' are the same tokens to the model"):
        S.label_tokens(["ab", "cd"], tokenize)
    with pytest.raises(InvalidArgumentError, match="has no tokens"):
        S.label_tokens(["ab", "cd"], lambda s: [])


def test_a_label_longer_than_the_context():
    S.check_fits(10, ["ok", "fine"], [(1,), (2, 3)], n_ctx=12)
    with pytest.raises(ContextOverflowError, match="the classification prompt is 12 tokens but the context holds 12"):
        S.check_fits(12, ["ok", "fine"], [(1,), (2,)], n_ctx=12)
    with pytest.raises(ContextOverflowError, match=r"the label 'xxxxxxxxxx.*\.\.\.' is 5 tokens: after the "
                                                   r"10-token prompt it needs 15 positions but the context holds 12"):
        S.check_fits(10, ["ok", "x" * 60], [(1,), (1, 2, 3, 4, 5)], n_ctx=12)


# A five-token vocabulary: 0 = end of turn, 1 = ".", 2 = "positive", 3 = "ly", 4 = anything else.
END, DOT, POSITIVE, LY, OTHER = range(5)


def _rows(*probabilities):
    with np.errstate(divide="ignore"):  # log(0) = -inf: a token the model never picks
        return np.log(np.array(probabilities, dtype=np.float64))


def test_sequence_logprob_is_the_probability_of_the_whole_answer():
    rows = _rows([0.1, 0.0001, 0.6, 0.0999, 0.2],  # first token
                 [0.05, 0.05, 0.0, 0.8, 0.1])  # after "positive": end 0.05 or "." 0.05
    assert S.sequence_logprob(rows, [POSITIVE], [END, DOT]) == pytest.approx(math.log(0.6 * 0.1))
    assert S.sequence_logprob(rows, [POSITIVE], [END]) == pytest.approx(math.log(0.6 * 0.05))
    with pytest.raises(InvalidArgumentError, match="need 3 logits rows for 2 tokens"):
        S.sequence_logprob(rows, [POSITIVE, LY], [END])
    # Unnormalised logits give the same answer: the rows are log-softmaxed.
    assert S.sequence_logprob(rows + 7.5, [POSITIVE], [END]) == pytest.approx(math.log(0.6 * 0.05))


def test_a_label_that_is_a_prefix_of_another_is_not_favoured():
    first = [0.05, 0.05, 0.6, 0.1, 0.2]
    after_positive = [0.05, 0.05, 0.0, 0.8, 0.1]
    after_positively = [0.85, 0.05, 0.0, 0.0, 0.1]
    labels = ["positive", "positively"]
    ends = S.end_tokens(labels, [END], {DOT: "."})
    short = S.sequence_logprob(_rows(first, after_positive), [POSITIVE], ends[0])
    long = S.sequence_logprob(_rows(first, after_positive, after_positively), [POSITIVE, LY], ends[1])
    result = S.label_probabilities(labels, [short, long])
    # P(positive, end) = 0.6 * 0.1 against P(positive, ly, end) = 0.6 * 0.8 * 0.9
    assert result.label == "positively"
    assert result.probabilities["positively"] == pytest.approx(0.432 / (0.432 + 0.06))
    # Without the end marker the prefix would always win: 0.6 >= 0.6 * 0.8.
    assert first[POSITIVE] > first[POSITIVE] * after_positive[LY]


def test_a_terminator_that_continues_a_longer_label_does_not_end_the_shorter():
    terminators = S.terminator_tokens([b"<end>", b".", b".2", b"\n\n", b" York", b"", b"!"])
    assert terminators == {1: ".", 2: ".", 3: "\n", 6: "!"}
    ends = S.end_tokens(["v1", "v1.2", "New"], [0], terminators)
    assert ends[0] == [0, 3, 6]  # "." would start "v1.2"
    assert ends[1] == [0, 1, 2, 3, 6] and ends[2] == [0, 1, 2, 3, 6]


def test_label_probabilities_normalise_over_the_labels():
    result = S.label_probabilities(["a", "b", "c"], [math.log(0.2), math.log(0.1), -math.inf])
    assert list(result.probabilities) == ["a", "b", "c"]
    assert result.probabilities["a"] == pytest.approx(2 / 3) and result.probabilities["c"] == 0.0
    assert sum(result.probabilities.values()) == pytest.approx(1.0)
    assert result.to_dict()["label"] == "a" and result.logprobs["b"] == pytest.approx(math.log(0.1))
    assert S.label_probabilities(["x", "y"], [-1.0, -1.0]).label == "x"  # a tie: the first listed
    with pytest.raises(InvalidArgumentError, match="every label has probability zero"):
        S.label_probabilities(["x", "y"], [-math.inf, -math.inf])
    with pytest.raises(InvalidArgumentError, match="2 labels but 1 scores"):
        S.label_probabilities(["x", "y"], [-1.0])


def test_the_classification_prompt():
    messages = S.classify_messages("Win a prize!", ["spam", "ham"], examples=[("Lunch at 1?", "ham")])
    assert messages[0] == {"role": "system", "content": "Classify the text. Answer with exactly one of these "
                                                       "labels and nothing else: spam, ham."}
    assert messages[1:] == [{"role": "user", "content": "Lunch at 1?"}, {"role": "assistant", "content": "ham"},
                            {"role": "user", "content": "Win a prize!"}]
    custom = S.classify_messages("t", ["a", "b"], instruction="Pick a or b.", examples={"x": "a"})
    assert custom[0]["content"] == "Pick a or b." and custom[2] == {"role": "assistant", "content": "a"}
    with pytest.raises(InvalidArgumentError, match="the example label 'eggs' is not one of the labels"):
        S.classify_messages("t", ["spam", "ham"], examples=[("x", "eggs")])
    with pytest.raises(InvalidArgumentError, match=r"an example must be a \(text, label\) pair"):
        S.classify_messages("t", ["spam", "ham"], examples=["spam"])
    with pytest.raises(InvalidArgumentError, match="the text to classify is empty"):
        S.classify_messages("  ", ["spam", "ham"])


def test_the_engine_hook_takes_llama_cpp_logits_rows_as_ctypes_arrays(tiny):
    import ctypes

    model, tok = tiny
    c = tok.constraint(S.constraint_spec(json_schema={"enum": ["yes", "no"]}))
    row = (ctypes.c_float * tok.n_vocab)()  # what LlamaHandle.logits(i) returns
    c.apply(row)
    assert np.array_equal(np.isfinite(np.frombuffer(row, dtype=np.float32)), c.allowed_tokens())
