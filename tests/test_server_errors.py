"""How the server says no, in process (Starlette's TestClient, no model loaded): every bad
body is a 400 naming its first bad field in the API's own shape, unknown fields are logged
once, a bug is a 500 with a request id that its one log line carries, statuses for the
library's errors, and no path of this machine in any message."""

from __future__ import annotations

import logging
import os
import sys

import pytest
from starlette.testclient import TestClient

from slmrun import config
from slmrun import errors as E
from slmrun.server import Settings, http, ollama_api
from slmrun.server.app import create_app

HELLO = [{"role": "user", "content": "hi"}]
LONG = "x" * 5000


@pytest.fixture
def client():
    # No lifespan (no `with`): nothing is loaded, so every answer below comes before a model would be.
    return TestClient(create_app(Settings()), raise_server_exceptions=True)


@pytest.mark.parametrize("path, body, param, message", [
    ("/v1/chat/completions", {"messages": HELLO, "max_tokens": [1, 2]}, "max_tokens",
     "max_tokens must be an integer, got [1, 2]"),
    ("/v1/chat/completions", {"messages": HELLO, "max_completion_tokens": "😀" * 50}, "max_completion_tokens",
     "max_completion_tokens must be an integer"),
    ("/v1/chat/completions", {"messages": HELLO, "model": LONG}, "model", "invalid model name"),
    ("/v1/chat/completions", {"messages": HELLO, "model": "../../etc/passwd"}, "model", "looks like a file path"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "messages[0].content", "messages[0].content must be a string or a list of text parts"),
    ("/v1/chat/completions", {"messages": HELLO, "temperature": "hot"}, "temperature", "temperature must be a number"),
    ("/v1/chat/completions", {"messages": HELLO, "top_p": 1.5}, "top_p", "top_p must be <= 1.0"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "temperature",
     "temperature must be a finite number"),
    ("/v1/chat/completions", {"messages": HELLO, "seed": True}, "seed", "seed must be an integer"),
    ("/v1/chat/completions", {"messages": HELLO, "stream_options": {"include_usage": "yes"}},
     "stream_options.include_usage", "must be true or false"),
    ("/v1/chat/completions", {"messages": HELLO, "top_logprobs": 3}, "top_logprobs", "needs logprobs"),
    ("/v1/chat/completions", {}, "messages", "messages is required"),
    ("/v1/completions", {"prompt": "x", "max_tokens": -1}, "max_tokens", "max_tokens must be >= 0"),
    ("/v1/completions", {"prompt": [[1], [2]]}, "prompt", "one prompt per request"),
])
def test_bad_openai_bodies_are_400s_naming_the_parameter(client, path, body, param, message):
    r = client.post(path, content=body) if isinstance(body, bytes) else client.post(path, json=body)
    err = r.json()["error"]
    assert r.status_code == 400 and err["type"] == "invalid_request_error" and err["param"] == param
    assert message in err["message"] and err["code"] in ("invalid_value", "invalid_type", "missing_required_parameter")
    assert str(config.home()) not in r.text and len(r.text) < 1000


@pytest.mark.parametrize("path, body, message", [
    ("/api/chat", {"model": LONG, "messages": HELLO}, "model: invalid model name"),
    ("/api/show", {"model": LONG}, "model: invalid model name"),
    ("/api/show", {}, "model is required"),
    ("/api/delete", {"name": "x:" + "q" * 100}, "name: invalid quant"),
    ("/api/generate", {"model": "m", "prompt": "x", "options": {"temperature": [1]}},
     "options.temperature must be a number"),
    ("/api/generate", {"model": "m", "prompt": "x", "keep_alive": "soon"}, "cannot read 'soon' as a duration"),
    ("/api/chat", {"model": "m", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]},
     "images are not supported"),
    ("/api/pull", {"model": "m", "stream": "no"}, "stream must be true or false"),
])
def test_bad_ollama_bodies_are_400s_in_ollamas_shape(client, path, body, message):
    r = client.request("DELETE" if path == "/api/delete" else "POST", path, json=body)
    assert r.status_code == 400 and set(r.json()) == {"error"} and message in r.json()["error"]


@pytest.mark.parametrize("data, message", [
    (b"", "the request body is empty"), (b"  \n", "the request body is empty"),
    (b"[1, 2]", "the request body must be a JSON object"), (b"{not json", "not valid JSON"),
    (b'{"messages": "hi\xff"}', "not valid JSON"), (b'{"messages": "\\ud800"}', "not valid JSON"),
    (b"[" * 5000, "not valid JSON"), (b'{"a": ' * 300 + b"1" + b"}" * 300, "not valid JSON"),
])
def test_bodies_that_are_not_json_objects(client, data, message):
    r = client.post("/v1/chat/completions", content=data)
    assert r.status_code == 400 and message in r.json()["error"]["message"] and r.json()["error"]["code"] == "invalid_json"


def test_unknown_fields_are_ignored_and_logged_once(client, caplog):
    caplog.set_level(logging.INFO, logger="slmrun.server")
    r = client.post("/api/show", json={"model": "nope", "colour": "red", "verbose": False, "deep": {"x": 1}})
    assert r.status_code == 404  # got past the body to the store
    lines = [rec.getMessage() for rec in caplog.records if "unknown field" in rec.getMessage()]
    assert lines == ["POST /api/show: ignoring unknown field(s) colour, deep"]
    caplog.clear()
    client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x", "mood": 1}],
                                              "stream_options": {"x": 1}, "max_tokens": "bad"})
    assert not [r for r in caplog.records if "unknown field" in r.getMessage()]  # refused bodies are not logged


def test_a_bug_is_a_500_with_a_request_id_its_one_log_line_carries(client, caplog, monkeypatch):
    def broken():
        raise RuntimeError(f"boom in {config.home()}/secret")

    monkeypatch.setattr(ollama_api, "_tags", broken)
    caplog.set_level(logging.INFO)
    r = client.get("/api/tags")  # raise_server_exceptions: an exception that escaped would raise here
    rid = r.headers["x-request-id"]
    assert r.status_code == 500 and r.json() == {
        "error": f"internal error (request id {rid}): the server's log has the details"}
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1 and rid in errors[0].getMessage() and errors[0].exc_info[0] is RuntimeError
    assert "boom" not in r.text

    import slmrun.store
    monkeypatch.setattr(slmrun.store, "list_models", broken)
    r = client.get("/v1/models")
    err = r.json()["error"]
    assert r.status_code == 500 and err["type"] == "server_error" and err["code"] == "internal_error"
    assert r.headers["x-request-id"] in err["message"]


def test_every_response_has_a_request_id(client):
    seen = set()
    for method, path in (("GET", "/health"), ("GET", "/nothing"), ("POST", "/api/tags"), ("GET", "/api/version")):
        r = client.request(method, path)
        assert len(r.headers["x-request-id"]) == 12
        seen.add(r.headers["x-request-id"])
    assert len(seen) == 4


@pytest.mark.parametrize("exc, status, code", [
    (E.InsufficientMemoryError("x needs 2 GiB"), 507, "insufficient_memory"),
    (E.StructuredOutputError("not JSON"), 500, "invalid_output"),
    (E.QueueFullError("busy"), 503, "server_busy"),
    (E.InvalidArgumentError("bad"), 400, "invalid_value"),
    (E.ModelNotFoundError("nope"), 404, "model_not_found"),
])
def test_statuses_of_library_errors(exc, status, code):
    got, body, headers = http.error_body(exc, "/v1/chat/completions")
    assert (got, body["error"]["code"]) == (status, code)
    assert ("Retry-After" in headers) == (status == 503)


def test_no_path_of_this_machine_leaves_in_a_message():
    home, models = str(config.home()), str(config.models_dir())
    user = os.path.expanduser("~")
    cases = {
        f"no such file: {models}/tiny/tiny.gguf": "no such file: <models>/tiny/tiny.gguf",
        f"cannot write {home}/partial/x": "cannot write <SLMRUN_HOME>/partial/x",
        f"{sys.prefix}/lib/python3/site.py failed": "<python>/lib/python3/site.py failed",
        f"'{user}/notes.txt'": "'~/notes.txt'",
        f"{user}fs and {user}2 are other directories": f"{user}fs and {user}2 are other directories",
        "GET /v1/models lists them": "GET /v1/models lists them",
    }
    for text, shown in cases.items():
        assert http.scrub(text) == shown
    status, body, _ = http.error_body(E.ModelFileNotFoundError(f"no such file: {models}/x.gguf"), "/api/show")
    assert body == {"error": "no such file: <models>/x.gguf. " + E.ModelFileNotFoundError.default_hint}


def test_health_shows_a_failed_preload_without_its_paths(monkeypatch):
    from slmrun.server import app as app_module

    async def failing_lease(self, ref, keep_alive=None):
        raise E.InvalidModelFileError(f"{config.models_dir()}/tiny/tiny.gguf: not a GGUF file")

    monkeypatch.setattr(app_module.ModelManager, "lease", failing_lease)
    with TestClient(create_app(Settings(models=("tiny",)))) as c:
        import time
        for _ in range(100):
            r = c.get("/health")
            if r.json()["status"] == "error":
                break
            time.sleep(0.02)
    assert r.status_code == 503 and r.json()["errors"] == {"tiny": "<models>/tiny/tiny.gguf: not a GGUF file"}
