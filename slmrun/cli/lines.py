"""Texts read from the command line in chunks: bounded memory, output streamed per chunk."""

from __future__ import annotations


def chunks(items, n: int):
    """``items`` (any iterable, stdin's lines too, read lazily) in lists of at most ``n``."""
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
