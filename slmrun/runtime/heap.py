"""glibc's heap: handing freed memory back to the OS, and capping its arenas.

Linux/glibc only; elsewhere (musl, macOS) each function is a no-op.
"""

from __future__ import annotations

import ctypes
import sys


def return_freed_heap() -> None:
    """Hand the heap llama.cpp just freed back to the OS. glibc keeps freed arenas for reuse,
    so a server that loads and unloads models grows by ~0.4 MB a cycle without this
    (benchmarks/SERVER.md); with it RSS stays flat. Linux/glibc only; elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        pass


def limit_malloc_arenas(n: int = 2) -> bool:
    """Cap glibc's malloc arenas (M_ARENA_MAX) for a long-running process whose models load
    and close on many threads (the server's workers, a new engine thread each load). glibc
    gives each thread its own arena, up to 8 per core, and each keeps its high-water mark:
    a server loading and unloading the default model grew ~0.12 MB a cycle that way, a
    plain loop 0.006 (benchmarks/SERVER.md). Call before the threads start; True if set.
    Linux/glibc only (MALLOC_ARENA_MAX in the environment does the same)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL(None).mallopt(-8, int(n)))  # M_ARENA_MAX, malloc.h
    except (OSError, AttributeError):
        return False
