"""`slmrun run` and `slmrun chat` answered by a running `slmrun serve` that has the model
loaded (slmrun/client), as `ollama run` asks its server: the same answer as a load of one's
own, and a load of one's own whenever the server cannot give that."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import slmrun_cmd  # noqa: E402
from serverutil import Server, server_env, store_model  # noqa: E402

from slmrun.client import local_address, why_local  # noqa: E402
from slmrun.client.served import request_body, stats_from  # noqa: E402
from slmrun.errors import InvalidArgumentError  # noqa: E402

PROMPT = "The quick brown fox"


# --- decisions, from tables ---------------------------------------------------------------------

@pytest.mark.parametrize("host, port, expected", [
    ("127.0.0.1", 11435, ("127.0.0.1", 11435)),
    ("0.0.0.0", 8080, ("127.0.0.1", 8080)),  # bound to every interface: reached on loopback
    ("", 8080, ("127.0.0.1", 8080)),
    ("::", 9000, ("::1", 9000)),
    ("[::1]", 9000, ("::1", 9000)),
    ("localhost", 11435, ("localhost", 11435)),
    ("127.0.0.2", 1, ("127.0.0.2", 1)),
    ("192.168.1.20", 11435, None),  # another machine's: a load here is not certainly slower
    ("box.lan", 11435, None),
    ("127.0.0.1", 0, None),  # port 0: the server picks one; nothing to connect to
])
def test_only_a_server_on_this_machine_is_asked(host, port, expected):
    assert local_address(host, port) == expected


@pytest.mark.parametrize("given, expected", [
    ({}, None),
    ({"no_server": False, "ctx": None, "lora": [], "chat_format": None}, None),
    ({"chat_format": "json"}, None),  # Ollama's format: "json" is a request's option
    ({"chat_format": " JSON "}, None),
    ({"no_server": True}, "--no-server"),
    ({"ctx": 512}, "--ctx"),
    ({"threads": 1}, "--threads"),
    ({"force": True}, "--force"),
    ({"rpc": "10.0.0.2:50052"}, "--rpc"),
    ({"lora": ["style.gguf"]}, "--lora"),
    ({"chat_format": "chatml"}, "--format"),  # a prompt format is chosen when the model loads
    ({"grammar": Path("g.lark")}, "--grammar"),  # Ollama's API carries no grammar
    ({"ctx": 512, "no_server": True}, "--no-server"),
])
def test_options_that_choose_the_load_need_a_model_of_ones_own(given, expected):
    assert why_local(**given) == expected


def test_a_request_carries_the_sampling_options_under_ollamas_names():
    body = request_body("m:q4_1", {"max_tokens": 7, "temperature": 0.0, "top_k": 5, "seed": 3, "stop": ["\n"],
                                   "repeat_penalty": 1.1, "speculative": "off"}, prompt="hi")
    assert body == {"model": "m:q4_1", "stream": True, "prompt": "hi", "raw": True,
                    "options": {"num_predict": 7, "temperature": 0.0, "top_k": 5, "seed": 3, "stop": ["\n"],
                                "repeat_penalty": 1.1, "speculative": "off"}}
    chat = request_body("m", {"max_tokens": None, "json_schema": '{"type": "object"}'},
                        messages=[{"role": "user", "content": "x"}])
    assert chat["options"] == {"num_predict": -1} and chat["format"] == {"type": "object"}
    assert chat["messages"] == [{"role": "user", "content": "x"}] and "prompt" not in chat
    assert request_body("m", {"json_object": True}, prompt="x")["format"] == "json"
    with pytest.raises(InvalidArgumentError, match="grammar cannot be sent"):
        request_body("m", {"grammar": "start: 'a'"}, prompt="x")


def test_stats_come_from_the_servers_engine_else_from_ollamas_fields():
    done = {"done": True, "load_duration": 2_000_000, "prompt_eval_count": 9, "eval_count": 4,
            "slmrun": {"stats": {"prompt_tokens": 9, "generated_tokens": 4, "cached_tokens": 5, "ttft_s": 0.01,
                                 "load_s": 3.0, "a_field_from_a_newer_server": 1}}}
    s = stats_from(done, 0.0)
    assert (s.prompt_tokens, s.generated_tokens, s.cached_tokens, s.ttft_s) == (9, 4, 5, 0.01)
    assert s.load_s == 0.002  # this request's wait for a load, not when the server once loaded it
    plain = stats_from({"done": True, "prompt_eval_count": 9, "eval_count": 4, "eval_duration": 500_000_000}, 0.0)
    assert (plain.prompt_tokens, plain.generated_tokens, plain.gen_s) == (9, 4, 0.5)


# --- against a real server ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_llama, tiny_llama_plain, default_model_file):
    home = tmp_path_factory.mktemp("served-home")
    store_model(home, tiny_llama, "tiny")
    store_model(home, tiny_llama_plain, "plain")  # in the store, not loaded
    store_model(home, default_model_file, "smollm2-135m")  # loaded by the first request for it
    with Server(home, "-m", "tiny", "--ctx", "256", "--parallel", "2", "--threads", "1") as s:
        yield s


@pytest.fixture(scope="module")
def real(server):
    """The server with SmolLM2 loaded too (a request with no prompt loads it, as Ollama's)."""
    status, body = server.json("POST", "/api/generate", {"model": "smollm2-135m"})
    assert status == 200 and body["done_reason"] == "load", body
    return "smollm2-135m"


def _client_env(server, home: Path | None = None) -> dict:
    host_port = server.url.removeprefix("http://")
    return server_env(home or server.home, SLMRUN_HOST=host_port)


def cli(server, *args, home: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*slmrun_cmd(), *args], capture_output=True, text=True, timeout=300, input=stdin,
                          env=_client_env(server, home))


def _requests(server, path: str) -> int:
    return sum(f"POST {path}" in line for line in server.lines)


def test_run_is_answered_by_the_server_with_the_text_a_load_of_ones_own_gives(server):
    before = _requests(server, "/api/generate")
    served = cli(server, "run", "--raw", "-m", "tiny", "-n", "12", "-t", "0", "-v", PROMPT)
    assert served.returncode == 0, served.stderr
    assert f"served by:            slmrun serve at {server.url}" in served.stderr
    assert "load duration:        0.00ms" in served.stderr  # the server had it loaded
    server.wait_for(lambda: _requests(server, "/api/generate") > before, what="the access log line")
    local = cli(server, "run", "--raw", "-m", "tiny", "-n", "12", "-t", "0", "-v", "--no-server", PROMPT)
    assert local.returncode == 0, local.stderr
    assert "served by" not in local.stderr
    assert served.stdout == local.stdout and served.stdout.strip()


def test_a_chat_prompt_and_a_json_schema_give_the_same_answer_served_or_not(server, real, tmp_path):
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}))
    for args in (["-n", "24", "-t", "0", "What is the capital of France?"],
                 ["-n", "40", "-t", "0", "--json-schema", str(schema), "Where is the Eiffel Tower?"],
                 ["-n", "40", "-t", "0", "--format", "json", "Name a city as JSON."]):
        served = cli(server, "run", "-m", real, "-v", *args)
        local = cli(server, "run", "-m", real, "--no-server", *args)
        assert served.returncode == local.returncode, served.stderr + local.stderr
        assert "served by" in served.stderr
        assert served.stdout == local.stdout, args


def test_chat_keeps_its_history_on_the_server_path(server, real):
    lines = "My name is Ada.\nWhat is my name?\n"
    served = cli(server, "chat", "-m", real, "-n", "16", "-t", "0", "-v", stdin=lines)
    local = cli(server, "chat", "-m", real, "-n", "16", "-t", "0", "--no-server", stdin=lines)
    assert served.returncode == 0 and local.returncode == 0, served.stderr + local.stderr
    assert served.stderr.count("served by:") == 2
    assert served.stdout == local.stdout and served.stdout.strip()
    # the second turn went with the first turn's exchange: the server reused its prompt from the cache
    assert "cached)" in served.stderr.split("served by:")[2]


@pytest.mark.parametrize("args", [["-m", "plain"], ["-m", "tiny", "--ctx", "128"], ["-m", "tiny", "--threads", "1"]])
def test_a_model_the_server_has_not_loaded_or_an_option_it_cannot_honour_loads_here(server, args):
    r = cli(server, "run", "--raw", "-n", "4", "-t", "0", "-v", *args, PROMPT)
    assert r.returncode == 0, r.stderr
    assert "served by" not in r.stderr


def test_a_model_of_the_same_name_but_another_file_is_loaded_here(server, tmp_path, tiny_llama_plain):
    home = tmp_path / "home"
    store_model(home, tiny_llama_plain, "tiny")  # "tiny" here is what the server calls "plain"
    r = cli(server, "run", "--raw", "-m", "tiny", "-n", "4", "-t", "0", "-v", PROMPT, home=home)
    assert r.returncode == 0, r.stderr
    assert "served by" not in r.stderr


def test_the_library_streams_cancels_and_frees_the_servers_slot(server, real, monkeypatch):
    real_name = real
    from slmrun.client import served_model

    for key, value in _client_env(server).items():
        if key.startswith("SLMRUN_"):
            monkeypatch.setenv(key, value)
    m = served_model("tiny")
    assert m is not None and m.key == "tiny:f32" and m.n_ctx == 256
    whole = m.complete(PROMPT, max_tokens=6, temperature=0)
    assert whole.text and whole.finish_reason == "length" and whole.stats.generated_tokens == 6
    with pytest.raises(InvalidArgumentError, match="temperature"):  # the server's 400, as the library's error
        m.complete(PROMPT, max_tokens=4, temperature=-1)
    assert served_model("plain") is None  # in the server's store, not loaded: a load here is no slower
    real = served_model(real_name)
    assert real is not None and real.key == "smollm2-135m:q4_1"
    before = len(server.lines)
    r = real.complete("1, 2, 3, 4, 5,", max_tokens=900, temperature=0)  # ~10 s of counting: cut short
    assert next(iter(r))
    r.cancel()
    r.wait(60)
    assert r.cancelled and r.text_so_far
    server.wait_for(lambda: all(x["slmrun"]["slots_busy"] == 0 for x in server.loaded()), what="a free slot")
    server.wait_for(lambda: any("finish=cancelled" in ln for ln in server.lines[before:]), what="the log line")


def test_no_server_at_the_address_loads_here(tmp_path, tiny_llama):
    home = tmp_path / "home"
    store_model(home, tiny_llama, "tiny")
    env = server_env(home, SLMRUN_HOST="127.0.0.1:1")  # nothing listens there
    r = subprocess.run([*slmrun_cmd(), "run", "--raw", "-m", "tiny", "-n", "3", "-t", "0", "-v", PROMPT],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert "served by" not in r.stderr


# Recorded from /proc/net/tcp on Linux (x86_64), trimmed: a server of uid 1000 listening on
# 127.0.0.1:11435 (2CAB), one of uid 0 on 0.0.0.0:8080 (1F90), and a connection (state 01) on 11435.
PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2CAB 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 41874 1 0 100 0 0 10 0
   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41211 1 0 100 0 0 10 0
   2: 0100007F:2CAB 0100007F:D3A2 01 00000000:00000000 00:00000000 00000000  1001        0 41990 1 0 20 4 30 10 -1
"""
PROC_NET_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1002        0 5 1 0 100 0 0 10 0
"""


@pytest.mark.parametrize("port, expected", [(11435, {1000}), (8080, {0, 1002}), (9999, set())])
def test_the_owner_of_a_listening_socket_is_read_from_proc_net_tcp(port, expected):
    from slmrun.client.discover import listener_uids

    assert listener_uids([PROC_NET_TCP, PROC_NET_TCP6], port) == expected
    assert listener_uids(["garbage\n0: x y 0A"], port) == set()


def test_a_server_another_user_runs_is_never_asked(server, monkeypatch):
    from slmrun.client import discover, served_model

    for key, value in _client_env(server).items():
        if key.startswith("SLMRUN_"):
            monkeypatch.setenv(key, value)
    assert served_model("tiny") is not None
    monkeypatch.setattr(discover.os, "getuid", lambda: 4242)  # as if this were another user's shell
    assert served_model("tiny") is None


@pytest.mark.parametrize("body, reason, expected", [
    (b'{"error": "model not found"}', "Not Found", "model not found"),  # Ollama's shape
    (b'{"error": {"message": "bad temperature", "type": "invalid_request_error"}}', "Bad Request",
     "bad temperature"),  # OpenAI's
    (b'{"detail": "nope"}', "Not Found", "Not Found"),  # JSON without an error: the status's reason
    (b"<html>gateway</html>", "Bad Gateway", "Bad Gateway"),
    (b"<html>gateway</html>", "", "<html>gateway</html>"),
])
def test_a_servers_error_message_is_read_from_either_apis_shape(body, reason, expected):
    from slmrun.client.served import _error_text

    assert _error_text(body, reason) == expected
