"""Byte sizes in and out: ``format_bytes`` for every size slmrun prints, ``parse_size`` for
the sizes a user types (``--ram 4G``). Binary units throughout, as RAM is sold.
"""

from __future__ import annotations

import re

from .errors import InvalidArgumentError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def format_bytes(n: int | float | None, *, unknown: str = "?") -> str:
    """1.5 GiB, 812 MiB, 93.8 MiB, 512 B; `unknown` for a size nobody knows (None)."""
    if n is None:
        return unknown
    n = float(n)
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if round(value, 1) < 100 else f"{value:.0f} {unit}"
    return f"{int(n)} B"


_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b?)\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """"4G", "512M", "1.5GiB", "2GB", "1024" -> bytes.

    K/M/G/T are always binary (1G = 2**30), with or without "i" or "B": memory is
    sold in binary sizes, and `--ram 4G` means a 4 GiB board. A bare number is bytes.
    """
    m = _SIZE.fullmatch(str(text))
    if not m or (m.group(3).lower().startswith("i") and not m.group(2)):
        raise InvalidArgumentError(f"Not a size: {text!r}.", hint='Use e.g. "4G", "512M", "1.5GiB" or bytes.')
    return int(round(float(m.group(1)) * (1 << 10 * " KMGT".index(m.group(2).upper() or " "))))
