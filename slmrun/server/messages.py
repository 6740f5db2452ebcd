"""Chat messages of both APIs in the engine's terms (pure): text parts joined, tool turns
written as text the model reads, images refused."""

from __future__ import annotations

import json

from ..errors import InvalidArgumentError


def bad(field_name: str, rule: str, value=None) -> InvalidArgumentError:
    shown = "" if value is None else f", got {value!r}"
    return InvalidArgumentError(f"{field_name} must be {rule}{shown}")



def _text_content(content, where: str) -> str:
    """OpenAI's content: a string, null, or a list of parts of which only text is served here."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind in ("image_url", "input_image", "input_audio", "file"):
                raise InvalidArgumentError(f"{where}: {kind} content is not supported: the models served here "
                                           "read text only", hint="Send the message as text.")
            else:
                raise bad(f"{where} content parts", 'objects like {"type": "text", "text": "..."}', part)
        return "\n".join(texts)
    raise bad(f"{where}.content", "a string or a list of text parts", content)


def tool_call_text(name: str, arguments) -> str:
    """How a tool call the assistant made reads in the prompt of the next turn."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)


def chat_messages(messages, *, api: str) -> list[dict]:
    """Chat messages of either API -> the engine's {"role", "content"} list. Tool turns become
    text the model can read: the assistant's calls as the JSON it is constrained to, a tool's
    result as a user turn naming the tool. OpenAI's content may be a list of text parts and
    its "developer" role is the system's; Ollama's images are refused (text models here)."""
    openai = api == "openai"
    if not isinstance(messages, list) or (openai and not messages):
        raise bad("messages", "a non-empty list" if openai else "a list",
                   None if isinstance(messages, list) else messages)
    roles = ("system", "developer", "user", "assistant", "tool") if openai else ("system", "user", "assistant", "tool")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(where, "an object with role and content", m)
        if not openai and m.get("images"):
            raise InvalidArgumentError(f"{where}: images are not supported: the models served here read text only")
        role = m.get("role")
        if role not in roles:
            raise bad(f"{where}.role", "one of " + ", ".join(roles), role)
        if openai:
            text = _text_content(m.get("content"), where)
        elif m.get("content") is not None and not isinstance(m.get("content"), str):
            raise bad(f"{where}.content", "a string", m.get("content"))
        else:
            text = m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            calls = m["tool_calls"]
            if not isinstance(calls, list):
                raise bad(f"{where}.tool_calls", "a list", calls)
            parts = [text] if text else []
            for call in calls:
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise bad(f"{where}.tool_calls", 'items like {"function": {"name", "arguments"}}', call)
                parts.append(tool_call_text(fn["name"], fn.get("arguments")))
            text = "\n".join(parts)
        if role == "tool":
            role, text = "user", f"Tool result{_tool_label(m)}:\n{text}"
        out.append({"role": "system" if role == "developer" else role, "content": text})
    return out


def _tool_label(m: dict) -> str:
    name = m.get("name") or m.get("tool_name") or m.get("tool_call_id")
    return f" ({name})" if isinstance(name, str) and name else ""
