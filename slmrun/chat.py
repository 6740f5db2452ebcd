"""Prompt formats and conversation state; no terminal I/O.

A GGUF's own chat template is code (Jinja2): it renders in a bounded worker process
(slmrun/template_sandbox.py), in jinja2's immutable sandbox. Models without one use a
``PromptFormat`` (slmrun/prompt_formats.py: named, from the registry, or inferred);
rendering with neither is ``ChatFormatError``, never a silent fallback to an
unrelated format (ChatSession falls back to plain completion, and says so).
"""

from __future__ import annotations

from .errors import ChatFormatError, InvalidArgumentError, SlmrunError
from .prompt_formats import render, stop_strings

ROLES = ("system", "user", "assistant")


def validate_messages(messages) -> list[dict]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InvalidArgumentError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise InvalidArgumentError(
                f"message #{i} must be a dict with role in {ROLES} and string content, got {m!r}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def render_template(template: str, messages: list[dict], *, bos: str = "", eos: str = "",
                    add_generation_prompt: bool = True) -> str:
    """Render a GGUF chat template in the sandbox; ChatTemplateError (naming the model
    file when ``template`` is a template_sandbox.ChatTemplate) if it fails or is stopped."""
    from .template_sandbox import output_limit, sandbox

    size = sum(len(m["content"].encode("utf-8", "surrogatepass")) for m in messages)
    variables = {"messages": messages, "add_generation_prompt": add_generation_prompt,
                 "bos_token": bos, "eos_token": eos}
    return sandbox().render(template, variables, limit=output_limit(getattr(template, "n_ctx", None), size),
                            origin=getattr(template, "origin", None))


def render_format(fmt, messages: list[dict], *, bos: str = "", eos: str = "",
                  add_generation_prompt: bool = True) -> str:
    """Render a PromptFormat: each turn through its template, then the generation cue."""
    return render(fmt, messages, bos=bos, eos=eos, add_generation_prompt=add_generation_prompt)


def render_prompt(messages, *, template: str | None, fmt, bos: str = "", eos: str = "",
                  add_generation_prompt: bool = True) -> tuple[str, tuple[str, ...]]:
    """(prompt text, extra stop strings) for a conversation."""
    messages = validate_messages(messages)
    if template:
        return render_template(template, messages, bos=bos, eos=eos,
                               add_generation_prompt=add_generation_prompt), ()
    if fmt is not None:
        return (render_format(fmt, messages, bos=bos, eos=eos, add_generation_prompt=add_generation_prompt),
                stop_strings(fmt, bos=bos, eos=eos))
    raise ChatFormatError("this model has no chat template, and no prompt format was named or inferred")


# --- conversation state -------------------------------------------------------------

class Conversation:
    """A system prompt and alternating user/assistant turns; JSON round-trips."""

    def __init__(self, system: str | None = None, turns: list[dict] | None = None):
        self.system = system
        self.turns: list[dict] = list(turns or [])

    def messages(self, pending_user: str | None = None) -> list[dict]:
        out = [{"role": "system", "content": self.system}] if self.system else []
        out += self.turns
        if pending_user is not None:
            out.append({"role": "user", "content": pending_user})
        return out

    def add(self, role: str, content: str) -> None:
        self.turns.append({"role": role, "content": content})

    def clear(self) -> None:
        self.turns.clear()

    def to_json(self) -> dict:
        return {"system": self.system, "messages": self.turns}

    @classmethod
    def from_json(cls, data) -> "Conversation":
        if isinstance(data, list):  # a bare list of messages
            data = {"messages": data}
        if not isinstance(data, dict):
            raise InvalidArgumentError("a saved conversation must be a JSON object with 'messages'")
        msgs = validate_messages(data.get("messages") or [{"role": "user", "content": ""}])
        system = data.get("system")
        turns = [m for m in msgs if m["role"] != "system" and (m["content"] or m["role"] == "assistant")]
        system = system or next((m["content"] for m in msgs if m["role"] == "system"), None)
        return cls(system=system, turns=turns)


def fit_history(messages: list[dict], count_tokens, *, n_ctx: int, reserve: int,
                quantum: int = 0) -> tuple[list[dict], int]:
    """Drop the oldest turns until the prompt plus ``reserve`` reply tokens fit ``n_ctx``.

    The system prompt and the newest message always stay. Returns (messages, turns dropped).
    ``count_tokens(messages)`` gives the rendered prompt's length in tokens.

    ``quantum`` > 0 cuts in steps of about that many tokens instead of one turn at a time:
    the cut is the first one at or past the needed one whose offset into the conversation
    (its content's characters / 4, about tokens: a function of the history alone, and no
    rendering) reaches a multiple of ``quantum``. The
    history only grows at the end, so the same cut is chosen turn after turn until the
    conversation grows by ~``quantum`` more tokens, and the kept prompt keeps its prefix:
    the KV cache serves it (as llama.cpp's context shift discards a block at a time)
    instead of a re-evaluation of the whole context every turn once it is full.
    """
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system):]
    # Where the kept turns may start: whole exchanges (user + assistant) go together so
    # roles keep alternating. A shorter tail never renders longer, so the first cut that
    # fits is found by bisection: a long history (a server's clients resend all of it)
    # costs log(turns) renderings, not one per turn dropped.
    cuts = [0]
    while len(rest) - cuts[-1] > 1:
        i = cuts[-1]
        cuts.append(i + (2 if len(rest) - i > 2 and rest[i]["role"] == "user"
                         and rest[i + 1]["role"] == "assistant" else 1))

    def fits(k: int) -> bool:
        return count_tokens(system + rest[cuts[k]:]) + reserve <= n_ctx

    lo, hi = 0, len(cuts) - 1  # the last cut keeps only the newest message: kept even if too long
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    if quantum > 0 and lo > 0:
        offsets, total = [], 0  # content before each cut, in ~tokens: fixed once written
        for k in range(len(cuts)):
            offsets.append(total // 4)
            if k + 1 < len(cuts):
                total += sum(len(str(m.get("content") or "")) for m in rest[cuts[k]:cuts[k + 1]])
        step = -(-offsets[lo] // quantum) * quantum
        lo = next((k for k in range(lo, len(cuts) - 1) if offsets[k] >= step), lo)
    return system + rest[cuts[lo]:], cuts[lo]


class ChatSession:
    """A conversation bound to a loaded model: trimming, KV-cache reuse, partial replies.

    Follow-up turns reuse the KV cache: the rendered conversation only grows at the
    end, so llama.cpp evaluates just the new text (see Stats.cached_tokens).
    """

    def __init__(self, model, *, system: str | None = None, **params):
        self.model = model
        # A created model's SYSTEM and PARAMETERs hold unless the caller gives its own.
        self.conversation = Conversation(system)
        own = getattr(model, "defaults", None) or {}
        self.params = {k: v for k, v in params.items() if v is not None}
        if "max_tokens" not in self.params and "max_tokens" not in own:
            self.params["max_tokens"] = 512
        self.last = None  # the last reply's Response
        self.dropped_total = 0
        self.last_dropped = 0  # turns dropped to fit the context by the last send()

    def _drop(self, dropped: int) -> None:
        """Forget the ``dropped`` oldest turns, left out of the prompt to fit the context."""
        if dropped:
            del self.conversation.turns[:dropped]
            self.dropped_total += dropped
        self.last_dropped = dropped

    @property
    def plain(self) -> bool:
        """No chat template and no prompt format: the turns are continued as plain text."""
        return not self.model.has_chat_format

    @staticmethod
    def plain_text(messages: list[dict]) -> str:
        return "\n".join(m["content"] for m in messages)

    def count_tokens(self, messages: list[dict]) -> int:
        if self.plain:
            return len(self.model.tokenize(self.plain_text(messages), special=False))
        return len(self.model.chat_tokens(messages))

    def send(self, text: str):
        """Send ``text`` and return the reply's Response (iterate it to stream).

        The reply is recorded in the history when it ends; a cancelled one (Ctrl-C) as far
        as a reader took it, so the history always matches what the user saw.
        """
        if self.last is not None and not self.last.done:
            try:  # one exchange at a time: the history must be complete first
                self.last.wait()
            except SlmrunError:  # that reply failed; its error was the caller's to see
                pass
        if getattr(self.model, "fits_history", False):  # a server's model: the server drops old turns
            messages, dropped = self.conversation.messages(text), 0  # by this rule; record() learns how many
        else:
            n_ctx = self.model.n_ctx
            reserve = min(self.params.get("max_tokens") or 256, n_ctx // 4)
            messages, dropped = fit_history(self.conversation.messages(text), self.count_tokens,
                                            n_ctx=n_ctx, reserve=reserve, quantum=n_ctx // 4)
        self._drop(dropped)
        if self.plain:
            response = self.model.complete(self.plain_text(messages), **self.params)
        else:
            response = self.model.chat(messages, **self.params)
        self.conversation.add("user", text)
        reply = {"role": "assistant", "content": ""}
        self.conversation.turns.append(reply)

        def record(r) -> None:
            reply["content"] = r.seen_text if r.cancelled else r.text_so_far
            self._drop(getattr(r, "history_dropped", 0))

        response.add_done_callback(record)
        self.last = response
        return response
