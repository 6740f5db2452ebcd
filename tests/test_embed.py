"""Model.embed on the engine: tiny encoders (BERT) and generative models, written by the tests and
run by the real llama.cpp."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import slmrun
from slmrun.errors import ContextOverflowError, InvalidArgumentError, ModelCapabilityError, ModelClosedError
from slmrun.runtime.embedding import EmbedJob, fit_tokens, pack, split_inputs
from tinymodels import write_tiny_bert

from conftest import paced

TEXTS = ["what are your opening hours?", "the bike shop", "a", "when do you close", "repair a wheel"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert.gguf")


@pytest.fixture(scope="module")
def tiny_bert_cls(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert-cls.gguf", pooling=2)


@pytest.fixture(scope="module")
def bert(tiny_bert):
    with slmrun.load(str(tiny_bert)) as m:
        yield m


def cos(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- pure helpers --------------------------------------------------------------------------------

@pytest.mark.parametrize("inputs, expected", [
    ("hi", ["hi"]),
    (["a", "b"], ["a", "b"]),
    ([1, 2, 3], [[1, 2, 3]]),                # one input as token ids (OpenAI's shape)
    ([[1, 2], [3]], [[1, 2], [3]]),
    ([], []),
    (("a", [4, 5]), ["a", [4, 5]]),
])
def test_split_inputs(inputs, expected):
    assert split_inputs(inputs) == expected


@pytest.mark.parametrize("inputs, message", [
    ([""], "input 0 is an empty string"),
    (["ok", 3.5], "input 1 must be a string or a list of token ids, got float"),
    ([["a"]], "input 0 must be a string or a list of token ids, got list"),
    ([[1, True]], "input 0 must be a string or a list of token ids"),
    ([[]], "input 0 is an empty list of token ids"),
    ({"text": "a"}, "the input must be a string or a list of strings, got dict"),
    (None, "the input must be a string or a list of strings, got NoneType"),
])
def test_split_inputs_refuses(inputs, message):
    with pytest.raises(InvalidArgumentError, match=message.replace("?", r"\?")):
        split_inputs(inputs)


@pytest.mark.parametrize("tokens, limit, end, expected", [
    ([2, 5, 6, 3], 8, 3, ([2, 5, 6, 3], False)),
    ([2, 5, 6, 7, 3], 4, 3, ([2, 5, 6, 3], True)),      # BERT: cut, then [SEP] again, as transformers does
    ([1, 5, 6, 7, 8], 3, None, ([1, 5, 6], True)),      # a generative model: the first tokens
    ([1, 5, 6, 7, 8], 3, 3, ([1, 5, 6], True)),         # no closing token at the end: a plain cut
])
def test_fit_tokens(tokens, limit, end, expected):
    assert fit_tokens(tokens, limit, end=end) == expected


def test_pack_takes_whole_inputs_in_order_within_the_bounds():
    a, b = EmbedJob([[1] * 5, [1] * 3]), EmbedJob([[1] * 4, [1] * 2])
    assert pack([a, b], n_seqs=8, budget=12) == [(a, 0), (a, 1), (b, 0)]  # b's second would pass 12
    assert pack([a, b], n_seqs=2, budget=100) == [(a, 0), (a, 1)]
    a.next = 2
    assert pack([a, b], n_seqs=8, budget=100) == [(b, 0), (b, 1)]
    assert pack([b], n_seqs=8, budget=3) == []  # the next input does not fit: nothing jumps the queue


# --- an encoder --------------------------------------------------------------------------------------

def test_an_encoder_is_an_embedding_model(bert):
    assert bert.is_embedding_model
    assert bert.n_embd == 32 and bert.pooling == "mean"
    assert bert.embed_limit == 64  # the model's context: the whole input in one batch


def test_embed_returns_one_normalised_row_per_input(bert):
    e = bert.embed(TEXTS)
    assert isinstance(e, slmrun.Embeddings)
    assert e.vectors.shape == (5, 32) and e.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(e.vectors, axis=1), 1.0, atol=1e-5)
    assert np.asarray(e).shape == (5, 32) and len(e) == 5 and e[1].shape == (32,)
    assert e.tolist()[0] == pytest.approx(e.vectors[0].tolist())
    assert e.n_tokens == [len(bert.tokenize(t, special=False)) for t in TEXTS]
    assert e.n_tokens[2] == 3  # [CLS] a [SEP]
    assert e.truncated == [False] * 5 and e.pooling == "mean"


def test_a_batch_gives_what_each_input_gives_alone(bert):
    together = bert.embed(TEXTS).vectors
    for i, text in enumerate(TEXTS):
        alone = bert.embed(text).vectors[0]
        assert cos(alone, together[i]) > 0.9999
    assert cos(together[0], together[1]) < 0.99  # different texts, different vectors


def test_normalize_false_keeps_the_pooled_length(bert):
    raw = bert.embed(TEXTS[:2], normalize=False).vectors
    unit = bert.embed(TEXTS[:2]).vectors
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    assert np.allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), unit, atol=1e-5)


def test_token_ids_embed_like_the_text(bert):
    ids = bert.tokenize(TEXTS[0], special=False)
    assert cos(bert.embed([ids]).vectors[0], bert.embed(TEXTS[0]).vectors[0]) > 0.9999
    with pytest.raises(InvalidArgumentError, match=r"input 0 has a token id outside the vocabulary \(0 to \d+\)"):
        bert.embed([[2, bert.n_vocab, 3]])


def test_a_long_input_is_cut_or_refused_with_the_numbers(bert):
    long = " ".join(["the bike shop is open"] * 30)
    n = len(bert.tokenize(long, special=False))
    e = bert.embed([long, "a"])
    assert e.truncated == [True, False] and e.n_tokens[0] == 64
    with pytest.raises(ContextOverflowError, match=f"input 0 is {n} tokens; .* embeds at most 64"):
        bert.embed([long], truncate=False)


def test_embed_future_checks_at_once_and_resolves_to_what_embed_gives(bert):
    future = bert.embed_future(TEXTS)
    assert np.allclose(future.result(timeout=30).vectors, bert.embed(TEXTS).vectors, atol=1e-6)
    assert bert.embed_future([]).result(timeout=5).vectors.shape == (0, 32)
    # bad input raises in the caller, before anything is queued: nothing to wait for
    with pytest.raises(InvalidArgumentError, match="outside the vocabulary"):
        bert.embed_future([[bert.n_vocab]])
    with pytest.raises(ContextOverflowError, match="embeds at most 64"):
        bert.embed_future([" ".join(["the bike shop is open"] * 30)], truncate=False)


def test_no_inputs_no_rows(bert):
    e = bert.embed([])
    assert e.vectors.shape == (0, 32) and e.n_tokens == []


def test_cls_pooling_differs_from_mean(tiny_bert_cls, bert):
    with slmrun.load(str(tiny_bert_cls)) as m:
        assert m.pooling == "cls"
        assert cos(m.embed(TEXTS[0]).vectors[0], bert.embed(TEXTS[0]).vectors[0]) < 0.999


def test_an_encoder_does_not_generate(bert):
    for call in (lambda: bert.complete("hi"), lambda: bert.chat([{"role": "user", "content": "hi"}]),
                 lambda: bert.generate([2, 3])):
        with pytest.raises(ModelCapabilityError, match="is an embedding model: it cannot generate text"):
            call()


def test_many_threads_embed_at_once(bert):
    expected = bert.embed(TEXTS).vectors
    results, errors = {}, []

    def worker(k):
        try:
            results[k] = bert.embed(TEXTS[k % 5:] + TEXTS[:k % 5]).vectors
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k, got in results.items():  # other batch mates change float rounding, not the vectors
        want = np.roll(expected, -(k % 5), axis=0)
        assert all(cos(g, w) > 0.9999 for g, w in zip(got, want))
    assert bert.status()["embed_inputs"] >= 12 * 5


def test_closing_fails_waiting_embeds(tiny_bert):
    m = slmrun.load(str(tiny_bert))
    m.close()
    with pytest.raises(ModelClosedError):
        m.embed("a")


# --- a generative model -----------------------------------------------------------------------------

def test_a_generative_model_embeds_with_mean_pooling_by_default(tiny_llama):
    with slmrun.load(str(tiny_llama), n_ctx=256, n_parallel=2) as m:
        assert not m.is_embedding_model and m.pooling == "mean" and m.n_embd == 64
        e = m.embed(["the world is", "hello"])
        assert e.vectors.shape == (2, 64) and np.allclose(np.linalg.norm(e.vectors, axis=1), 1.0, atol=1e-5)
        assert cos(m.embed("hello").vectors[0], e.vectors[1]) > 0.9999


def test_last_token_pooling_on_request(tiny_llama):
    with slmrun.load(str(tiny_llama), n_ctx=256, pooling="last") as last, \
            slmrun.load(str(tiny_llama), n_ctx=256) as mean:
        assert last.pooling == "last"
        assert cos(last.embed("the world is").vectors[0], mean.embed("the world is").vectors[0]) < 0.999
    with pytest.raises(InvalidArgumentError, match="pooling='max' is not one of mean, cls, last"):
        slmrun.load(str(tiny_llama), pooling="max")


def test_embedding_steps_leave_generation_untouched(tiny_llama):
    """Embeddings decode in steps of their own between generation steps: a reply generated
    while other threads embed is exactly the reply generated alone."""
    with slmrun.load(str(tiny_llama), n_ctx=256, n_parallel=3, seed=1) as m:
        alone = m.complete("the world is", max_tokens=40, temperature=0).text
        expected = m.embed(["hello world", "what is 2+2?"]).vectors
        with paced(m, 0.005):
            r = m.complete("the world is", max_tokens=40, temperature=0)
            got = [m.embed(["hello world", "what is 2+2?"]).vectors for _ in range(3)]
            assert r.text == alone
        for g in got:
            assert all(cos(a, b) > 0.9999 for a, b in zip(g, expected))
        assert m.complete("the world is", max_tokens=40, temperature=0).text == alone


@pytest.mark.real_model
def test_the_default_model_embeds(default_model_file):
    with slmrun.load(str(default_model_file), n_ctx=512) as m:
        e = m.embed(["What are your opening hours?", "When do you open?", "The capital of France is Paris."])
        assert e.vectors.shape == (3, 576)
        assert cos(e[0], e[1]) > cos(e[0], e[2])
