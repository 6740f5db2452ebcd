"""Prompt formats and conversation state; no terminal I/O.

A GGUF's own chat template is code (Jinja2): it is rendered in an immutable sandbox,
as llama-cpp-python has done since CVE-2024-34359. Models without one use the
registry's declared ``PromptFormat``; a model with neither gets ``ChatFormatError``,
never a silent fallback to an unrelated format.
"""

from __future__ import annotations

from functools import lru_cache

from .errors import ChatFormatError, InvalidArgumentError

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


@lru_cache(maxsize=16)
def _compile(template: str):
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template)
    except TemplateError as exc:
        raise ChatFormatError(f"the model's chat template does not compile: {exc}") from None


def render_template(template: str, messages: list[dict], *, bos: str = "", eos: str = "",
                    add_generation_prompt: bool = True) -> str:
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError

    try:
        return _compile(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         bos_token=bos, eos_token=eos)
    except SecurityError as exc:
        raise ChatFormatError(f"the model's chat template tried something unsafe: {exc}") from None
    except (TemplateError, TypeError, ValueError) as exc:
        raise ChatFormatError(f"the model's chat template failed: {exc}") from None


def render_format(fmt, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
    """Render a registry PromptFormat: each turn through its template, then the generation cue."""
    parts = [getattr(fmt, m["role"]).replace("{content}", m["content"]) for m in messages]
    if add_generation_prompt:
        parts.append(fmt.generation)
    return "".join(parts)


def render_prompt(messages, *, template: str | None, fmt, bos: str = "", eos: str = "",
                  add_generation_prompt: bool = True) -> tuple[str, tuple[str, ...]]:
    """(prompt text, extra stop strings) for a conversation."""
    messages = validate_messages(messages)
    if template:
        return render_template(template, messages, bos=bos, eos=eos,
                               add_generation_prompt=add_generation_prompt), ()
    if fmt is not None:
        return render_format(fmt, messages, add_generation_prompt=add_generation_prompt), tuple(fmt.stop)
    raise ChatFormatError("this model has no chat template and no prompt format in the registry")


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


def fit_history(messages: list[dict], count_tokens, *, n_ctx: int, reserve: int) -> tuple[list[dict], int]:
    """Drop the oldest turns until the prompt plus ``reserve`` reply tokens fit ``n_ctx``.

    The system prompt and the newest message always stay. Returns (messages, turns dropped).
    ``count_tokens(messages)`` gives the rendered prompt's length in tokens.
    """
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system):]
    dropped = 0
    while len(rest) > 1 and count_tokens(system + rest) + reserve > n_ctx:
        # Drop a whole exchange (user + assistant) so roles keep alternating.
        cut = 2 if len(rest) > 2 and rest[0]["role"] == "user" and rest[1]["role"] == "assistant" else 1
        rest = rest[cut:]
        dropped += cut
    return system + rest, dropped


class ChatSession:
    """A conversation bound to a loaded model: trimming, KV-cache reuse, partial replies.

    Follow-up turns reuse the KV cache: the rendered conversation only grows at the
    end, so llama.cpp evaluates just the new text (see Stats.cached_tokens).
    """

    def __init__(self, model, *, system: str | None = None, **params):
        self.model = model
        self.conversation = Conversation(system)
        self.params = {"max_tokens": 512, "temperature": 0.8, "top_p": 0.95, "top_k": 40, "seed": None}
        self.params.update({k: v for k, v in params.items() if v is not None})
        self.last: object = None  # the last Completion
        self.last_dropped = 0  # turns the last send() dropped to fit the context
        self.dropped_total = 0

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
        """Stream the reply to ``text``; the generator's return value is the Completion.

        The reply (even a partial one, if the caller stops early or Ctrl-C arrives) is
        recorded, so the history always matches what the user saw.
        """
        n_ctx = self.model.n_ctx
        reserve = min(self.params.get("max_tokens") or 256, n_ctx // 4)
        messages, dropped = fit_history(self.conversation.messages(text), self.count_tokens,
                                        n_ctx=n_ctx, reserve=reserve)
        if dropped:
            del self.conversation.turns[:dropped]
            self.dropped_total += dropped
        self.last_dropped = dropped
        if self.plain:
            gen = self.model.stream(self.plain_text(messages), **self.params)
        else:
            gen = self.model.chat(messages, stream=True, **self.params)
        pieces: list[str] = []
        completion = None
        try:
            while True:
                piece = next(gen)
                pieces.append(piece)
                yield piece
        except StopIteration as stop:
            completion = stop.value
        finally:
            self.conversation.add("user", text)
            self.conversation.add("assistant", "".join(pieces))
            self.last = completion
        return completion
