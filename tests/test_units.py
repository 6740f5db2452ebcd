"""The one size formatter (every size slmrun prints goes through units.format_bytes) and its inverse."""

from __future__ import annotations

import pytest

from slmrun.units import GiB, KiB, MiB, format_bytes, parse_size


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (1023, "1023 B"), (KiB, "1.0 KiB"), (1536 * MiB, "1.5 GiB"), (98_362_432, "93.8 MiB"),
    (150 * MiB, "150 MiB"), (99.96 * MiB, "100 MiB"), (-2 * GiB, "-2.0 GiB"), (3 << 40, "3072 GiB"),
])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_unknown_sizes():
    assert format_bytes(None) == "?" and format_bytes(None, unknown="-") == "-"


@pytest.mark.parametrize("n", [1, 1000, 4 * GiB, 1536 * MiB, 7 * KiB])
def test_what_is_printed_parses_back(n):
    text = format_bytes(n).replace(" ", "")
    assert abs(parse_size(text) - n) <= 0.05 * n + 1

