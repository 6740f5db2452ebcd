"""The server's decisions as pure functions, from tables: durations, request translation,
unload planning, exposure, addresses, history fitting, the metrics text."""

from __future__ import annotations

import math
import random

import pytest

from slmrun import config
from slmrun.chat import fit_history
from slmrun.errors import InsufficientMemoryError, InvalidArgumentError, QueueFullError
from slmrun.server import check_exposure, is_loopback
from slmrun.server import schema as S
from slmrun.server import translate as T
from slmrun.server.manager import Resident, plan_unloads

MB = 1 << 20


@pytest.mark.parametrize("value, seconds", [
    (300, 300.0), (0, 0.0), (2.5, 2.5), (-1, math.inf), ("5m", 300.0), ("1h30m", 5400.0), ("300ms", 0.3),
    ("0", 0.0), ("10", 10.0), ("-1", math.inf), ("-5m", math.inf), ("1.5h", 5400.0), ("2h45m10s", 9910.0),
    ("  30s ", 30.0), ("1us", 1e-6),
])
def test_keep_alive_durations_as_ollama_reads_them(value, seconds):
    assert T.parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["5 minutes", "m", "", "1h30", "abc", "5x", True, None, [1], {"s": 1}])
def test_bad_keep_alive_says_what_works(value):
    with pytest.raises(InvalidArgumentError, match="keep_alive") as e:
        T.parse_duration(value)
    assert "5m" in str(e.value) + (e.value.hint or "")


@pytest.mark.parametrize("seconds, text", [(300, "5m"), (3600, "1h"), (7200, "2h"), (math.inf, "forever"),
                                           (0, "0s"), (90, "90s")])
def test_durations_print_back(seconds, text):
    assert T.format_duration(seconds) == text


def R(key, mb, busy=False, used=0.0):
    return Resident(key, mb * MB, busy, used)


@pytest.mark.parametrize("loaded, need, budget, unloads", [
    ([], 100, 1000, []),
    ([R("a", 400), R("b", 400)], 100, 1000, []),  # fits beside both
    ([R("a", 400, used=2), R("b", 400, used=1)], 300, 1000, ["b"]),  # the least recently used goes
    ([R("a", 400, used=1), R("b", 400, used=2)], 300, 1000, ["a"]),
    ([R("a", 300, used=1), R("b", 300, used=2), R("c", 300, used=3)], 700, 1000, ["a", "b"]),
    ([R("a", 500, busy=True, used=1), R("b", 400, used=2)], 400, 1000, ["b"]),  # busy ones stay
])
def test_plan_unloads_frees_the_least_recently_used_idle_models(loaded, need, budget, unloads):
    assert plan_unloads(loaded, key="new", need=need * MB, budget=budget * MB) == unloads


def test_a_model_that_cannot_fit_even_alone_is_refused():
    with pytest.raises(InsufficientMemoryError, match="new needs about 2.0 GiB.*budget is 1000 MiB"):
        plan_unloads([R("a", 10)], key="new", need=2048 * MB, budget=1000 * MB)


def test_busy_models_in_the_way_mean_try_again_later():
    with pytest.raises(QueueFullError, match="a answer other requests") as e:
        plan_unloads([R("a", 800, busy=True), R("b", 100)], key="new", need=300 * MB, budget=1000 * MB)
    assert "again" in e.value.hint


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                            ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                            ("::", False), ("192.168.1.5", False), ("myhost.lan", False)])
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_serving_beyond_loopback_needs_a_key_or_insecure():
    check_exposure("127.0.0.1", "", False)
    check_exposure("0.0.0.0", "k3y", False)
    check_exposure("0.0.0.0", "", True)
    with pytest.raises(InvalidArgumentError, match="without a key") as e:
        check_exposure("0.0.0.0", "", False)
    assert "--api-key" in e.value.hint and "--insecure" in e.value.hint


@pytest.mark.parametrize("text, address", [
    ("127.0.0.1:11435", ("127.0.0.1", 11435)), ("0.0.0.0", ("0.0.0.0", config.DEFAULT_PORT)),
    (":8080", ("127.0.0.1", 8080)), ("[::1]:9000", ("::1", 9000)), ("[::]", ("::", config.DEFAULT_PORT)),
    ("http://box:11435/", ("box", 11435)), ("localhost:0", ("localhost", 0)),
])
def test_server_addresses(text, address):
    assert config.split_address(text) == address


@pytest.mark.parametrize("text", ["host:port", "host:70000", "host:-1"])
def test_bad_server_address(text):
    with pytest.raises(ValueError, match="not a port"):
        config.split_address(text)


def _fit_linear(messages, count, n_ctx, reserve):
    """The one-turn-at-a-time rule fit_history's bisection must agree with."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system):]
    dropped = 0
    while len(rest) > 1 and count(system + rest) + reserve > n_ctx:
        cut = 2 if len(rest) > 2 and rest[0]["role"] == "user" and rest[1]["role"] == "assistant" else 1
        rest = rest[cut:]
        dropped += cut
    return system + rest, dropped


@pytest.mark.parametrize("seed", range(30))
def test_fit_history_bisection_agrees_with_dropping_one_turn_at_a_time(seed):
    rng = random.Random(seed)
    msgs = [{"role": "system", "content": "s" * rng.randint(1, 30)}] if rng.random() < 0.5 else []
    for _ in range(rng.randint(1, 40)):
        role = rng.choice(["user", "assistant", "user"])
        msgs.append({"role": role, "content": "x" * rng.randint(0, 50)})
    calls = []

    def count(ms):
        calls.append(1)
        return sum(len(m["content"]) + 4 for m in ms)

    n_ctx, reserve = rng.randint(20, 800), rng.randint(0, 50)
    assert fit_history(msgs, count, n_ctx=n_ctx, reserve=reserve) == _fit_linear(msgs, count, n_ctx, reserve)


def test_fit_history_renders_a_long_history_a_logarithmic_number_of_times():
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": "word " * 10} for i in range(2001)]
    calls = []

    def count(ms):
        calls.append(1)
        return 12 * len(ms)

    kept, dropped = fit_history(msgs, count, n_ctx=1200, reserve=100)
    assert 12 * len(kept) + 100 <= 1200 and dropped == 2001 - len(kept) and len(kept) >= 89
    assert len(calls) <= 12  # log2(1001 cut points) + 1, where dropping one exchange at a time takes ~955


# --- request translation -------------------------------------------------------------------------

def test_openai_chat_translation():
    call = T.openai_chat({
        "model": "smollm2", "stream": True, "stream_options": {"include_usage": True},
        "max_completion_tokens": 20, "max_tokens": 99, "temperature": 0, "seed": 7, "stop": ["\n"],
        "logprobs": True, "top_logprobs": 3, "user": "ignored",
        "messages": [{"role": "developer", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
                     {"role": "assistant", "content": None,
                      "tool_calls": [{"id": "c1", "type": "function",
                                      "function": {"name": "add", "arguments": "{\"a\": 1}"}}]},
                     {"role": "tool", "tool_call_id": "c1", "content": "2"}]})
    assert call.model == "smollm2" and call.stream and call.include_usage
    assert call.params == {"max_tokens": 20, "temperature": 0, "seed": 7, "stop": ["\n"], "logprobs": True,
                           "top_logprobs": 3}
    assert call.logprobs == 3
    assert call.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\nthere"},
                             {"role": "assistant", "content": '{"name": "add", "arguments": {"a": 1}}'},
                             {"role": "user", "content": "Tool result (c1):\n2"}]


def test_openai_defaults_generate_to_the_end_of_the_context():
    call = T.openai_chat({"messages": [{"role": "user", "content": "x"}]})
    assert call.model is None and call.params == {"max_tokens": None} and not call.stream and call.logprobs is None


@pytest.mark.parametrize("body, message", [
    ({"messages": []}, "messages must be a non-empty list"),
    ({"messages": "hi"}, "messages must be a non-empty list"),
    ({"messages": [{"role": "robot", "content": "x"}]}, r"messages\[0\].role must be one of"),
    ({"messages": [{"role": "user", "content": 5}]}, r"messages\[0\].content must be a string"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "image_url content is not supported"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n must be 1"),
    ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs needs logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": "yes"}, "logprobs must be true or false"),
    ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream must be true or false"),
    ({"messages": [{"role": "user", "content": "x"}], "model": 5}, "model must be a string"),
    ({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 5}}, "logit_bias is not supported"),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}},
     r"response_format.type must be one of 'text'"),
    ({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}, "no tools were given"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "a b"}}]},
     "function.name must be"),
])
def test_bad_openai_chat_requests_name_the_field(body, message):
    with pytest.raises(InvalidArgumentError, match=message):
        T.openai_chat(body)


def test_openai_completion_translation():
    call = T.openai_completion({"prompt": ["Once"], "logprobs": 2, "echo": True, "max_tokens": 5})
    assert call.prompt == "Once" and call.logprobs == 2 and call.echo
    assert call.params == {"max_tokens": 5, "logprobs": True, "top_logprobs": 2}
    assert T.openai_completion({"prompt": [1, 2, 3]}).prompt == [1, 2, 3]


@pytest.mark.parametrize("body, message", [
    ({}, "prompt is required"), ({"prompt": ["a", "b"]}, "prompt must be"),
    ({"prompt": [1, "a"]}, "prompt must be"), ({"prompt": "x", "logprobs": 9}, "logprobs must be an integer from 0 to 5"),
    ({"prompt": "x", "suffix": "y"}, "suffix"), ({"prompt": "x", "echo": 1}, "echo must be true or false"),
    ({"prompt": "x", "best_of": 3}, "best_of must be 1"),
])
def test_bad_openai_completion_requests(body, message):
    with pytest.raises(InvalidArgumentError, match=message):
        T.openai_completion(body)


def test_ollama_chat_translation_and_ignored_options():
    call, ignored = T.ollama_chat({
        "model": "tiny:latest", "keep_alive": "10m", "stream": False, "format": "json",
        "options": {"num_predict": -1, "temperature": 0.2, "top_k": 5, "stop": ["x"], "num_ctx": 8192,
                    "mirostat": 1},
        "messages": [{"role": "user", "content": "hi"},
                     {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f",
                                                                                      "arguments": {"x": 1}}}]},
                     {"role": "tool", "tool_name": "f", "content": "ok"}]})
    assert T.model_ref(call.model) == "tiny" and call.keep_alive == 600 and not call.stream
    assert call.params == {"max_tokens": None, "temperature": 0.2, "top_k": 5, "stop": ["x"]}
    assert sorted(ignored) == ["mirostat", "num_ctx"]
    assert call.response_format == {"type": "json_object"}
    assert call.messages[1:] == [{"role": "assistant", "content": '{"name": "f", "arguments": {"x": 1}}'},
                                 {"role": "user", "content": "Tool result (f):\nok"}]


def test_ollama_generate_translation():
    call, _ = T.ollama_generate({"model": "m", "prompt": "Why?", "system": "Be brief.",
                                 "options": {"num_predict": 12}, "format": {"type": "object"}})
    assert call.stream and call.messages == [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Why?"}]
    assert call.params == {"max_tokens": 12} and call.response_format["schema"] == {"type": "object"}
    raw, _ = T.ollama_generate({"model": "m", "prompt": "[INST] x [/INST]", "raw": True})
    assert raw.raw and raw.messages is None and raw.prompt == "[INST] x [/INST]"


@pytest.mark.parametrize("body, message", [
    ({"prompt": "x", "suffix": "y"}, "suffix"), ({"prompt": "x", "images": ["aGk="]}, "images are not supported"),
    ({"prompt": "x", "template": "{{ .Prompt }}"}, "template overrides"), ({"prompt": 3}, "prompt must be a string"),
    ({"prompt": "x", "options": {"num_predict": "many"}}, "num_predict must be an integer"),
    ({"prompt": "x", "options": []}, "options must be an object"), ({"prompt": "x", "format": "yaml"}, "format must"),
    ({"prompt": "x", "keep_alive": "forever"}, "keep_alive"), ({"prompt": "x", "think": True}, "do not think"),
    ({"prompt": "x", "context": ["a"]}, "context must be a list of token ids"),
    ({"prompt": "x", "raw": "yes"}, "raw must be true or false"),
])
def test_bad_ollama_generate_requests(body, message):
    with pytest.raises(InvalidArgumentError, match=message):
        T.ollama_generate(body)


@pytest.mark.parametrize("messages, message", [
    ([{"role": "user", "content": "x", "images": ["aGk="]}], "images are not supported"),
    ([{"role": "user", "content": ["x"]}], "content must be a string"), ("x", "messages must be a list"),
])
def test_bad_ollama_chat_requests(messages, message):
    with pytest.raises(InvalidArgumentError, match=message):
        T.ollama_chat({"model": "m", "messages": messages})


@pytest.mark.parametrize("name", ["/etc/passwd", "./model.gguf", "../x", "~/m", "model.gguf", "a/b"])
def test_names_that_look_like_paths_are_refused(name):
    with pytest.raises(InvalidArgumentError, match="looks like a file path"):
        S.check_model_ref(name)
