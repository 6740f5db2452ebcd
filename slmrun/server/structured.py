"""response_format / Ollama's format and tools, for both APIs: what the engine is asked to
enforce (slmrun.structured compiles it; llguidance masks every token), and how its text
becomes the API's message.

Tool calls are generated, not hoped for: the model is told about the tools in a system
message, and decoding is constrained to ``{"name": TOOL, "arguments": {...}}`` with the
arguments constrained to that tool's JSON Schema, so even a 135M model without tool
training returns calls that parse and validate.

``tool_choice`` "auto" is one grammar with two branches, ``call | text``: a reply that
starts with "{" is a tool call (constrained from its first token on), anything else is
free text. The model's own first-token preference decides, in the same single pass as any
reply (no second request to ask it "tool or text?"); the text branch may not start with
"{", so the choice is made at the first token and a text reply streams as usual.
"required" (or naming a tool) constrains the whole reply to a call.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from ..errors import InvalidArgumentError
from .translate import Call

# The JSON layout of generated calls: one line, ", " and ": " (what slmrun.structured uses
# for schemas, and what the model then sees of its own earlier calls in the history).
LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def call_schema(tool: dict) -> dict:
    """A call of ``tool``: its name first (llguidance generates properties in order), then
    arguments valid under its parameters schema."""
    return {"type": "object", "properties": {"name": {"const": tool["name"]}, "arguments": tool["parameters"]},
            "required": ["name", "arguments"], "additionalProperties": False}


def calls_schema(tools: list[dict]) -> dict:
    return call_schema(tools[0]) if len(tools) == 1 else {"anyOf": [call_schema(t) for t in tools]}


def tools_prompt(tools: list[dict], *, forced: bool) -> str:
    lines = ["You can use these tools:"]
    for t in tools:
        lines.append(json.dumps({"name": t["name"], "description": t["description"], "parameters": t["parameters"]},
                                ensure_ascii=False))
    call = 'reply with only a JSON object: {"name": "<tool name>", "arguments": {<its arguments>}}.'
    if forced:
        lines.append(f"Call one of them now: {call}")
    else:
        lines.append(f"If one of them helps answer, {call} Otherwise reply in plain text.")
    return "\n".join(lines)


def with_system(messages: list[dict], text: str) -> list[dict]:
    """``text`` in the system message (first, merged with one already there: many chat
    templates take a single system message, at the start)."""
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + text}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def auto_grammar(tools: list[dict]) -> str:
    """``call | text``: a tool call (JSON under the tools' schemas) or text not starting with "{"."""
    schema = {**calls_schema(tools), "x-guidance": LAYOUT}
    return ("start: call | text\n"
            f"call: %json {json.dumps(schema, ensure_ascii=False)}\n"
            "text: /[^{\\s][\\s\\S]*/\n")


@dataclass
class Plan:
    mode: str = "text"  # "text", "json" (response_format), "call" (a tool call is required), "auto"
    params: dict = field(default_factory=dict)  # json_schema= / grammar= / json_object= for the engine
    tools: list[dict] = field(default_factory=list)
    _calls: object = None  # the ConstraintSpec a call's JSON is validated against

    def prepare(self, call: Call) -> None:
        """Tell the model about the tools (in the messages the engine renders)."""
        if self.tools and call.messages is not None:
            call.messages = with_system(call.messages, tools_prompt(self.tools, forced=self.mode == "call"))

    def is_call(self, text: str) -> bool:
        return self.mode == "call" or (self.mode == "auto" and text.lstrip().startswith("{"))

    def message(self, text: str, finish_reason: str) -> tuple[dict, str]:
        """(the assistant's message, OpenAI's finish_reason)."""
        if not self.tools or not self.is_call(text) or finish_reason == "length":
            # A call cut by max_tokens is no call: its text goes back as it is, marked "length".
            return {"role": "assistant", "content": text}, finish_reason
        from ..structured import parse_json

        value = parse_json(text, self._calls, finish_reason=finish_reason)
        calls = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                  "function": {"name": value["name"],
                               "arguments": json.dumps(value["arguments"], ensure_ascii=False)}}]
        return {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"


async def stream_text(response, plan: Plan):
    """The pieces of a reply to stream as text; none for a tool call, which goes out whole
    once its arguments are complete (a client cannot use half a call). Under "auto" the
    first piece tells which it is."""
    if plan.mode == "call":
        await response
        return
    pieces = response.__aiter__()
    if plan.mode == "auto":
        first = await anext(pieces, None)
        if first is None:
            return
        if plan.is_call(first):
            await response
            return
        yield first
    async for piece in pieces:
        yield piece


def plan_for(call: Call) -> Plan:
    """What to constrain ``call`` to; refuses (400) what cannot be enforced before any model work."""
    from ..structured import constraint_spec

    fmt = call.response_format
    if call.tools:
        if call.messages is None:
            raise InvalidArgumentError("tools work with chat requests only")
        tools = call.tools
        choice = call.tool_choice
        if isinstance(choice, dict):  # one named tool
            tools = [t for t in tools if t["name"] == choice["name"]]
        mode = "auto" if choice == "auto" else "call"
        calls_spec = constraint_spec(json_schema=calls_schema(tools))  # checks every tool's schema now
        if mode == "call":
            params = {"json_schema": calls_schema(tools)}
        else:
            params = {"grammar": auto_grammar(tools)}
            constraint_spec(grammar=params["grammar"])
        plan = Plan(mode=mode, params=params, tools=tools, _calls=calls_spec)
    elif fmt is None:
        plan = Plan()
    elif fmt["type"] == "json_object":
        plan = Plan(mode="json", params={"json_object": True})
    else:
        constraint_spec(json_schema=fmt["schema"])  # an invalid or unsupported schema is a 400 now
        plan = Plan(mode="json", params={"json_schema": fmt["schema"]})
    plan.prepare(call)
    return plan


def capabilities() -> list[str]:
    """What /api/show says a served model can do (Ollama's names): tool calls are enforced
    by the grammar, so every model here can make them."""
    return ["completion", "tools"]
