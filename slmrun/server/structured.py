"""response_format / Ollama's format and tools, for both APIs: what the engine is asked to
enforce and how its text becomes the API's message."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InvalidArgumentError
from .translate import Call


@dataclass
class Plan:
    params: dict = field(default_factory=dict)  # extra keyword arguments for Model.chat / complete
    buffered: bool = False  # the reply is sent whole at the end (a tool call), not streamed as text

    def message(self, text: str, finish_reason: str) -> tuple[dict, str]:
        """(the assistant's message, OpenAI's finish_reason)."""
        return {"role": "assistant", "content": text}, finish_reason


def plan_for(call: Call) -> Plan:
    if call.response_format is not None or call.tools:
        what = "tools" if call.tools else "response_format / format"
        raise InvalidArgumentError(f"{what} needs structured output, which this build of slmrun does not have yet",
                                   hint="Leave it out for a free-text reply.")
    return Plan()


def capabilities() -> list[str]:
    """What /api/show says a served model can do (Ollama's names)."""
    return ["completion"]
