"""Bad requests for every route of `slmrun serve`, generated with hypothesis from the bodies
slmrun.server.schema declares, and the checks every answer must pass. Shared by
tests/test_server_fuzz.py (a bounded run in `make test`) and benchmarks/fuzz.py (a long one).

A body starts as the route's good request; hypothesis then changes one to three of its
declared fields (nested ones too: ``messages[0].content``, ``options.temperature``) to a
wrong type, a number just past the declared range or far past any, a huge string, a path,
a value nested hundreds deep, or removes it; or it corrupts the encoded bytes (invalid
UTF-8, a lone surrogate, a cut). Routes without a body get junk bodies, query strings and
the wrong methods. Every answer must be below 500, an error in the API's own shape, free of
this machine's paths; the good request must still work afterwards.
"""

from __future__ import annotations

import json
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st
from pydantic import BaseModel

from slmrun.server import schema as S

HELLO = [{"role": "user", "content": "hello"}]


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # "{name}" stands for a path parameter
    body: type[S.Body] | None = None  # what schema.py declares for it
    good: dict | None = None  # a request that must succeed (200) on the fuzz server
    api: str = "ollama"  # whose error shape: "openai" ({"error": {...}}) or "ollama" ({"error": "..."})
    good_status: int = 200
    extra: dict = field(default_factory=dict)


# Every route the server serves (test_server_fuzz checks that none is missing); the ones
# other work adds are listed ahead, and are fuzzed from the day they are served.
ROUTES = [
    Route("POST", "/v1/chat/completions", S.ChatCompletionRequest,
          {"model": "tiny", "messages": HELLO, "max_tokens": 4, "temperature": 0}, "openai"),
    Route("POST", "/v1/completions", S.CompletionRequest, {"model": "tiny", "prompt": "hello", "max_tokens": 4},
          "openai"),
    Route("POST", "/v1/embeddings", S.EmbeddingsRequest, {"model": "tiny", "input": "hello"}, "openai"),
    # /v1/rerank and llama-server's three other paths for it (one handler; each fuzzed, as served)
    *(Route("POST", path, S.RerankRequest, {"model": "tiny", "query": "hello", "documents": ["a", {"text": "b"}],
                                            "top_n": 1, "return_documents": True}, "openai")
      for path in ("/v1/rerank", "/rerank", "/v1/reranking", "/reranking")),
    Route("GET", "/v1/models", api="openai"),
    Route("GET", "/v1/models/{name}", api="openai", good_status=200, extra={"name": "tiny:f32"}),
    Route("POST", "/api/chat", S.OllamaChatRequest,
          {"model": "tiny", "messages": HELLO, "stream": False, "options": {"num_predict": 4}}),
    Route("POST", "/api/generate", S.GenerateRequest,
          {"model": "tiny", "prompt": "hello", "stream": False, "options": {"num_predict": 4}}),
    Route("POST", "/api/show", S.NamedRequest, {"model": "tiny"}),
    # Nothing here may be deleted, copied or fetched for real: these good requests are
    # refused as a 404 (a name not in the store, or not in the registry).
    Route("DELETE", "/api/delete", S.NamedRequest, {"model": "not-here"}, good_status=404),
    Route("POST", "/api/pull", S.PullRequest, {"model": "not-in-any-registry", "stream": False}, good_status=404),
    Route("POST", "/api/copy", S.CopyRequest, {"source": "not-here", "destination": "copy"}, good_status=404),
    Route("POST", "/api/create", S.CreateRequest, {"model": "created", "from": "not-here"}, good_status=404),
    # A file sent for /api/create: its body is the file's bytes, not JSON; the good request is
    # the empty file under its own digest (201: stored).
    Route("POST", "/api/blobs/{name}", good_status=201,
          extra={"name": "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}),
    Route("POST", "/api/embed", S.EmbedRequest, {"model": "tiny", "input": "hello"}),
    Route("POST", "/api/embeddings", S.LegacyEmbeddingsRequest, {"model": "tiny", "prompt": "hello"}),
    Route("GET", "/api/tags"),
    Route("GET", "/api/ps"),
    Route("GET", "/api/version"),
    Route("GET", "/health", api="slmrun"),
    Route("GET", "/metrics", api="slmrun"),
    Route("GET", "/", api="slmrun"),
    Route("GET", "/favicon.ico", api="slmrun", good_status=204),
]


def served_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, path parameters written "{name}"."""
    import re

    from starlette.routing import Route as StarletteRoute

    from slmrun.server import Settings
    from slmrun.server.app import create_app

    out = set()
    for r in create_app(Settings()).routes:
        if isinstance(r, StarletteRoute):
            for method in sorted((r.methods or {"GET"}) - {"HEAD"}):
                out.add((method, re.sub(r"\{[^}]*\}", "{name}", r.path)))
    return out


# --- the fields a body declares ---------------------------------------------------------------------

def _unwrap(annotation):
    """The BaseModel class(es) an annotation holds: Optional[X], list[X], Annotated[X, ...]."""
    out = []
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    for a in args:
        if not isinstance(a, (str, int, float)):  # Literal values, metadata
            out += _unwrap(a)
    return out


def _is_list(annotation) -> bool:
    origin = typing.get_origin(annotation)
    if origin is list:
        return True
    return any(_is_list(a) for a in typing.get_args(annotation) if not isinstance(a, (str, int, float)))


def field_paths(model: type[BaseModel], good: Any, prefix: tuple = ()) -> list[tuple[tuple, Any]]:
    """(path, FieldInfo) of every declared field, into nested models (the first item of a list
    of models, the way the good body has it, or a fresh object)."""
    out = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        path = prefix + (key,)
        out.append((path, info))
        for sub in _unwrap(info.annotation)[:1]:
            if _is_list(info.annotation):
                out += field_paths(sub, None, path + (0,))
            else:
                out += field_paths(sub, None, path)
    return out


def _bounds(info) -> list:
    """Numbers just past the field's declared range (and far past any)."""
    out = []
    for m in info.metadata:
        for attr, step in (("ge", -1), ("gt", 0), ("le", 1), ("lt", 0)):
            v = getattr(m, attr, None)
            if isinstance(v, (int, float)):
                out += [v + step, v + step * 0.5 if isinstance(v, float) else v + step]
    for a in typing.get_args(info.annotation):  # Optional[Annotated[int, Field(...)]]
        for m in getattr(a, "__metadata__", ()):
            for attr, step in (("ge", -1), ("gt", 0), ("le", 1), ("lt", 0)):
                v = getattr(m, attr, None)
                if isinstance(v, (int, float)):
                    out.append(v + step)
    return out


MISSING = object()
PATHS = ["../../../etc/passwd", "/etc/passwd", "~/.ssh/id_rsa", "..", "a/b", "C:\\Windows\\win.ini", "x.gguf"]


def nested(depth: int, leaf=1):
    value: Any = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


def deep_schema(kind: str, depth: int) -> dict:
    """A JSON Schema nested ``depth`` times through one keyword (what recursive checkers choke on)."""
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"properties": {"type": "object", "properties": {"a": schema}}, "items": {"type": "array",
                  "items": schema}, "anyOf": {"anyOf": [schema, {"type": "null"}]}, "not": {"not": schema}}[kind]
    return schema


deep_schemas = st.tuples(st.sampled_from(["properties", "items", "anyOf", "not"]),
                         st.integers(10, 120)).map(lambda t: deep_schema(*t))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.sampled_from(
    [0, -1, 1, 2**31, 2**31 - 1, -2**31 - 1, 2**63, 2**64, -2**63 - 1, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1e308, -1e308, 0.5, -0.0, 1e-300]),
    st.text(max_size=40))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                   st.dictionaries(st.text(max_size=8), inner,
                                                                                   max_size=4)), max_leaves=8)
huge_strings = st.tuples(st.sampled_from(["x", "😀", "\x00", "a b", "\u202e", "../"]),
                         st.integers(1_000, 300_000)).map(lambda t: t[0] * (t[1] // len(t[0])))


def plausible(annotation):
    """Values of the declared type (in or near its range), so that bodies also get past the
    declaration and into what runs after it; None when there is no simple way to make one."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return json_values
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.one_of(st.integers(-3, 64), st.sampled_from([0, 1, 20, 256, 10_000]))
    if annotation is float:
        return st.one_of(st.floats(0, 2), st.sampled_from([0.0, 1.0, -0.5, 2.5]))
    if annotation is str:
        # never the served model's name: /api/delete would delete it
        return st.one_of(st.text(max_size=30), st.sampled_from(["other", "other:latest", "json", "auto", "text"]))
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin is typing.Annotated:
        return plausible(args[0])
    if origin in (typing.Union, types.UnionType):
        options = [o for o in (plausible(a) for a in args if a is not type(None)) if o is not None]
        return st.one_of(options) if options else None
    if origin is list:
        inner = plausible(args[0])
        return st.lists(inner, max_size=3) if inner is not None else None
    if origin is dict:
        return st.dictionaries(st.text(max_size=8), json_scalars, max_size=3)
    return None


def bad_value(info) -> st.SearchStrategy:
    wrong = st.one_of(json_values, st.sampled_from(_bounds(info) or [None]), huge_strings, st.sampled_from(PATHS),
                      st.integers(20, 400).map(nested), deep_schemas, st.just(MISSING))
    right = plausible(info.annotation)
    return wrong if right is None else st.one_of(right, wrong)


def _set(body, path: tuple, value) -> None:
    """body[path] = value (MISSING removes it); objects on the way are made when absent."""
    for i, key in enumerate(path[:-1]):
        if isinstance(key, int):
            if not isinstance(body, list) or not body:
                return  # nothing there to change
            body = body[0]
            continue
        if not isinstance(body, dict):
            return
        if not isinstance(body.get(key), (dict, list)):
            body[key] = [{}] if isinstance(path[i + 1], int) else {}
        body = body[key]
    last = path[-1]
    if isinstance(body, dict) and not isinstance(last, int):
        if value is MISSING:
            body.pop(last, None)
        else:
            body[last] = value
    elif isinstance(body, list) and body and isinstance(last, int):
        body[0] = None if value is MISSING else value


def dumps(body) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def bad_body(draw, route: Route) -> bytes:
    """The route's good body with one to three declared fields broken, or its bytes corrupted."""
    body = json.loads(json.dumps(route.good))
    paths = field_paths(route.body, route.good)
    for _ in range(draw(st.integers(1, 3))):
        path, info = draw(st.sampled_from(paths))
        _set(body, path, draw(bad_value(info)))
    data = dumps(body)
    how = draw(st.sampled_from(["as is"] * 6 + ["invalid utf-8", "lone surrogate", "cut", "not an object", "empty"]))
    if how == "invalid utf-8":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xc3"])) + data[at:]
    elif how == "lone surrogate":
        data = data.replace(b'"hello"', b'"hel\\ud800lo"', 1) if b'"hello"' in data else data + b'"\\udfff"'
    elif how == "cut":
        data = data[:draw(st.integers(0, max(0, len(data) - 1)))]
    elif how == "not an object":
        data = dumps(draw(st.one_of(json_scalars, st.lists(json_scalars, max_size=3))))
    elif how == "empty":
        data = draw(st.sampled_from([b"", b"  ", b"\n"]))
    return data


@st.composite
def junk_request(draw, route: Route) -> tuple[str, str, bytes | None]:
    """(method, path, body) for a route that takes no body: junk queries, bodies, methods."""
    path = route.path.format(**route.extra)
    if "{name}" in route.path:  # sent percent-encoded, as a client must (the raw ones are already encoded)
        name = draw(st.one_of(huge_strings.map(lambda s: quote(s[:5000], safe="")), st.sampled_from(
            ["..%2F..%2Fetc", "%00", "a%ZZ", "tiny:f32", "%F0%9F%98%80", "%ff%fe"]),
            st.text(max_size=60).map(lambda s: quote(s, safe=""))))
        path = route.path.format(name=name)
    query = draw(st.sampled_from(["", "?a=1", "?" + "x" * 5000, "?%ff=%fe", "?a=%00&a=2"]))
    method = draw(st.sampled_from([route.method] * 4 + ["POST", "PUT", "DELETE", "PATCH"]))
    body = draw(st.one_of(st.none(), st.just(b"\xff\xfe"), json_values.map(dumps)))
    return method, path + query, body


# --- what every answer must be --------------------------------------------------------------------

def forbidden_paths(*dirs) -> list[str]:
    """Paths of this machine no answer may contain."""
    out = {str(d) for d in dirs if d} | {os.path.realpath(str(d)) for d in dirs if d}
    out |= {os.path.expanduser("~") + os.sep, sys.prefix + os.sep}
    return sorted(p for p in out if len(p) > 1)


def check_answer(route: Route, status: int, content_type: str, data: bytes, forbidden: list[str]) -> str | None:
    """What is wrong with an answer (None: nothing)."""
    text = data.decode("utf-8", "replace")
    leak = next((p for p in forbidden if p in text), None)
    if leak:
        return f"the answer names a path of this machine ({leak}): {text[:300]}"
    if status >= 500:
        return f"status {status}: {text[:300]}"
    if status >= 400:
        try:
            body = json.loads(data)
        except ValueError:
            return f"status {status} without a JSON body: {text[:300]}"
        return error_shape_problem(route.api, body)
    # a 200 stream: its error events, if any, must be in the API's shape too
    if "event-stream" in content_type:
        for line in text.split("\n\n"):
            if line.startswith("data: {") and '"error"' in line:
                problem = error_shape_problem("openai", json.loads(line[6:]))
                if problem:
                    return problem
    elif "ndjson" in content_type:
        for line in text.splitlines():
            if '"error"' in line:
                problem = error_shape_problem("ollama", json.loads(line))
                if problem:
                    return problem
    return None


def error_shape_problem(api: str, body) -> str | None:
    if api == "openai":
        err = body.get("error") if isinstance(body, dict) else None
        if not (isinstance(err, dict) and isinstance(err.get("message"), str) and isinstance(err.get("type"), str)
                and "param" in err and "code" in err and set(body) == {"error"}):
            return f"not OpenAI's error shape: {str(body)[:300]}"
        if err["param"] is not None and not isinstance(err["param"], str):
            return f"param is not a string: {err['param']!r}"
        return None
    if not (isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str)):
        return f"not Ollama's error shape: {str(body)[:300]}"
    return None
