"""Ollama's model-making routes on `slmrun serve` (a real subprocess, tiny models): /api/create
in its JSON form (and through the official ollama client, blobs included), /api/show, /api/copy,
/api/delete, created models in /api/tags and /v1/models, their parameters under a request's
own, and files outside the store refused unless --allow-paths."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serverutil import Server, store_model  # noqa: E402
from tinymodels import write_tiny_lora  # noqa: E402

ollama = pytest.importorskip("ollama")
HELLO = [{"role": "user", "content": "hello world"}]


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_llama):
    home = tmp_path_factory.mktemp("create-home")
    store_model(home, tiny_llama, "tiny")
    return home


@pytest.fixture(scope="module")
def server(home):
    with Server(home, "--ctx", "256", "--parallel", "2", "--threads", "1") as s:
        yield s


def lines(data: bytes) -> list[dict]:
    return [json.loads(x) for x in data.decode().splitlines() if x.strip()]


def create(server, body, **kw):
    status, _, data = server.request("POST", "/api/create", body, **kw)
    return status, data


def test_create_show_use_copy_delete(server):
    status, data = create(server, {"model": "bot", "from": "tiny", "system": "Be terse.",
                                   "parameters": {"temperature": 0, "num_predict": 3, "stop": ["zz", "yy"]},
                                   "messages": [{"role": "user", "content": "hi"},
                                                {"role": "assistant", "content": "hello"}]})
    assert status == 200
    statuses = [x["status"] for x in lines(data)]
    assert statuses[0] == "parsing modelfile" and statuses[-1] == "success"
    tags = {m["name"]: m for m in server.json("GET", "/api/tags")[1]["models"]}
    assert tags["bot:latest"]["details"]["parent_model"] == "tiny" and "tiny:f32" in tags
    assert "bot" in {m["id"] for m in server.json("GET", "/v1/models")[1]["data"]}
    assert server.json("GET", "/v1/models/bot")[0] == 200
    status, show = server.json("POST", "/api/show", {"model": "bot:latest"})
    assert status == 200 and show["system"] == "Be terse." and show["details"]["parent_model"] == "tiny"
    assert "FROM tiny" in show["modelfile"] and 'PARAMETER stop "zz"' in show["modelfile"]
    assert show["parameters"].splitlines()[0].split() == ["num_predict", "3"]
    assert show["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]

    # The model's num_predict under Ollama's and OpenAI's defaults; a request's own value over it.
    _, r = server.json("POST", "/api/chat", {"model": "bot", "messages": HELLO, "stream": False})
    assert r["eval_count"] == 3 and r["model"] == "bot"
    _, r = server.json("POST", "/api/chat", {"model": "bot", "messages": HELLO, "stream": False,
                                             "options": {"num_predict": 5, "stop": []}})
    assert r["eval_count"] == 5
    _, r = server.json("POST", "/v1/chat/completions", {"model": "bot", "messages": HELLO})
    assert r["usage"]["completion_tokens"] == 3
    # The few-shot turns and the system prompt are in the prompt: more tokens than the bare model's.
    _, bare = server.json("POST", "/api/chat", {"model": "tiny", "messages": HELLO, "stream": False,
                                                "options": {"num_predict": 1}})
    assert r["usage"]["prompt_tokens"] > bare["prompt_eval_count"]

    assert server.request("POST", "/api/copy", {"source": "bot", "destination": "bot2"})[0] == 200
    assert server.json("POST", "/api/show", {"model": "bot2"})[1]["system"] == "Be terse."
    status, err = server.json("DELETE", "/api/delete", {"model": "tiny"})
    assert status == 409 and "tiny is the base of bot" in err["error"]
    for name in ("bot2", "bot"):
        assert server.request("DELETE", "/api/delete", {"model": name})[0] == 200
    assert server.json("POST", "/api/show", {"model": "bot"})[0] == 404


def test_recreating_a_loaded_model_unloads_it(server):
    assert create(server, {"model": "re", "from": "tiny", "stream": False})[0] == 200
    server.json("POST", "/api/chat", {"model": "re", "messages": HELLO, "stream": False, "options": {"num_predict": 1}})
    assert "re" in [m["name"] for m in server.loaded()]
    assert create(server, {"model": "re", "from": "tiny", "system": "new", "stream": False})[0] == 200
    assert "re" not in [m["name"] for m in server.loaded()]
    server.request("DELETE", "/api/delete", {"model": "re"})


@pytest.mark.parametrize("body,status,words", [
    ({"from": "tiny"}, 400, "model is required"),
    ({"model": "x"}, 400, "from (a model name) or files"),
    ({"model": "../x", "from": "tiny"}, 400, "looks like a file path"),
    ({"model": "a b", "from": "tiny"}, 400, "invalid model name"),
    ({"model": "x", "from": "tiny", "modelfile": "FROM tiny"}, 400, "modelfile (Ollama's older form"),
    ({"model": "x", "from": "tiny", "files": {"a.gguf": "sha256:00"}}, 400, "give from or files, not both"),
    ({"model": "x", "files": {"a.gguf": "md5:00"}}, 400, "is not a digest"),
    ({"model": "x", "from": "tiny", "parameters": {"stop": 5}}, 400, "parameters.stop"),
    ({"model": "x", "from": "../../etc/passwd.gguf"}, 400, "outside the model store"),
    ({"model": "x", "from": "/tmp/elsewhere.gguf"}, 400, "outside the model store"),
    ({"model": "x", "from": "models/../../x.gguf"}, 400, "outside the model store"),
    ({"model": "x", "from": "tiny", "parameters": {"temperature": "hot"}}, 400, "temperature must be a number"),
    ({"model": "x", "from": "tiny", "parameters": {"num_gpu": 1}}, 400, "num_gpu is Ollama's"),
    ({"model": "x", "from": "tiny", "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0]"),
    ({"model": "x", "from": "tiny", "quantize": "q4_0"}, 400, "quantize is not supported"),
    ({"model": "x", "from": "nosuch"}, 404, "FROM nosuch"),
    ({"model": "x", "from": "tiny", "adapters": {"a.gguf": "sha256:" + "0" * 64}}, 400, "Upload the file first"),
    ({"model": "x", "from": "tiny", "template": "### Q: {{ .Prompt }}"}, 400, "FORMAT NAME"),
])
def test_bad_create_requests(server, home, body, status, words):
    got, data = create(server, body)
    assert got == status and words in json.loads(data)["error"], data
    assert not (home / "created" / "x.json").exists()


def test_a_path_inside_the_store_is_allowed(server, home):
    rel = next((home / "models" / "tiny").glob("*.gguf")).relative_to(home)
    assert create(server, {"model": "inside", "from": str(rel), "stream": False})[0] == 200
    server.request("DELETE", "/api/delete", {"model": "inside"})


def test_the_ollama_client_creates_from_uploaded_blobs(server, tiny_llama, tmp_path):
    ol = ollama.Client(host=server.url)
    lora = write_tiny_lora(tmp_path / "style.gguf", tiny_llama).path
    digest = ol.create_blob(tiny_llama)  # HEAD, then POST /api/blobs/sha256:...
    assert server.request("HEAD", f"/api/blobs/{digest}")[0] == 200
    adapter = ol.create_blob(lora)
    done = list(ol.create(model="styled", files={"tiny.gguf": digest}, adapters={"style.gguf": adapter},
                          system="S", stream=True))
    assert done[-1].status == "success" and any("LoRA r=4" in p.status for p in done)
    assert "SYSTEM S" in ol.show("styled").modelfile
    r = ol.chat(model="styled", messages=HELLO, options={"num_predict": 2, "temperature": 0})
    assert r.eval_count == 2
    ol.delete("styled")
    bad = hashlib.sha256(b"other").hexdigest()
    status, _, data = server.request("POST", f"/api/blobs/sha256:{bad}", b"these bytes")
    assert status == 400 and "digest mismatch" in json.loads(data)["error"]
    assert server.request("HEAD", f"/api/blobs/sha256:{bad}")[0] == 404
    assert server.request("HEAD", "/api/blobs/nonsense")[0] == 400


def test_a_mismatched_adapter_is_refused(server, tiny_llama, tmp_path):
    ol = ollama.Client(host=server.url)
    wrong = write_tiny_lora(tmp_path / "phi.gguf", tiny_llama, arch="phi2").path
    with pytest.raises(ollama.ResponseError) as exc:
        ol.create(model="w", from_="tiny", adapters={"phi.gguf": ol.create_blob(wrong)})
    assert exc.value.status_code == 400 and "is for phi2 models" in exc.value.error


def test_allow_paths(home, tiny_llama):
    with Server(home, "--ctx", "128", "--threads", "1", "--allow-paths") as s:
        status, data = create(s, {"model": "outside", "from": str(tiny_llama), "stream": False})
        assert status == 200, data
        assert s.request("DELETE", "/api/delete", {"model": "outside"})[0] == 200
