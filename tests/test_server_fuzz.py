"""The fuzz suite: bad requests, generated from the bodies slmrun.server.schema declares
(tests/fuzzing.py), against a real `slmrun serve` on loopback with a tiny model, for every
route it serves. Every answer is below 500, in the API's own error shape, free of this
machine's paths, and the server still answers a good request afterwards.

Bounded for `make test`: a fixed number of examples per route, derandomized (the same
requests on every run), no deadline. benchmarks/fuzz.py runs the same generator for longer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings

sys.path.insert(0, str(Path(__file__).parent))
from fuzzing import ROUTES, bad_body, check_answer, forbidden_paths, junk_request, served_routes  # noqa: E402
from serverutil import Server, store_model  # noqa: E402

EXAMPLES = 60  # per route with a body; routes without one get a third of that
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=False,
                phases=(Phase.explicit, Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck))


SERVED = served_routes()
ACTIVE = [r for r in ROUTES if (r.method, r.path) in SERVED]


def test_every_route_the_server_serves_is_fuzzed():
    """A route added without a line in fuzzing.ROUTES (its body, a good request) fails here."""
    assert SERVED <= {(r.method, r.path) for r in ROUTES}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_llama):
    home = tmp_path_factory.mktemp("fuzz-home")
    store_model(home, tiny_llama, "tiny")
    with Server(home, "-m", "tiny", "--ctx", "256", "--parallel", "2", "--threads", "1") as s:
        s.forbidden = forbidden_paths(home, tiny_llama.parent, Path(__file__).parent.parent)
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def send(client, method: str, path: str, body: bytes | None):
    r = client.request(method, path, content=body, headers={"Content-Type": "application/json"})
    return r.status_code, r.headers.get("content-type", ""), r.content


def still_good(client, route) -> None:
    """The route's good request gets its usual answer."""
    import json

    path = route.path.format(**route.extra)
    status, _, data = send(client, route.method, path, json.dumps(route.good).encode() if route.good else None)
    assert status == route.good_status, data[:500]


@pytest.mark.parametrize("route", [r for r in ACTIVE if r.body], ids=lambda r: f"{r.method} {r.path}")
def test_bad_bodies(server, client, route):
    seen = []

    @FUZZ
    @given(bad_body(route))
    def one(data: bytes) -> None:
        status, kind, answer = send(client, route.method, route.path, data)
        seen.append(status)
        problem = check_answer(route, status, kind, answer, server.forbidden)
        assert problem is None, f"{problem}\nrequest: {data[:500]!r}"
        assert client.get("/health").status_code == 200

    one()
    assert any(400 <= s < 500 for s in seen)  # the generator does reach the checks
    still_good(client, route)


@pytest.mark.parametrize("route", [r for r in ACTIVE if not r.body], ids=lambda r: f"{r.method} {r.path}")
def test_junk_requests(server, client, route):
    @settings(FUZZ, max_examples=EXAMPLES // 3)
    @given(junk_request(route))
    def one(request) -> None:
        method, path, body = request
        status, kind, answer = send(client, method, path, body)
        problem = check_answer(route, status, kind, answer, server.forbidden)
        assert problem is None, f"{problem}\nrequest: {method} {path[:200]} {(body or b'')[:300]!r}"

    one()
    still_good(client, route)


LONG = "x" * 5000


@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": [1, 2]}, "max_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": "😀" * 99},
     "max_completion_tokens"),
    ("/v1/chat/completions", {"model": LONG, "messages": [{"role": "user", "content": "hi"}]}, "model"),
    ("/api/chat", {"model": LONG, "messages": [{"role": "user", "content": "hi"}]}, None),
    ("/api/show", {"model": LONG}, None),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                              "response_format": {"type": "json_schema", "json_schema": {"name": "deep", "schema":
                                                  __import__("fuzzing").deep_schema("properties", 95)}}},
     None),
])
def test_the_requests_the_issue_reported(server, client, path, body, param):
    """Each was a 500 (a TypeError, an OSError naming the store's path, a RecursionError)."""
    import json

    status, _, data = send(client, "POST", path, json.dumps(body).encode())
    answer = json.loads(data)
    assert status == 400, answer
    assert not any(p in data.decode() for p in server.forbidden)
    if path.startswith("/v1"):
        assert answer["error"]["param"] == param and answer["error"]["type"] == "invalid_request_error"
    else:
        assert "invalid model name" in answer["error"] and len(answer["error"]) < 300


def test_the_fuzzing_left_no_bug_in_the_log(server):
    assert "internal error" not in server.log and "Traceback" not in server.log
