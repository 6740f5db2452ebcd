"""`slmrun serve` through the official `openai` and `ollama` clients and curl, on a tiny
random-weight model (its text is noise, so the checks are about shapes, counts and
agreement between streaming and not: greedy decoding gives the same text both ways)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serverutil import Server, store_model  # noqa: E402

openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")

CTX = 256
HELLO = [{"role": "user", "content": "hello world"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_llama, tiny_llama_plain):
    home = tmp_path_factory.mktemp("serve-home")
    store_model(home, tiny_llama, "tiny")
    store_model(home, tiny_llama_plain, "plain")
    with Server(home, "-m", "tiny", "--ctx", str(CTX), "--parallel", "2", "--threads", "1") as s:
        yield s


@pytest.fixture
def oa(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture
def ol(server):
    return ollama.Client(host=server.url)


# --- OpenAI -------------------------------------------------------------------------------------

def test_chat_streamed_and_not_give_the_same_reply(oa):
    whole = oa.chat.completions.create(model="tiny", messages=HELLO, max_tokens=12, temperature=0)
    assert whole.object == "chat.completion" and whole.model == "tiny:f32" and whole.id.startswith("chatcmpl-")
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    u = whole.usage
    assert u.completion_tokens <= 12 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    chunks = list(oa.chat.completions.create(model="tiny", messages=HELLO, max_tokens=12, temperature=0, stream=True,
                                             stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == u.completion_tokens
    assert chunks[-2].choices[0].finish_reason == choice.finish_reason
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0  # the same prompt again: from the slot's cache
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content and all(c.id == chunks[0].id for c in chunks)


def test_chat_without_include_usage_sends_no_usage_chunk(oa):
    chunks = list(oa.chat.completions.create(model="tiny", messages=HELLO, max_tokens=3, temperature=0, stream=True))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_max_tokens_beyond_the_context_is_capped_by_it(oa):
    r = oa.chat.completions.create(model="tiny", messages=HELLO, max_completion_tokens=100_000, temperature=0)
    assert r.usage.prompt_tokens + r.usage.completion_tokens <= CTX
    assert r.choices[0].finish_reason == "length"  # the tiny model never ends by itself


def test_completions_stream_and_not_with_echo_and_logprobs(oa):
    r = oa.completions.create(model="tiny", prompt="the world is", max_tokens=6, temperature=0, logprobs=2, echo=True)
    c = r.choices[0]
    assert r.object == "text_completion" and c.text.startswith("the world is")
    lp = c.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == r.usage.completion_tokens == 6
    # {text: logprob}: byte tokens that print alike share a key, as in OpenAI's own legacy shape
    assert all(v <= 0 for v in lp.token_logprobs) and all(1 <= len(t) <= 2 for t in lp.top_logprobs)
    assert lp.text_offset[0] == len("the world is")
    assert all(b - a == len(t) for a, b, t in zip(lp.text_offset, lp.text_offset[1:], lp.tokens))
    streamed = "".join(ch.choices[0].text for ch in oa.completions.create(
        model="tiny", prompt="the world is", max_tokens=6, temperature=0, stream=True) if ch.choices)
    assert "the world is" + streamed == c.text


def test_chat_logprobs(oa):
    r = oa.chat.completions.create(model="tiny", messages=HELLO, max_tokens=5, temperature=0, logprobs=True,
                                   top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 5
    for t in content:
        assert len(t.top_logprobs) == 3 and t.logprob <= 0 and bytes(t.bytes).decode("utf-8", "replace") == t.token
        alts = [a.logprob for a in t.top_logprobs]
        assert alts == sorted(alts, reverse=True) and t.logprob == pytest.approx(alts[0])  # greedy: the likeliest


def test_seed_and_stop(oa):
    a, b = (oa.completions.create(model="tiny", prompt="hello", max_tokens=16, temperature=1.0, seed=42).choices[0].text
            for _ in range(2))
    assert a == b
    text = oa.completions.create(model="tiny", prompt="the", max_tokens=30, temperature=0).choices[0].text
    stop = text[3:5]
    cut = oa.completions.create(model="tiny", prompt="the", max_tokens=30, temperature=0, stop=[stop]).choices[0]
    assert cut.text == text[:text.find(stop)] and cut.finish_reason == "stop"


def test_models_list_and_retrieve(oa):
    ids = [m.id for m in oa.models.list()]
    assert ids == ["plain:f32", "tiny:f32"]
    assert oa.models.retrieve("tiny:f32").id == "tiny:f32"
    with pytest.raises(openai.NotFoundError):
        oa.models.retrieve("nothing")


def test_a_request_without_a_model_uses_the_servers_first(oa):
    r = oa.chat.completions.create(model="", messages=HELLO, max_tokens=2)
    assert r.model == "tiny:f32"


@pytest.mark.parametrize("kwargs, status, message", [
    ({"model": "nope"}, 404, "unknown model 'nope'"),
    ({"model": "/etc/passwd"}, 400, "looks like a file path"),
    ({"model": "../models/tiny"}, 400, "looks like a file path"),
    ({"model": "tiny", "n": 2}, 400, "n must be 1"),
    ({"model": "tiny", "temperature": -1}, 400, "temperature must be >= 0"),
    ({"model": "tiny", "top_logprobs": 30, "logprobs": True}, 400, "top_logprobs must be an integer from 0 to 20"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "the " * 300}]}, 400,
     r"the prompt is \d+ tokens but the context holds 256"),
    ({"model": "plain"}, 400, "no chat template"),
])
def test_errors_come_in_openais_shape(oa, kwargs, status, message):
    kwargs = {"messages": HELLO, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.APIStatusError) as e:
        oa.chat.completions.create(**kwargs)
    assert e.value.status_code == status
    err = e.value.body  # the client's parse of {"error": {...}}
    assert set(err) >= {"message", "type", "code"} and err["type"] == "invalid_request_error"
    import re
    assert re.search(message, err["message"])


def test_curl_reads_the_raw_event_stream(server):
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is needed for this test (apt-get install curl)")
    body = json.dumps({"model": "tiny", "messages": HELLO, "max_tokens": 4, "temperature": 0, "stream": True})
    out = subprocess.run([curl, "-sN", "-i", "-H", "Content-Type: application/json", "-d", body,
                          server.url + "/v1/chat/completions"], capture_output=True, text=True, timeout=60).stdout
    head, _, stream = out.replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/1.1 200") and "content-type: text/event-stream" in head.lower()
    events = [e for e in stream.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_a_body_that_is_not_json_is_a_400(server):
    status, _, data = server.post("/v1/chat/completions", b"{not json")
    assert status == 400 and "not valid JSON" in json.loads(data)["error"]["message"]
    status, _, data = server.post("/api/chat", b"[1, 2]")
    assert status == 400 and json.loads(data) == {"error": "the request body must be a JSON object"}
    status, _, data = server.request("GET", "/v1/nothing")
    assert status == 404 and "no such endpoint" in json.loads(data)["error"]["message"]
    status, _, data = server.request("GET", "/api/chat")
    assert status == 405 and "GET is not allowed" in json.loads(data)["error"]


# --- Ollama ----------------------------------------------------------------------------------------

def test_ollama_chat_streamed_and_not(ol):
    opts = {"num_predict": 8, "temperature": 0}
    whole = ol.chat(model="tiny", messages=HELLO, options=opts, stream=False)
    assert whole.model == "tiny:f32" and whole.done and whole.done_reason == "length"
    assert whole.eval_count == 8 and whole.prompt_eval_count > 0 and whole.total_duration >= whole.eval_duration > 0
    parts = list(ol.chat(model="tiny:latest", messages=HELLO, options=opts, stream=True))
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert parts[-1].eval_count == 8 and parts[-1].message.content == ""


def test_ollama_generate_raw_and_context(ol):
    first = ol.generate(model="tiny", prompt="the world", raw=True, options={"num_predict": 4, "temperature": 0})
    assert first.done and len(first.context) >= 4 and first.response
    follow = ol.generate(model="tiny", prompt=" is", context=first.context, raw=True,
                         options={"num_predict": 4, "temperature": 0})
    # The new prompt continues the old context: its tokens come first, then " is", then the reply.
    assert follow.context[:len(first.context)] == first.context
    assert follow.prompt_eval_count == len(follow.context) - follow.eval_count > len(first.context)
    templated = ol.generate(model="tiny", prompt="hello", system="You are terse.", options={"num_predict": 2})
    assert templated.eval_count == 2 and templated.context


def test_ollama_models(ol, server):
    tags = {m.model: m for m in ol.list().models}
    assert set(tags) == {"tiny:f32", "plain:f32"}
    t = tags["tiny:f32"]
    assert t.details.family == "llama" and t.details.quantization_level == "F32" and t.size > 0 and t.digest
    show = ol.show("tiny")
    assert show.details.family == "llama" and "im_start" in show.template
    assert show.modelinfo["general.architecture"] == "llama" and str(server.home) not in show.modelfile
    running = {m.model: m for m in ol.ps().models}
    assert "tiny:f32" in running and running["tiny:f32"].context_length == CTX
    status, body = server.json("GET", "/api/version")
    assert status == 200 and body["version"]


@pytest.mark.parametrize("call, status, message", [
    (lambda c: c.chat(model="nope", messages=HELLO), 404, "unknown model 'nope'"),
    (lambda c: c.chat(model="/tmp/x.gguf", messages=HELLO), 400, "looks like a file path"),
    (lambda c: c.generate(model="tiny", prompt="x", options={"temperature": "hot"}), 400, "temperature must be"),
    (lambda c: c.generate(model="tiny", prompt="the " * 300), 400, "the context holds 256"),
    (lambda c: c.show("nope"), 404, "unknown model"),
    (lambda c: c.delete("nope"), 404, "not in the local store"),
])
def test_ollama_errors(ol, call, status, message):
    with pytest.raises(ollama.ResponseError) as e:
        call(ol)
    assert e.value.status_code == status and message in e.value.error


def test_keep_alive_loads_and_unloads(ol, server):
    r = ol.generate(model="plain", prompt="the", raw=True, options={"num_predict": 2}, keep_alive=0)
    assert r.done
    server.wait_for(lambda: "plain:f32" not in {m["name"] for m in server.loaded()}, what="plain to unload")
    status, body = server.json("POST", "/api/generate", {"model": "plain"})  # an empty prompt loads
    assert status == 200 and body["done_reason"] == "load"
    assert "plain:f32" in {m["name"] for m in server.loaded()}
    status, body = server.json("POST", "/api/chat", {"model": "plain", "messages": [], "keep_alive": 0})
    assert status == 200 and body["done_reason"] == "unload" and body["message"] == {"role": "assistant",
                                                                                      "content": ""}
    assert "plain:f32" not in {m["name"] for m in server.loaded()}


def test_delete_removes_from_the_store(ol, server, tiny_llama):
    store_model(server.home, tiny_llama, "spare")
    ol.generate(model="spare", prompt="x", options={"num_predict": 1})  # loaded, then deleted
    assert "spare:f32" in {m.model for m in ol.list().models}
    ol.delete("spare")
    assert "spare:f32" not in {m.model for m in ol.list().models}
    assert "spare:f32" not in {m["name"] for m in server.loaded()}


def test_every_request_gets_an_access_log_line(oa, server):
    before = len(server.lines)
    oa.chat.completions.create(model="tiny", messages=HELLO, max_tokens=3, temperature=0)
    line = server.wait_for(lambda: next((ln for ln in server.lines[before:]
                                         if '"POST /v1/chat/completions" 200' in ln), None), what="the log line")
    assert "model=tiny:f32" in line and "gen=3" in line and "finish=length" in line
