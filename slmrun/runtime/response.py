"""What a generation returns: ``Response``, its ``Stats``, and the text assembly of its tokens.

One object for every caller. Iterate it to stream text pieces as they are generated;
``.text``, ``.finish_reason`` and ``.stats`` wait for the end; ``.cancel()`` stops it and
frees its slot; ``await response`` and ``async for piece in response`` do the same for
asyncio. Pieces are kept, so a second iteration (or one started late) replays from the
start. The engine thread writes; any number of threads and event loops may read.
"""

from __future__ import annotations

import codecs
import threading
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence

from ..errors import SlmrunError


@dataclass
class Stats:
    prompt_tokens: int = 0  # tokens in the prompt
    generated_tokens: int = 0  # tokens produced (end-of-generation token not counted)
    load_s: float = 0.0  # time to load the model (same for every call on one Model)
    prompt_tps: float = 0.0  # prompt evaluation rate: this request's prompt tokens / prompt_s
    gen_tps: float = 0.0  # end-to-end generation rate: sampling, detokenising, streaming
    ttft_s: float = 0.0  # call to first piece of text (includes queue_s)
    prompt_eval_tokens: int = 0  # prompt tokens actually evaluated (the rest came from the KV cache)
    cached_tokens: int = 0  # prompt tokens reused from a slot's KV cache
    prompt_s: float = 0.0  # wall time of the decode steps that evaluated this request's prompt
    gen_s: float = 0.0  # first piece to the end
    total_s: float = 0.0  # call to the end
    queue_s: float = 0.0  # time waiting for a free slot
    slot: int = -1  # the sequence (slot) that served the request
    forced_tokens: int = 0  # of generated_tokens, those a grammar forced (appended without sampling)
    draft_tokens: int = 0  # speculative decoding: tokens drafted from the sequence's own n-grams
    accepted_tokens: int = 0  # ... of which the model agreed with (the rest cost a batch row each)

    def to_dict(self) -> dict:
        return asdict(self)


class TextAssembler:
    """Tokens to text pieces for one request: incremental UTF-8, stop strings, held-back tails.

    Text that could be the start of a stop string is held back until it cannot be, so a
    caller never sees a piece of a stop string.
    """

    def __init__(self, piece_of: Callable[[int], bytes], stops: Sequence[str], strip_leading: bool):
        self._piece_of = piece_of
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._strip = strip_leading
        self.text = ""
        self.emitted = 0

    def feed(self, token: int) -> tuple[str, bool]:
        """(text now safe to show, whether a stop string ended the reply)."""
        text = self.text + self._decoder.decode(self._piece_of(token))
        if self._strip and self.emitted == 0:
            text = text.lstrip()
        if self.stops:
            start = max(0, self.emitted - self._hold)
            cut = min((i for i in (text.find(s, start) for s in self.stops) if i >= 0), default=-1)
            if cut >= 0:
                self.text = text[:cut]
                return self._take(len(self.text)), True
            self.text = text
            return self._take(len(text) - self._hold), False
        self.text = text
        return self._take(len(text)), False

    def finish(self) -> str:
        """The held-back tail at the end of a reply that no stop string cut."""
        self.text += self._decoder.decode(b"", final=True)
        if self._strip and self.emitted == 0:
            self.text = self.text.lstrip()
        return self._take(len(self.text))

    def _take(self, ready: int) -> str:
        if ready <= self.emitted:
            return ""
        out = self.text[self.emitted:ready]
        self.emitted = ready
        return out


class ResponseState:
    """What the engine writes and readers wait on. The engine holds this, never the Response,
    so a Response nobody holds any more is collected, and its ``__del__`` frees the slot."""

    def __init__(self, prompt_tokens: int):
        self.cond = threading.Condition()
        self.pieces: list[str] = []
        self.done = False
        self.finish_reason: str | None = None
        self.stats = Stats(prompt_tokens=prompt_tokens)
        self.error: BaseException | None = None
        self.cancel_requested = False
        self.loops: list = []  # (loop, asyncio.Event) of async readers
        self.callbacks: list[Callable[[], None]] = []
        self.consumed = 0  # pieces handed to a reader: what a user has seen
        self.logprobs: list[dict] | None = None  # per token, when asked for
        self.tokens: list[int] = []  # the generated token ids
        self.score_rows: list = []  # scoring requests: the logits rows kept

    def push(self, piece: str) -> None:
        with self.cond:
            self.pieces.append(piece)
            self.cond.notify_all()
        self._wake_loops()

    def finish(self, reason: str | None, stats: Stats | None = None, error: BaseException | None = None) -> None:
        with self.cond:
            if self.done:
                return
            self.finish_reason = reason
            if stats is not None:
                self.stats = stats
            self.error = error
            self.done = True
            self.cond.notify_all()
            callbacks, self.callbacks = self.callbacks, []
        # Callbacks first: what they hand to an event loop (the server's lease release) is then
        # queued before the wake-up of the reader that sends the reply, so a client's next
        # request never finds the model still held by the request that just answered.
        try:
            for cb in callbacks:
                cb()
        finally:
            self._wake_loops()

    def _wake_loops(self) -> None:
        for loop, event in list(self.loops):
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop was closed under us
                pass


class Response:
    """One generation (see the module docstring). Created by ``Model.complete`` and ``Model.chat``."""

    def __init__(self, state: ResponseState, *, model_name: str, on_cancel: Callable[[], None], spec=None):
        self._s = state
        self._on_cancel = on_cancel
        self.model_name = model_name
        self.spec = spec  # the structured-output constraint it was generated under (ConstraintSpec), if any

    # --- state ---------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._s.done

    @property
    def cancelled(self) -> bool:
        return self._s.done and self._s.finish_reason == "cancelled"

    def cancel(self) -> None:
        """Stop generating and free the slot. Pieces already produced stay readable."""
        s = self._s
        with s.cond:
            if s.done or s.cancel_requested:
                return
            s.cancel_requested = True
        self._on_cancel()

    def add_done_callback(self, fn: Callable[["Response"], None]) -> None:
        """Call ``fn(response)`` once it ends (on the engine's thread, or now if it has ended)."""
        s = self._s
        with s.cond:
            if not s.done:
                s.callbacks.append(lambda: fn(self))
                return
        fn(self)

    def wait(self, timeout: float | None = None) -> "Response":
        """Block until the generation ends; raises what ended it if it failed."""
        s = self._s
        with s.cond:
            if not s.cond.wait_for(lambda: s.done, timeout):
                raise TimeoutError(f"the generation did not finish within {timeout} s")
        self._raise_error()
        return self

    def _raise_error(self) -> None:
        if self._s.error is not None:
            raise self._s.error

    # --- results (they wait for the end) ----------------------------------------------------
    @property
    def text(self) -> str:
        self.wait()
        return "".join(self._s.pieces)

    @property
    def finish_reason(self) -> str:
        """"stop" (end of generation or a stop string), "length" (max_tokens or the context), or "cancelled"."""
        self.wait()
        return self._s.finish_reason

    @property
    def stats(self) -> Stats:
        self.wait()
        return self._s.stats

    @property
    def tokens(self) -> list[int]:
        """The generated token ids."""
        self.wait()
        return list(self._s.tokens)

    @property
    def logprobs(self) -> list[dict] | None:
        """Per generated token {"token", "logprob"[, "top_logprobs"]}, when asked for with logprobs=True."""
        self.wait()
        return self._s.logprobs

    def json(self):
        """The reply as a JSON value, validated against the json_schema it was generated under.

        Raises StructuredOutputError when it is not JSON, does not validate, or was cut by
        max_tokens or the context before the value was complete (finish_reason "length")."""
        from ..structured import parse_json

        return parse_json(self.text, self.spec, finish_reason=self.finish_reason)

    def check(self) -> "Response":
        """Raise StructuredOutputError unless the reply is a complete value of its constraint:
        a JSON value that validates (see json()), or text a grammar finished; else return self."""
        from ..errors import StructuredOutputError

        if self.spec is not None and self.spec.is_json:
            self.json()
        elif self.spec is not None and self.finish_reason == "length":
            raise StructuredOutputError(
                f"the output stopped at max_tokens before the grammar was complete ({len(self.text)} characters)",
                hint="Raise max_tokens (-n), or make the grammar's answers shorter.")
        return self

    @property
    def text_so_far(self) -> str:
        return "".join(self._s.pieces)

    @property
    def seen_text(self) -> str:
        """The pieces readers have taken: what a user watching the stream saw."""
        return "".join(self._s.pieces[:self._s.consumed])

    # --- streaming ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[str]:
        s = self._s
        i = 0
        while True:
            with s.cond:
                s.cond.wait_for(lambda: i < len(s.pieces) or s.done)
                if i >= len(s.pieces):
                    break
                piece = s.pieces[i]
                s.consumed = max(s.consumed, i + 1)
            i += 1
            yield piece
        self._raise_error()

    async def __aiter__(self):
        s = self._s
        async with _AsyncReader(s) as event:
            i = 0
            while True:
                event.clear()
                if i < len(s.pieces):
                    s.consumed = max(s.consumed, i + 1)
                    yield s.pieces[i]
                    i += 1
                    continue
                if s.done:
                    break
                await event.wait()
        self._raise_error()

    def __await__(self):
        return self._wait_async().__await__()

    async def _wait_async(self) -> "Response":
        s = self._s
        async with _AsyncReader(s) as event:
            while not s.done:
                await event.wait()
                event.clear()
        self._raise_error()
        return self

    def __enter__(self) -> "Response":
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()

    def __del__(self):  # nobody can read it any more: free the slot
        try:
            self.cancel()
        except Exception:
            pass

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        s = self._s
        state = f"finish_reason={s.finish_reason!r}" if s.done else "running"
        return f"<Response {self.model_name} {state}, {len(s.pieces)} pieces>"


class _AsyncReader:
    """Registers an asyncio event the engine thread sets (thread-safely) on every change."""

    def __init__(self, state: ResponseState):
        self._s = state

    async def __aenter__(self):
        import asyncio

        self._entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._s.cond:
            self._s.loops.append(self._entry)
        return self._entry[1]

    async def __aexit__(self, *exc):
        with self._s.cond:
            self._s.loops.remove(self._entry)


def closed_error() -> SlmrunError:
    from ..errors import ModelClosedError
    return ModelClosedError("the model was closed while this request was running",
                            hint="Keep the model open until its requests finish (or cancel them first).")
