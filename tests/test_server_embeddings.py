"""Embeddings through `slmrun serve`: OpenAI's /v1/embeddings and Ollama's /api/embed and
/api/embeddings, driven by the official `openai` and `ollama` clients, on a tiny BERT and a tiny
generative model written by the tests."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import numpy as np
import pytest

import slmrun

sys.path.insert(0, str(Path(__file__).parent))
from serverutil import Server, store_model  # noqa: E402
from tinymodels import write_tiny_bert  # noqa: E402

openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")

TEXTS = ["what are your opening hours?", "the bike shop", "repair a wheel"]
LONG = " ".join(["the bike shop is open"] * 30)


@pytest.fixture(scope="module")
def bert_file(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("bert-srv") / "tiny-bert.gguf")


@pytest.fixture(scope="module")
def server(tmp_path_factory, bert_file, tiny_llama):
    home = tmp_path_factory.mktemp("serve-embed")
    store_model(home, bert_file, "bert-tiny")
    store_model(home, tiny_llama, "tiny")
    with Server(home, "--ctx", "256", "--parallel", "2", "--threads", "1",
                env={"SLMRUN_MAX_EMBED_INPUTS": "8", "SLMRUN_EMBED_MODEL": "bert-tiny"}) as s:
        yield s


@pytest.fixture(scope="module")
def reference(bert_file):
    with slmrun.load(str(bert_file)) as m:
        return m.embed(TEXTS).vectors, m.embed(TEXTS, normalize=False).vectors, m.embed(TEXTS).n_tokens


@pytest.fixture
def oa(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture
def ol(server):
    return ollama.Client(host=server.url)


def close(a, b) -> bool:
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    return all(float(np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y)) > 0.9999 for x, y in zip(a, b)) \
        and a.shape == b.shape


def test_short_and_long_requests_embed_alike(ol, reference):
    """Short inputs are tokenized on the event loop, long ones in a worker thread
    (embeddings_api.INLINE_CHARS): both give the library's vectors."""
    from slmrun.server.embeddings_api import INLINE_CHARS

    filler = "x " * (INLINE_CHARS // 2)
    assert sum(map(len, TEXTS)) < INLINE_CHARS < sum(map(len, TEXTS)) + len(filler)
    short = ol.embed(model="bert-tiny", input=TEXTS).embeddings
    long = ol.embed(model="bert-tiny", input=[*TEXTS, filler]).embeddings  # the filler is cut to fit
    assert close(short, reference[0])
    assert close(long[:3], reference[0]) and len(long) == 4


# --- OpenAI ---------------------------------------------------------------------------------------

def test_the_openai_client_embeds_unchanged(oa, reference):
    vectors, _, n_tokens = reference
    r = oa.embeddings.create(model="bert-tiny", input=TEXTS)  # the client asks for base64 by default
    assert r.object == "list" and r.model == "bert-tiny:f32"
    assert [d.index for d in r.data] == [0, 1, 2] and all(d.object == "embedding" for d in r.data)
    assert close([d.embedding for d in r.data], vectors)
    assert r.usage.prompt_tokens == r.usage.total_tokens == sum(n_tokens)
    floats = oa.embeddings.create(model="bert-tiny", input="the bike shop", encoding_format="float")
    assert close([floats.data[0].embedding], vectors[1:2])


def test_base64_is_little_endian_float32(server, reference):
    status, body = server.json("POST", "/v1/embeddings", {"model": "bert-tiny", "input": TEXTS[:1],
                                                          "encoding_format": "base64"})
    assert status == 200
    vec = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert close([vec], reference[0][:1])


def test_token_ids_and_the_default_model(server, oa, bert_file):
    with slmrun.load(str(bert_file)) as m:
        ids = m.tokenize(TEXTS[0], special=False)
    one = oa.embeddings.create(model="bert-tiny", input=ids, encoding_format="float")
    many = oa.embeddings.create(model="bert-tiny", input=[ids, ids[:3]], encoding_format="float")
    assert len(one.data) == 1 and len(many.data) == 2
    assert close([one.data[0].embedding], [many.data[0].embedding])
    status, body = server.json("POST", "/v1/embeddings", {"input": "the bike shop"})  # SLMRUN_EMBED_MODEL
    assert status == 200 and body["model"] == "bert-tiny:f32"


@pytest.mark.parametrize("body, status, needle", [
    ({"model": "bert-tiny", "input": ""}, 400, "input is empty"),
    ({"model": "bert-tiny", "input": []}, 400, "input is empty"),
    ({"model": "bert-tiny"}, 400, "input"),
    ({"model": "bert-tiny", "input": ["a", 3]}, 400, "input must be a string, a list of strings, or token ids"),
    ({"model": "bert-tiny", "input": ["a", ""]}, 400, "input 1 is an empty string"),
    ({"model": "bert-tiny", "input": [[2, 99999, 3]]}, 400, "outside the vocabulary"),
    ({"model": "bert-tiny", "input": ["a"] * 9}, 400, "input has 9 items; at most 8"),
    ({"model": "bert-tiny", "input": LONG}, 400, "embeds at most 64"),
    ({"model": "bert-tiny", "input": "a", "dimensions": 16}, 400, "gives 32-dimensional embeddings and cannot "
                                                                  "shorten them to 16"),
    ({"model": "bert-tiny", "input": "a", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"model": "no-such-model", "input": "a"}, 404, "no-such-model"),
])
def test_bad_requests_are_4xx_in_openais_shape(server, body, status, needle):
    got, reply = server.json("POST", "/v1/embeddings", body)
    assert got == status, reply
    assert reply["error"]["type"] == "invalid_request_error" and needle in reply["error"]["message"]
    assert server.json("POST", "/v1/embeddings", {"model": "bert-tiny", "input": "a"})[0] == 200  # still serving


def test_dimensions_equal_to_the_models_own_are_fine(oa):
    r = oa.embeddings.create(model="bert-tiny", input="a", dimensions=32, encoding_format="float")
    assert len(r.data[0].embedding) == 32


def test_an_embedding_model_does_not_chat(oa):
    with pytest.raises(openai.BadRequestError) as err:
        oa.chat.completions.create(model="bert-tiny", messages=[{"role": "user", "content": "hi"}])
    assert "is an embedding model: it cannot generate text" in str(err.value)


# --- Ollama ----------------------------------------------------------------------------------------

def test_the_ollama_client_embeds_unchanged(ol, reference):
    vectors, raw, n_tokens = reference
    r = ol.embed(model="bert-tiny", input=TEXTS)
    assert r.model == "bert-tiny:f32" and close(r.embeddings, vectors)
    assert r.prompt_eval_count == sum(n_tokens) and r.total_duration > 0
    assert close(ol.embed(model="bert-tiny", input="the bike shop").embeddings, vectors[1:2])
    old = ol.embeddings(model="bert-tiny", prompt="the bike shop")  # the older endpoint: not normalised
    assert np.allclose(old.embedding, raw[1], atol=1e-4)


def test_ollama_empty_input_is_an_empty_answer(server):
    assert server.json("POST", "/api/embed", {"model": "bert-tiny", "input": []}) == \
        (200, {"model": "bert-tiny", "embeddings": []})
    assert server.json("POST", "/api/embed", {"model": "bert-tiny", "input": ""})[1]["embeddings"] == []
    assert server.json("POST", "/api/embeddings", {"model": "bert-tiny", "prompt": ""}) == (200, {"embedding": []})


def test_ollama_truncates_unless_told_not_to(server):
    status, body = server.json("POST", "/api/embed", {"model": "bert-tiny", "input": [LONG]})
    assert status == 200 and body["prompt_eval_count"] == 64
    status, body = server.json("POST", "/api/embed", {"model": "bert-tiny", "input": [LONG], "truncate": False})
    assert status == 400 and "embeds at most 64" in body["error"]
    status, body = server.json("POST", "/api/embed", {"model": "bert-tiny", "input": [1, 2]})
    assert status == 400 and "input" in body["error"]


def test_a_generative_model_embeds_too(ol, tiny_llama):
    r = ol.embed(model="tiny", input=["hello world", "the"])
    assert len(r.embeddings) == 2 and len(r.embeddings[0]) == 64
    with slmrun.load(str(tiny_llama), n_ctx=256) as m:
        assert close(r.embeddings, m.embed(["hello world", "the"]).vectors)


def test_metrics_count_embedded_inputs(server):
    server.json("POST", "/api/embed", {"model": "bert-tiny", "input": ["a", "b"]})
    _, _, text = server.get("/metrics")
    assert b'slmrun_embedded_inputs_total{model="bert-tiny:f32"}' in text
