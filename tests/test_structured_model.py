"""Structured output end to end on the real default model (SmolLM2-135M-Instruct), through the engine."""

from __future__ import annotations

import threading

import pytest

import slmrun
from slmrun import structured as S
from slmrun.errors import ContextOverflowError, InvalidArgumentError, StructuredOutputError

pytestmark = pytest.mark.real_model

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                           "city": {"type": "string"}},
          "required": ["name", "age", "city"], "additionalProperties": False}
ALICE = [{"role": "user", "content": "Alice is 31 and lives in Paris."}]


@pytest.fixture(scope="module")
def smol(default_model_file):
    with slmrun.load(default_model_file, n_ctx=1024, n_parallel=4) as model:
        yield model


def test_the_real_vocabulary(smol):
    tok = smol._grammar()
    assert tok.n_vocab == 49152
    assert 2 in tok.eos_tokens  # <|im_end|>, how SmolLM2's chat turns end
    assert tok.decode(tok.tokenize('{"name": "Alice"}')) == b'{"name": "Alice"}'


def test_a_schema_turns_a_sentence_into_a_validated_object(smol):
    r = smol.chat(ALICE, json_schema=PERSON, temperature=0, max_tokens=64)
    pieces = list(r)
    assert r.finish_reason == "stop" and "".join(pieces) == r.text
    assert r.text == '{"name": "Alice", "age": 31, "city": "Paris"}'
    assert r.json() == {"name": "Alice", "age": 31, "city": "Paris"}
    assert r.stats.forced_tokens >= r.stats.generated_tokens // 3  # keys, quotes and separators were not sampled
    # The same prompt unconstrained: the model answers in prose, which is not the object.
    free = smol.chat(ALICE, temperature=0, max_tokens=64)
    with pytest.raises(StructuredOutputError):
        S.parse_json(free.text, PERSON, finish_reason=free.finish_reason)
    assert smol.extract("Alice is 31 and lives in Paris.", PERSON) == {"name": "Alice", "age": 31, "city": "Paris"}


def test_constrained_and_free_requests_batch_together(smol):
    alone = smol.chat(ALICE, json_schema=PERSON, temperature=0, max_tokens=64).text
    results = {}

    def ask(i):
        if i % 2:
            results[i] = smol.chat(ALICE, json_schema=PERSON, temperature=0, max_tokens=64).text
        else:
            results[i] = smol.complete("Once upon a time", temperature=0, max_tokens=40).text
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [results[i] for i in (1, 3, 5)] == [alone] * 3
    assert all(not results[i].startswith("{") for i in (0, 2, 4))


def test_a_value_too_long_for_max_tokens_finishes_as_length_and_does_not_parse(smol):
    story = {"type": "object", "required": ["story"], "additionalProperties": False,
             "properties": {"story": {"type": "string", "minLength": 400}}}
    r = smol.chat([{"role": "user", "content": "Tell me a story as JSON."}], json_schema=story, max_tokens=24)
    assert r.finish_reason == "length" and len(r.tokens) == 24 and r.text.startswith('{"story": "')
    with pytest.raises(StructuredOutputError, match="stopped at max_tokens before the value was complete"):
        r.json()


def test_a_grammar_constrains_the_answer(smol):
    r = smol.chat([{"role": "user", "content": "Is Paris in France? Answer yes or no."}],
                  grammar='root ::= ("yes" | "no") "."', max_tokens=8)  # GBNF
    assert r.text in ("yes.", "no.") and r.finish_reason == "stop"


def test_any_json_object(smol):
    q = "Reply with a JSON object with the keys name and color for a black cat called Tom."
    r = smol.chat([{"role": "user", "content": q}], json_object=True, temperature=0, max_tokens=200)
    assert r.finish_reason == "stop" and r.json() == {"name": "Tom", "color": "black"}


def test_classify_picks_the_label_from_the_model_probabilities(smol):
    good = smol.classify("I absolutely loved this film, it was wonderful!", ["positive", "negative"])
    bad = smol.classify("This was the worst meal I have ever had, disgusting.", ["positive", "negative"])
    assert good.label == "positive" and bad.label == "negative"
    for r in (good, bad):
        assert sum(r.probabilities.values()) == pytest.approx(1.0)
        assert max(r.probabilities.values()) > 0.6


def test_classify_does_not_favour_a_label_that_is_a_prefix_of_another(smol):
    # "New" is a prefix of "New York": scored without an end, P("New") >= P("New York") always.
    result = smol.classify("Which city is called the Big Apple?", ["New", "New York"])
    assert result.label == "New York" and result.probabilities["New York"] > 0.8
    tokens = S.label_tokens(["New", "New York"], lambda s: smol.tokenize(s, special=False, add_bos=False))
    assert tokens[1][:len(tokens[0])] == tokens[0]  # the prefix is a token prefix too
    # "positive" / "positively": the same care, whichever way the text leans.
    r = smol.classify("The results were positive.", ["positive", "positively"])
    assert r.label == "positive"


def test_label_scores_are_the_models_own_log_probabilities(smol):
    """Teacher forcing gives, for tokens the model would write itself, the log-probabilities its
    greedy reply reports (OpenAI-style logprobs): the scores are the model's, not a sampled text's."""
    import numpy as np

    messages = S.classify_messages("I love it", ["positive", "negative"])
    prompt = smol.chat_tokens(messages)
    reply = smol.chat(messages, temperature=0, max_tokens=3, logprobs=True).wait()
    tokens = reply.tokens
    scored = smol._submit(prompt + tokens, {"max_tokens": 0}, stops=(), strip_leading=False,
                          score_from=len(prompt)).wait()
    rows = np.array(scored._s.score_rows, dtype=np.float64)
    assert rows.shape == (len(tokens) + 1, smol.n_vocab)
    for row, token, entry in zip(rows, tokens, reply.logprobs):
        lse = row.max() + np.log(np.exp(row - row.max()).sum())
        assert row[token] - lse == pytest.approx(entry["logprob"], abs=2e-3)


def test_classify_bad_labels(smol, default_model_file):
    with pytest.raises(InvalidArgumentError, match="at least two labels, got none"):
        smol.classify("some text", [])
    with pytest.raises(InvalidArgumentError, match="given twice"):
        smol.classify("some text", ["spam", "spam"])
    with slmrun.load(default_model_file, n_ctx=128, n_parallel=1) as small:
        with pytest.raises(ContextOverflowError, match=r"the label 'word word .*' is 1\d\d tokens: after the "
                                                       r"\d+-token prompt it needs \d+ positions but the context "
                                                       r"holds 128"):
            small.classify("some text", ["short", "word " * 120], instruction="Classify the text.")
        with pytest.raises(ContextOverflowError, match=r"the classification prompt is \d+ tokens but the context "
                                                       r"holds 128"):
            small.classify("some text " * 100, ["short", "long"])


# Texts SmolLM2-135M labels clearly (P(positive) > 0.75 or < 0.25, alone and batched).
REVIEWS = ["I absolutely loved this film, it was wonderful!", "This was the worst meal I have ever had, disgusting.",
           "Great service and friendly staff.", "Rude staff and cold food.", "A delightful, moving story."]
REVIEW_LABELS = ["positive", "negative", "positive", "negative", "positive"]


def test_classify_many_matches_one_text_at_a_time(smol):
    labels = ["positive", "negative"]
    one = [smol.classify(t, labels) for t in REVIEWS]
    many = smol.classify_many(REVIEWS, labels)
    assert [c.label for c in many] == [c.label for c in one] == REVIEW_LABELS
    # Not bit-identical: a prompt decoded beside another lands at other rows of llama.cpp's
    # matrix kernels and other KV cells, and the Q8 rounding of activations amplifies the
    # difference (measured up to ~0.8 in a logit for SmolLM2 Q4_1, at llama.cpp's level).
    for a, b in zip(many, one):
        assert a.probabilities == pytest.approx(b.probabilities, abs=0.15)


def test_classify_many_evaluates_each_prompt_once_for_all_its_labels(smol):
    labels = ["positive", "negative", "neutral"]  # one more label: more to share the prompt with
    sequences = S.label_tokens(labels, lambda s: smol.tokenize(s, special=False, add_bos=False))
    prompts = [smol.chat_tokens(S.classify_messages(t, labels)) for t in REVIEWS]
    before = smol.status()["prompt_eval_tokens"]
    smol.classify_many(REVIEWS, labels)
    evaluated = smol.status()["prompt_eval_tokens"] - before
    # Each text: at most its whole prompt once, then per label its tokens and the prompt's last
    # token again (its logits row); never the prompt once per label.
    bound = sum(len(p) + sum(len(s) + 1 for s in sequences) for p in prompts)
    assert 0 < evaluated <= bound
    assert evaluated < sum(len(p) for p in prompts) * len(labels)


def test_classify_stream_reads_texts_only_as_slots_free(smol):
    from slmrun.runtime.tasks import classify_stream

    read = []

    def texts():
        for t in REVIEWS:
            read.append(t)
            yield t
    stream = classify_stream(smol, texts(), ["positive", "negative"])
    first = next(stream)
    assert first.label == "positive"
    assert len(read) <= smol.n_parallel + 1  # a window of slots, not the whole input
    assert len([first, *stream]) == len(REVIEWS)


def test_classify_many_stops_at_a_bad_text_and_leaves_nothing_running(smol):
    import time

    with pytest.raises(InvalidArgumentError, match="the text to classify is empty"):
        smol.classify_many(REVIEWS[:3] + ["   "] + REVIEWS[3:], ["positive", "negative"])
    with pytest.raises(InvalidArgumentError, match="one string"):
        smol.classify_many("just one text", ["positive", "negative"])
    deadline = time.monotonic() + 30
    while smol.status()["slots_busy"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert smol.status()["slots_busy"] == 0 and smol.status()["queue_depth"] == 0
    assert smol.classify(REVIEWS[0], ["positive", "negative"]).label == "positive"
