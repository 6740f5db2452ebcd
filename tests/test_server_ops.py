"""Operating `slmrun serve` on tiny models: /health, /metrics, the API key, the body cap,
CORS, refusing to expose itself, the memory budget and LRU unloads, history trimming,
`slmrun ps` / `slmrun stop`, and /api/pull from a local stand-in hub."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import slmrun_cmd  # noqa: E402
from serverutil import Server, server_env, store_model  # noqa: E402

openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")

HELLO = [{"role": "user", "content": "hello world"}]
ARGS = ("--ctx", "256", "--parallel", "2", "--threads", "1")


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_llama, tiny_llama_plain):
    home = tmp_path_factory.mktemp("serve-ops")
    store_model(home, tiny_llama, "tiny")
    store_model(home, tiny_llama, "twin")  # the same file under another name: a second model
    store_model(home, tiny_llama_plain, "plain")
    return home


@pytest.fixture(scope="module")
def server(home):
    with Server(home, "-m", "tiny", *ARGS) as s:
        yield s


def test_health(server):
    status, body = server.json("GET", "/health")
    assert status == 200 and body == {"status": "ok", "loaded": ["tiny:f32"], "loading": []}


def test_health_is_503_with_the_reason_when_a_model_could_not_load(home):
    with Server(home, "-m", "tiny", "--memory", "1M", *ARGS, wait_healthy=False) as s:
        body = s.wait_for(lambda: (lambda r: r[1] if r[0] == 503 and r[1]["status"] == "error" else None)(
            s.json("GET", "/health")), what="the failed load to show")
        assert "tiny:f32 needs about" in body["errors"]["tiny"] and "budget is 1.0 MiB" in body["errors"]["tiny"]
        status, body = s.json("POST", "/v1/chat/completions", {"model": "tiny", "messages": HELLO})
        assert status == 507 and body["error"]["code"] == "insufficient_memory"
        assert "--memory" in body["error"]["message"]


def test_metrics_count_requests_tokens_and_time_to_first_token(server):
    from prometheus_client.parser import text_string_to_metric_families

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    done = [client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=n, temperature=0)
            for n in (3, 5)]
    server.wait_for(lambda: "slmrun_generated_tokens_total{model=\"tiny:f32\"} 8" in server.get("/metrics")[2].decode(),
                    what="the counters")  # the engine's done-callback runs just after the reply
    status, headers, data = server.get("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    families = list(text_string_to_metric_families(data.decode()))  # Prometheus' own parser
    samples = [s for f in families for s in f.samples]

    def value(name, **labels):
        return next(s.value for s in samples if s.name == name and s.labels == labels)

    assert value("slmrun_prompt_tokens_total", model="tiny:f32") >= sum(r.usage.prompt_tokens for r in done)
    assert value("slmrun_generations_total", model="tiny:f32", finish_reason="length") >= 2
    assert value("slmrun_http_requests_total", path="/v1/chat/completions", status="200") >= 2
    assert value("slmrun_time_to_first_token_seconds_count", model="tiny:f32") >= 2
    assert value("slmrun_time_to_first_token_seconds_bucket", model="tiny:f32", le="+Inf") >= 2
    assert {f.type for f in families if f.name.startswith("slmrun_time_to_first")} == {"histogram"}
    assert value("slmrun_slots", model="tiny:f32") == 2 and value("slmrun_slots_busy", model="tiny:f32") == 0
    assert value("slmrun_queue_depth", model="tiny:f32") == 0 and value("slmrun_models_loaded") >= 1
    assert value("process_resident_memory_bytes") > 10 << 20


# --- keys, bodies, origins -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def locked(home):
    with Server(home, "-m", "tiny", *ARGS, "--api-key", "s3cret-key", "--cors", "http://app.example",
                "--max-body", "2K") as s:
        yield s


def test_the_api_key_is_required_except_for_the_page_and_health(locked):
    status, _, data = locked.post("/v1/chat/completions", {"messages": HELLO})
    assert status == 401 and json.loads(data)["error"]["code"] == "invalid_api_key"
    status, _, data = locked.post("/api/chat", {"model": "tiny", "messages": HELLO},
                                  headers={"Authorization": "Bearer wrong"})
    assert status == 401 and json.loads(data) == {"error": "the API key is not valid"}
    assert locked.get("/metrics")[0] == 401
    assert locked.get("/health")[0] == 200 and locked.get("/")[0] == 200
    good = openai.OpenAI(base_url=locked.url + "/v1", api_key="s3cret-key", max_retries=0)
    assert good.chat.completions.create(model="tiny", messages=HELLO, max_tokens=2).usage.completion_tokens == 2
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=locked.url + "/v1", api_key="s3cret-kex", max_retries=0).models.list()
    ol = ollama.Client(host=locked.url, headers={"Authorization": "Bearer s3cret-key"})
    assert ol.generate(model="tiny", prompt="x", options={"num_predict": 1}).done


def test_bodies_over_the_cap_are_413(locked):
    auth = {"Authorization": "Bearer s3cret-key"}
    status, _, data = locked.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 3000}]},
                                  headers=auth)
    assert status == 413 and "over the server's limit of 2048 bytes" in json.loads(data)["error"]["message"]
    # Without a Content-Length (chunked), the cap holds while reading.
    u = urlsplit(locked.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "y" * 3000}]}).encode()
    conn.request("POST", "/api/chat", body=iter([body[:1000], body[1000:]]), headers=auth, encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 413 and "over the server's limit" in json.loads(r.read())["error"]
    conn.close()


def test_cors_only_for_the_origin_given(locked, server):
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    status, headers, _ = locked.request("OPTIONS", "/v1/chat/completions", headers=preflight)
    assert status == 200 and headers["access-control-allow-origin"] == "http://app.example"
    status, headers, _ = locked.request("OPTIONS", "/v1/chat/completions",
                                        headers={**preflight, "Origin": "http://evil.example"})
    assert status == 400 and "access-control-allow-origin" not in {k.lower() for k in headers}
    status, headers, _ = locked.request("GET", "/health", headers={"Origin": "http://app.example"})
    assert headers["access-control-allow-origin"] == "http://app.example"
    # A server started without --cors answers no browser from elsewhere.
    status, headers, _ = server.request("OPTIONS", "/v1/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in {k.lower() for k in headers}
    status, headers, _ = server.request("GET", "/health", headers={"Origin": "http://app.example"})
    assert status == 200 and "access-control-allow-origin" not in {k.lower() for k in headers}


@pytest.mark.parametrize("args, message", [
    (["--host", "0.0.0.0"], "would let anyone who reaches this machine use it without a key"),
    (["--host", "::"], "without a key"),
    (["-m", "/tmp/model.gguf"], "looks like a file path"),
    (["-m", "nothing-such"], "unknown model 'nothing-such'"),
    (["--keep-alive", "soon"], "cannot read 'soon' as a duration"),
    (["--port", "70000"], "--port must be from 0 to 65535"),
    (["--parallel", "0"], "--parallel must be at least 1"),
    (["--max-body", "lots"], "Not a size"),
])
def test_serve_refuses_bad_settings_before_listening(home, args, message):
    r = subprocess.run([*slmrun_cmd(), "serve", *args], env=server_env(home), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert "slmrun serve on" not in r.stderr


def test_a_taken_port_is_a_clear_error(home, server):
    port = str(urlsplit(server.url).port)
    r = subprocess.run([*slmrun_cmd(), "serve", "--port", port], env=server_env(home), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr and "--port" in r.stderr


# --- several models -------------------------------------------------------------------------------

def test_models_load_on_first_use_and_the_least_recently_used_makes_room(home, server):
    one = next(m["size"] for m in server.loaded() if m["name"] == "tiny:f32")
    budget = f"{int(one * 1.5)}"  # room for one tiny model, not two
    with Server(home, *ARGS, "--memory", budget) as s:
        assert s.loaded() == []  # nothing named with -m: nothing loaded yet
        ol = ollama.Client(host=s.url)
        ol.generate(model="tiny", prompt="x", options={"num_predict": 1})
        assert [m["name"] for m in s.loaded()] == ["tiny:f32"]
        ol.generate(model="twin", prompt="x", options={"num_predict": 1})
        assert [m["name"] for m in s.loaded()] == ["twin:f32"]
        assert "unloading tiny:f32 to make room for twin:f32" in s.log
    with Server(home, *ARGS, "--memory", str(3 * one)) as s:
        ol = ollama.Client(host=s.url)
        for name in ("tiny", "twin"):
            ol.generate(model=name, prompt="x", options={"num_predict": 1})
        assert sorted(m["name"] for m in s.loaded()) == ["tiny:f32", "twin:f32"]  # they fit together


def test_keep_alive_default_unloads_idle_models(home):
    with Server(home, *ARGS, "--keep-alive", "1s") as s:
        ollama.Client(host=s.url).generate(model="tiny", prompt="x", options={"num_predict": 1})
        ps = s.loaded()
        assert ps[0]["slmrun"]["keep_alive"] == "1s"
        s.wait_for(lambda: s.loaded() == [], timeout=20, what="the idle model to leave /api/ps")
        s.wait_for(lambda: "unloaded tiny:f32" in s.log, timeout=20, what="its memory to be freed")


def test_a_long_chat_is_trimmed_to_the_context_not_refused(server):
    """Clients resend the whole history; past the context the oldest turns drop out."""
    u = urlsplit(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)  # one connection, as a chat client keeps
    messages = [{"role": "system", "content": "You are a test."}]
    dropped_seen = 0
    for turn in range(60):
        messages.append({"role": "user", "content": f"turn {turn} hello world the"})
        conn.request("POST", "/v1/chat/completions", json.dumps({"model": "tiny", "messages": messages,
                                                                 "max_tokens": 4, "temperature": 0}),
                     {"Content-Type": "application/json"})
        r = conn.getresponse()
        body = json.loads(r.read())
        assert r.status == 200, body
        assert body["usage"]["prompt_tokens"] + 4 <= 256
        dropped_seen = max(dropped_seen, int(r.getheader("X-Slmrun-Dropped-Messages") or 0))
        messages.append(body["choices"][0]["message"])
    conn.close()
    assert dropped_seen > 50  # the system prompt stayed; dozens of old turns did not


# --- the command line's view of a server -------------------------------------------------------

def test_slmrun_ps_and_stop(home, server):
    env = {**server_env(home), "SLMRUN_HOST": server.url}

    def cli(*args):
        return subprocess.run([*slmrun_cmd(), *args], env=env, capture_output=True, text=True, timeout=60)

    ollama.Client(host=server.url).generate(model="plain", prompt="x", raw=True, options={"num_predict": 1})
    r = cli("ps")
    assert r.returncode == 0 and r.stdout.split()[:6] == ["NAME", "SIZE", "CONTEXT", "SLOTS", "QUEUE", "UNTIL"]
    assert "tiny:f32" in r.stdout and "forever" in r.stdout and "plain:f32" in r.stdout and "minutes" in r.stdout
    assert json.loads(cli("ps", "--json").stdout)[0]["context_length"] == 256
    r = cli("stop", "plain")
    assert r.returncode == 0 and r.stdout.strip() == "stopped plain:f32"
    assert "plain:f32" not in cli("ps").stdout
    r = cli("stop", "plain")
    assert r.returncode == 3 and "plain is not loaded" in r.stderr and "tiny:f32" in r.stderr
    r = subprocess.run([*slmrun_cmd(), "ps"], env={**env, "SLMRUN_HOST": "127.0.0.1:9"}, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 15 and "no slmrun server at http://127.0.0.1:9" in r.stderr and "slmrun serve" in r.stderr


# --- /api/pull -----------------------------------------------------------------------------------------

def test_pull_streams_progress_from_slmruns_verified_pull(tmp_path, home):
    from hubserver import HubServer
    from test_pull import BIG, REPO, model_toml, sha, write_gguf

    data = write_gguf(tmp_path / BIG, pad=100_000, seed=2)
    registry = tmp_path / "registry.toml"
    registry.write_text(model_toml("fakehub-tiny", [dict(quant="F32", repo=REPO, filename=BIG, size=len(data),
                                                         sha256=sha(data)),
                                                    dict(quant="Q8_0", repo=REPO, filename=BIG, size=len(data),
                                                         sha256="0" * 64)]))
    pull_home = tmp_path / "home"
    with HubServer({REPO: {BIG: data}}) as hub:
        hub.delay_per_chunk = 0.05  # ~1.3 s for the file: long enough to see it grow
        env = {"SLMRUN_REGISTRY": str(registry), "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0",
               "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        with Server(pull_home, *ARGS, env=env) as s:
            ol = ollama.Client(host=s.url)
            events = list(ol.pull("fakehub-tiny:f32", stream=True))
            statuses = [e.status for e in events]
            assert statuses[0] == "pulling manifest" and statuses[-3:] == ["verifying sha256 digest",
                                                                         "writing manifest", "success"]
            progress = [e for e in events if e.total]
            assert len(progress) >= 2 and progress[-1].completed == progress[-1].total == len(data)
            assert all(a.completed <= b.completed for a, b in zip(progress, progress[1:]))
            assert progress[0].digest == f"sha256:{sha(data)}"
            assert "fakehub-tiny:f32" in {m.model for m in ol.list().models}
            assert ol.pull("fakehub-tiny:f32", stream=False).status == "success"  # already here
            with pytest.raises(ollama.ResponseError) as e:  # the registry pins another hash: nothing is stored
                list(ol.pull("fakehub-tiny:q8_0", stream=True))
            assert "SHA-256" in e.value.error
            with pytest.raises(ollama.ResponseError) as e:
                ol.pull("not-in-registry")
            assert e.value.status_code == 404
            with pytest.raises(ollama.ResponseError) as e:
                ol.pull("../../etc")
            assert e.value.status_code == 400 and "looks like a file path" in e.value.error
