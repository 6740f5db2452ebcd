"""Structured output end to end on the real default model (SmolLM2-135M-Instruct), through the
test token loop in structured_loop.py (the engine's own loop will replace it)."""

from __future__ import annotations

import pytest

import slmrun
from slmrun import structured as S
from slmrun.errors import ContextOverflowError, InvalidArgumentError, StructuredOutputError

import structured_loop as loop

pytestmark = pytest.mark.real_model

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                           "city": {"type": "string"}},
          "required": ["name", "age", "city"], "additionalProperties": False}


@pytest.fixture(scope="module")
def smol(default_model_file):
    with slmrun.load(default_model_file, n_ctx=1024) as model:
        yield model, loop.grammar_tokenizer(model)
        S.release_tokenizer(id(model))


def test_the_real_vocabulary(smol):
    model, tok = smol
    assert tok.n_vocab == 49152
    assert 2 in tok.eos_tokens  # <|im_end|>, how SmolLM2's chat turns end
    assert tok.decode(tok.tokenize('{"name": "Alice"}')) == b'{"name": "Alice"}'


def test_a_schema_turns_a_sentence_into_a_validated_object(smol):
    model, tok = smol
    spec = S.constraint_spec(json_schema=PERSON)
    prompt = model.chat_tokens([{"role": "user", "content": "Alice is 31 and lives in Paris."}])
    out = loop.generate(model, prompt, constraint=tok.constraint(spec), max_tokens=64)
    assert out.finish_reason == "stop"
    assert S.parse_json(out.text, spec, finish_reason=out.finish_reason) == {"name": "Alice", "age": 31,
                                                                              "city": "Paris"}
    assert out.text == '{"name": "Alice", "age": 31, "city": "Paris"}'
    assert out.n_forced >= len(out.tokens) // 3  # keys, quotes and separators were not sampled
    # The same prompt unconstrained: the model answers in prose, which is not the object.
    free = loop.generate(model, prompt, max_tokens=64)
    with pytest.raises(StructuredOutputError):
        S.parse_json(free.text, spec, finish_reason=free.finish_reason)


def test_a_value_too_long_for_max_tokens_finishes_as_length_and_does_not_parse(smol):
    model, tok = smol
    spec = S.constraint_spec(json_schema={"type": "object", "required": ["story"], "additionalProperties": False,
                                          "properties": {"story": {"type": "string", "minLength": 400}}})
    prompt = model.chat_tokens([{"role": "user", "content": "Tell me a story as JSON."}])
    out = loop.generate(model, prompt, constraint=tok.constraint(spec), max_tokens=24)
    assert out.finish_reason == "length" and len(out.tokens) == 24 and out.text.startswith('{"story": "')
    with pytest.raises(StructuredOutputError, match="stopped at max_tokens before the value was complete"):
        S.parse_json(out.text, spec, finish_reason=out.finish_reason)


def test_a_grammar_constrains_the_answer(smol):
    model, tok = smol
    spec = S.constraint_spec(grammar='root ::= ("yes" | "no") "."')  # GBNF
    prompt = model.chat_tokens([{"role": "user", "content": "Is Paris in France? Answer yes or no."}])
    c = tok.constraint(spec)
    out = loop.generate(model, prompt, constraint=c, max_tokens=8)
    assert out.text in ("yes.", "no.") and out.finish_reason == "stop" and c.is_accepting()


def test_classify_picks_the_label_from_the_model_probabilities(smol):
    model, _ = smol
    good = loop.classify(model, "I absolutely loved this film, it was wonderful!", ["positive", "negative"])
    bad = loop.classify(model, "This was the worst meal I have ever had, disgusting.", ["positive", "negative"])
    assert good.label == "positive" and bad.label == "negative"
    for r in (good, bad):
        assert sum(r.probabilities.values()) == pytest.approx(1.0)
        assert max(r.probabilities.values()) > 0.6


def test_classify_does_not_favour_a_label_that_is_a_prefix_of_another(smol):
    model, _ = smol
    # "New" is a prefix of "New York": scored without an end, P("New") >= P("New York") always.
    result = loop.classify(model, "Which city is called the Big Apple?", ["New", "New York"])
    assert result.label == "New York" and result.probabilities["New York"] > 0.8
    tokens = S.label_tokens(["New", "New York"], lambda s: model.tokenize(s, special=False, add_bos=False))
    assert tokens[1][:len(tokens[0])] == tokens[0]  # the prefix is a token prefix too


def test_classify_bad_labels(smol, default_model_file):
    model, _ = smol
    with pytest.raises(InvalidArgumentError, match="at least two labels, got none"):
        loop.classify(model, "some text", [])
    with pytest.raises(InvalidArgumentError, match="given twice"):
        loop.classify(model, "some text", ["spam", "spam"])
    with slmrun.load(default_model_file, n_ctx=128) as small:
        with pytest.raises(ContextOverflowError, match=r"the label 'word word .*' is 1\d\d tokens: after the "
                                                       r"\d+-token prompt it needs \d+ positions but the context "
                                                       r"holds 128"):
            loop.classify(small, "some text", ["short", "word " * 120], instruction="Classify the text.")
        with pytest.raises(ContextOverflowError, match=r"the classification prompt is \d+ tokens but the context "
                                                       r"holds 128"):
            loop.classify(small, "some text " * 100, ["short", "long"])
