"""ServedModel: generations by a running `slmrun serve`, through Ollama's streaming API
(/api/chat, and /api/generate with raw: true), returned as the runtime's ``Response``.

The same Response a loaded model gives (the same iteration, ``check()``, ``cancel()``,
callbacks and Stats), fed by a reader thread from the NDJSON stream; the server puts the
engine's Stats in the last line's ``slmrun`` field. ``cancel()`` closes the connection:
the server sees the client go and frees the slot, as for any client.
"""

from __future__ import annotations

import json
import threading
import time

from .. import config
from ..errors import GenerationError, InvalidArgumentError, SlmrunError
from ..runtime.response import Response, ResponseState, Stats  # (no llama_cpp: runtime/binding.py loads it late)

CONNECT_TIMEOUT = 10.0  # seconds to connect and for the headers; a reply then streams without a bound

# Model.chat's keywords -> Ollama's options (the server maps them back: server/translate.py)
OPTION_NAMES = {"max_tokens": "num_predict", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                "min_p": "min_p", "seed": "seed", "stop": "stop", "repeat_penalty": "repeat_penalty",
                "repeat_last_n": "repeat_last_n", "presence_penalty": "presence_penalty",
                "frequency_penalty": "frequency_penalty", "dry_multiplier": "dry_multiplier",
                "dry_base": "dry_base", "dry_allowed_length": "dry_allowed_length",
                "dry_penalty_last_n": "dry_penalty_last_n", "speculative": "speculative"}


class ServerAnswerError(Exception):
    """The server answered with an error status (``status``) or a body that is no JSON."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


def _headers() -> dict:
    headers = {"Content-Type": "application/json"}
    key = config.api_key()
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def _connection(address: tuple[str, int], timeout: float):
    import http.client

    return http.client.HTTPConnection(*address, timeout=timeout)


def base_url(address: tuple[str, int]) -> str:
    host, port = address
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _error_text(data: bytes, reason: str = "") -> str:
    """The message of an error body, in either API's shape ({"error": "..."} or {"error":
    {"message": ...}}); the status's reason when the body has none."""
    try:
        error = json.loads(data).get("error")
    except (ValueError, AttributeError):
        return reason or data.decode("utf-8", "replace")[:200]
    if isinstance(error, dict):
        error = error.get("message")
    return str(error) if error else reason


def request_json(address: tuple[str, int], method: str, path: str, body: dict | None = None, *,
                 timeout: float) -> dict:
    """One request to a running server, its JSON answer ({} for an empty one). Raises
    ServerAnswerError for a status other than 2xx, OSError when the server cannot be reached."""
    conn = _connection(address, timeout)
    try:
        conn.request(method, path, json.dumps(body).encode() if body is not None else None, headers=_headers())
        resp = conn.getresponse()
        data = resp.read()
        if not 200 <= resp.status < 300:
            raise ServerAnswerError(resp.status, _error_text(data, resp.reason))
        return json.loads(data or b"{}")
    finally:
        conn.close()


def request_body(key: str, params: dict, *, messages: list | None = None, prompt: str | None = None) -> dict:
    """The Ollama request for a Model.chat (``messages``) or Model.complete (``prompt``) call.
    Pure; refuses a keyword the API cannot carry (the caller should have loaded locally)."""
    options, fmt = {}, None
    for name, value in params.items():
        if name == "json_schema":
            fmt = json.loads(value) if isinstance(value, (str, bytes)) else value
        elif name == "json_object":
            fmt = "json" if value else fmt
        elif name in OPTION_NAMES:
            if name == "max_tokens" and value is None:
                value = -1  # to the end of the context
            options[OPTION_NAMES[name]] = value
        else:
            raise InvalidArgumentError(f"{name} cannot be sent to a server",
                                       hint="Load the model here instead (--no-server).")
    body = {"model": key, "stream": True, "options": options}
    if fmt is not None:
        body["format"] = fmt
    if messages is not None:
        body["messages"] = messages
    else:
        body.update(prompt=prompt, raw=True)
    return body


def error_for(status: int, message: str, url: str) -> SlmrunError:
    """A server's refusal as the library's own error, saying where it came from."""
    from ..errors import ContextOverflowError, ModelNotFoundError, QueueFullError

    text = f"the server at {url} answered: {message}"
    hint = "`slmrun run --no-server` loads the model here instead."
    if status == 404:
        return ModelNotFoundError(text, hint=hint)
    if status in (429, 503):
        return QueueFullError(text, hint="Try again when the server is less busy, or " + hint[0].lower() + hint[1:])
    if status == 400 and "context" in message:
        return ContextOverflowError(text, hint=hint)
    if status == 400:
        return InvalidArgumentError(text, hint=hint)
    return GenerationError(text, hint=hint)


def stats_from(done: dict, t_start: float):
    """The engine's Stats from a stream's last line (its ``slmrun.stats``; else Ollama's fields)."""
    extra = (done.get("slmrun") or {}).get("stats") or {}
    known = set(Stats.__dataclass_fields__)
    stats = Stats(**{k: v for k, v in extra.items() if k in known})
    if not extra:  # another Ollama-shaped server: what its fields give
        n_prompt = done.get("prompt_eval_count", 0)
        stats = Stats(prompt_tokens=n_prompt, prompt_eval_tokens=n_prompt,
                      generated_tokens=done.get("eval_count", 0), prompt_s=done.get("prompt_eval_duration", 0) / 1e9,
                      gen_s=done.get("eval_duration", 0) / 1e9, total_s=time.perf_counter() - t_start)
    stats.load_s = done.get("load_duration", 0) / 1e9  # this request's wait for a load (0: it was loaded)
    return stats


class ServedModel:
    """A model a running `slmrun serve` has loaded, with the part of Model's interface the
    command line uses: ``chat``, ``complete``, ``name``, ``n_ctx``, ``defaults``."""

    has_chat_format = True  # the server renders the conversation with the model's own format
    placement = None
    fits_history = True  # the server drops the oldest turns itself (server/generation.py), by the same rule

    def __init__(self, address: tuple[str, int], *, key: str, n_ctx: int, defaults: dict | None = None):
        self.address, self.key, self.name, self.n_ctx = address, key, key, n_ctx
        self.defaults = dict(defaults or {})

    @property
    def url(self) -> str:
        return base_url(self.address)

    def chat(self, messages, **params):
        return self._start("/api/chat", request_body(self.key, params, messages=list(messages)), params)

    def complete(self, prompt: str, **params):
        return self._start("/api/generate", request_body(self.key, params, prompt=prompt), params)

    def _start(self, path: str, body: dict, params: dict):
        spec = None
        if params.get("json_schema") is not None or params.get("json_object"):
            from ..structured import constraint_spec  # refused here as a loaded model refuses it

            spec = constraint_spec(json_schema=params.get("json_schema"), json_object=bool(params.get("json_object")))
        t0 = time.perf_counter()
        conn = _connection(self.address, CONNECT_TIMEOUT)
        try:
            conn.request("POST", path, json.dumps(body).encode(), headers=_headers())
            resp = conn.getresponse()
            if resp.status != 200:
                raise error_for(resp.status, _error_text(resp.read(), resp.reason), self.url)
            conn.sock.settimeout(None)  # between two pieces a reply may pause for as long as it needs
        except OSError as exc:
            conn.close()
            raise GenerationError(f"the server at {self.url} stopped answering ({exc})",
                                  hint="Check `slmrun ps`, or load the model here with --no-server.") from None
        except BaseException:
            conn.close()
            raise
        state = ResponseState(prompt_tokens=0)
        state.dropped = 0
        stream = _Stream(conn, resp, state, t0, self.url)
        response = ServedResponse(state, model_name=self.key, on_cancel=stream.cancel, spec=spec)
        threading.Thread(target=stream.read, name="slmrun-served", daemon=True).start()
        return response

    def close(self) -> None:
        """Nothing to free here: the server keeps the model for its other clients."""

    def __enter__(self) -> "ServedModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ServedModel {self.key} at {self.url}>"


class ServedResponse(Response):
    @property
    def history_dropped(self) -> int:
        """Oldest chat turns the server left out to fit its context (ChatSession drops them too)."""
        return self._s.dropped


class _Stream:
    """One reply's NDJSON lines -> the ResponseState the Response reads (its own thread)."""

    def __init__(self, conn, resp, state, t0: float, url: str):
        self.conn, self.resp, self.state, self.t0, self.url = conn, resp, state, t0, url

    def read(self) -> None:
        s = self.state
        try:
            for line in self.resp:
                if not line.strip():
                    continue
                obj = json.loads(line)
                if "error" in obj:
                    s.finish(None, error=error_for(500, _error_text(line), self.url))
                    return
                if obj.get("done"):
                    stats = stats_from(obj, self.t0)
                    s.dropped = int((obj.get("slmrun") or {}).get("dropped") or 0)
                    s.finish(obj.get("done_reason") or "stop", stats)
                    return
                piece = (obj.get("message") or {}).get("content") if "message" in obj else obj.get("response")
                if piece:
                    s.push(piece)
            raise EOFError("the stream ended before its last line")
        except Exception as exc:
            if s.cancel_requested:
                s.finish("cancelled", stats_from({}, self.t0))
            else:
                s.finish(None, error=GenerationError(f"the server at {self.url} broke off the reply ({exc})",
                                                     hint="Its log says why; --no-server loads the model here."))
        finally:
            self.conn.close()

    def cancel(self) -> None:
        """Close the connection under the reader: the server cancels the generation."""
        import socket

        sock = self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
