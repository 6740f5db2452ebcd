"""A created model's SYSTEM and MESSAGE turns around a conversation. Pure."""

from __future__ import annotations


def place(messages: list[dict], system: str | None, few_shot) -> list[dict]:
    """The conversation as the model sees it: a system message first (the request's own, if
    its first message is one, else the model's SYSTEM), then the model's few-shot turns, then
    the rest of the conversation. (Ollama puts the model's MESSAGEs before the request's own
    system message; here the system message stays first, where every chat format wants it.)"""
    if not system and not few_shot:
        return messages
    rest = list(messages)
    head = [rest.pop(0)] if rest and isinstance(rest[0], dict) and rest[0].get("role") == "system" else (
        [{"role": "system", "content": system}] if system else [])
    return head + [dict(m) for m in few_shot] + rest
