"""response_format, Ollama's format, tools and tool_choice through the real clients: the
output always parses and validates, because decoding is constrained to it, even sampled
at a high temperature. Generation runs on the real default model; refusals (nothing
generated) on a tiny one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serverutil import Server, store_model  # noqa: E402

openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")
jsonschema = pytest.importorskip("jsonschema")

SMALL = {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
                                          "n": {"type": "integer", "minimum": 0, "maximum": 9}},
         "required": ["color", "n"], "additionalProperties": False}
UNIT = {"type": "object", "properties": {"unit": {"enum": ["celsius", "fahrenheit"]},
                                         "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["unit", "days"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "forecast", "description": "The weather forecast",
                                           "parameters": UNIT}},
         {"type": "function", "function": {"name": "pick", "description": "Pick a colour", "parameters": SMALL}}]
HELLO = [{"role": "user", "content": "hello world"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_llama):
    home = tmp_path_factory.mktemp("serve-structured")
    store_model(home, tiny_llama, "tiny")
    with Server(home, "-m", "tiny", "--ctx", "512", "--parallel", "2", "--threads", "1") as s:
        yield s


@pytest.fixture(scope="module")
def real(tmp_path_factory, default_model_file):
    home = tmp_path_factory.mktemp("serve-structured-real")
    store_model(home, default_model_file, "smollm2-135m")
    with Server(home, "-m", "smollm2-135m", "--ctx", "1024", "--parallel", "2") as s:
        yield s


@pytest.fixture
def oa(real):
    return openai.OpenAI(base_url=real.url + "/v1", api_key="x", max_retries=0)


def fmt(schema):
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


@pytest.mark.real_model
@pytest.mark.parametrize("seed", range(4))
def test_json_schema_output_validates_even_sampled_hot(oa, seed):
    r = oa.chat.completions.create(model="smollm2-135m", messages=HELLO, response_format=fmt(SMALL), temperature=1.0,
                                   seed=seed, max_tokens=64)
    jsonschema.validate(json.loads(r.choices[0].message.content), SMALL)
    assert r.choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].delta.content or "" for c in oa.chat.completions.create(
        model="smollm2-135m", messages=HELLO, response_format=fmt(SMALL), temperature=1.0, seed=seed, max_tokens=64,
        stream=True) if c.choices)
    assert text == r.choices[0].message.content  # streamed as text, piece by piece, like any reply


@pytest.mark.real_model
def test_completions_take_response_format_too(oa):
    r = oa.completions.create(model="smollm2-135m", prompt="JSON:", max_tokens=64, temperature=0,
                              extra_body={"response_format": fmt(SMALL)})
    jsonschema.validate(json.loads(r.choices[0].text), SMALL)


@pytest.mark.real_model
@pytest.mark.parametrize("choice, names", [("required", {"forecast", "pick"}),
                                           ({"type": "function", "function": {"name": "pick"}}, {"pick"})])
def test_a_required_tool_call_is_a_valid_call(oa, choice, names):
    r = oa.chat.completions.create(model="smollm2-135m", messages=HELLO, tools=TOOLS, tool_choice=choice, temperature=1.0,
                                   seed=3, max_tokens=64)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    call = c.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
    schema = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == call.function.name)
    jsonschema.validate(json.loads(call.function.arguments), schema)


@pytest.mark.real_model
def test_a_streamed_tool_call_arrives_whole(oa):
    chunks = list(oa.chat.completions.create(model="smollm2-135m", messages=HELLO, tools=TOOLS, tool_choice="required",
                                             temperature=0, max_tokens=64, stream=True))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].function.name in ("forecast", "pick")
    json.loads(calls[0].function.arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)  # no half call as text


@pytest.mark.real_model
@pytest.mark.parametrize("seed", range(6))
def test_auto_gives_a_valid_call_or_text(oa, seed):
    r = oa.chat.completions.create(model="smollm2-135m", messages=HELLO, tools=TOOLS, temperature=1.5, seed=seed,
                                   max_tokens=24)
    m = r.choices[0].message
    if m.tool_calls:
        assert r.choices[0].finish_reason == "tool_calls"
        json.loads(m.tool_calls[0].function.arguments)
    else:
        assert m.content and not m.content.lstrip().startswith("{")


@pytest.mark.real_model
def test_ollama_format_and_tools(real):
    ol = ollama.Client(host=real.url)
    r = ol.chat(model="smollm2-135m", messages=HELLO, format=SMALL, options={"temperature": 0, "num_predict": 64})
    jsonschema.validate(json.loads(r.message.content), SMALL)
    g = ol.generate(model="smollm2-135m", prompt="hello", format=SMALL, options={"temperature": 0, "num_predict": 64})
    jsonschema.validate(json.loads(g.response), SMALL)
    with_tools = ol.chat(model="smollm2-135m", messages=HELLO, tools=TOOLS, options={"num_predict": 24})
    plain = ol.chat(model="smollm2-135m", messages=HELLO, options={"num_predict": 1})
    assert with_tools.prompt_eval_count > plain.prompt_eval_count + 50  # the tools were described to the model
    for call in with_tools.message.tool_calls or []:
        assert isinstance(call.function.arguments, dict)


def test_ollama_messages_carry_calls_with_object_arguments():
    from slmrun.server.ollama_api import _ollama_message

    openai_style = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "forecast",
                                                          "arguments": '{"unit": "celsius", "days": 2}'}}]}
    assert _ollama_message(openai_style, text_sent=True) == {
        "role": "assistant", "content": "",
        "tool_calls": [{"function": {"name": "forecast", "arguments": {"unit": "celsius", "days": 2}}}]}


@pytest.mark.parametrize("body, code, message", [
    ({"response_format": fmt({"type": "object", "properties": {"a": {"type": "strin"}}})}, "invalid_schema",
     "not a valid JSON Schema"),
    ({"response_format": fmt({"type": "array", "items": {"type": "string"}, "uniqueItems": True})},
     "unsupported_schema", "uniqueItems"),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "invalid_value", "cannot be combined"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}]}, "invalid_schema",
     "not a valid JSON Schema"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "other"}}}, "invalid_value",
     "not among the tools"),
])
def test_constraints_that_cannot_be_enforced_are_400s(tiny, body, code, message):
    status, data = tiny.json("POST", "/v1/chat/completions", {"model": "tiny", "messages": HELLO, **body})
    assert status == 400 and data["error"]["code"] == code and message in data["error"]["message"]


@pytest.mark.real_model
def test_the_real_model_fills_a_schema_and_calls_a_tool(real):
    person = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                               "city": {"type": "string"}},
              "required": ["name", "age", "city"]}
    weather = [{"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    oa = openai.OpenAI(base_url=real.url + "/v1", api_key="x", max_retries=0)
    r = oa.chat.completions.create(model="smollm2-135m", temperature=0, response_format=fmt(person),
                                   messages=[{"role": "user", "content": "Alice is 31 and lives in Paris."}])
    value = json.loads(r.choices[0].message.content)
    jsonschema.validate(value, person)
    assert value["name"] == "Alice" and value["city"] == "Paris"
    r = oa.chat.completions.create(model="smollm2-135m", temperature=0, tools=weather, tool_choice="required",
                                   messages=[{"role": "user", "content": "What is the weather in Tokyo?"}])
    call = r.choices[0].message.tool_calls[0].function
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Tokyo"}
    # "auto": SmolLM2-135M answers a greeting in text (it rarely chooses a call at all).
    r = oa.chat.completions.create(model="smollm2-135m", temperature=0, tools=weather, max_tokens=40,
                                   messages=[{"role": "user", "content": "Hi! How are you?"}])
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls
    ol = ollama.Client(host=real.url)
    j = ol.chat(model="smollm2-135m", format="json", options={"temperature": 0, "num_predict": 300},
                messages=[{"role": "user", "content": 'What is 2+2? Answer as JSON: {"answer": ...}'}])
    assert j.done_reason == "stop" and isinstance(json.loads(j.message.content), dict)
