"""Chat messages of both APIs (validated by schema.py) in the engine's terms (pure): text
parts joined, tool turns written as text the model reads, images refused."""

from __future__ import annotations

import json

from .schema import RequestError, bad

_NOT_TEXT = ("image_url", "input_image", "input_audio", "file")


def _text_content(content, where: str) -> str:
    """OpenAI's content: a string, null, or a list of parts of which only text is served here."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for i, part in enumerate(content):
        if part.type == "text" and part.text is not None:
            texts.append(part.text)
        elif part.type in _NOT_TEXT:
            raise RequestError(f"{where}: {part.type} content is not supported: the models served here read text only",
                               param=f"{where}.content[{i}]", hint="Send the message as text.")
        else:
            raise bad(f"{where}.content[{i}]", 'an object like {"type": "text", "text": "..."}',
                      part.model_dump(exclude_none=True))
    return "\n".join(texts)


def tool_call_text(name: str, arguments) -> str:
    """How a tool call the assistant made reads in the prompt of the next turn."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            pass
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)


def chat_messages(messages: list, *, api: str) -> list[dict]:
    """schema.ChatMessage / OllamaMessage list -> the engine's {"role", "content"} list. Tool
    turns become text the model can read: the assistant's calls as the JSON it is constrained
    to, a tool's result as a user turn naming the tool. OpenAI's content may be a list of text
    parts and its "developer" role is the system's; Ollama's images are refused (text models)."""
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if api == "ollama" and m.images:
            raise RequestError(f"{where}: images are not supported: the models served here read text only",
                               param=f"{where}.images")
        role = m.role
        text = _text_content(m.content, where) if api == "openai" else (m.content or "")
        if role == "assistant" and m.tool_calls:
            parts = [text] if text else []
            parts += [tool_call_text(c.function.name, c.function.arguments) for c in m.tool_calls]
            text = "\n".join(parts)
        if role == "tool":
            role, text = "user", f"Tool result{_tool_label(m)}:\n{text}"
        out.append({"role": "system" if role == "developer" else role, "content": text})
    return out


def _tool_label(m) -> str:
    name = getattr(m, "name", None) or getattr(m, "tool_name", None) or getattr(m, "tool_call_id", None)
    return f" ({name})" if name else ""
