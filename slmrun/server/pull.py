"""/api/pull: slmrun's own verified pull (api.pull, in a worker thread) reported as
Ollama's progress events. The bytes on disk are the progress: the staging directory's
growing file is measured twice a second, so the download code needs no hook."""

from __future__ import annotations

import asyncio
from pathlib import Path

POLL_S = 0.5


def _largest_file(directory: Path) -> int:
    best = 0
    try:
        for p in directory.rglob("*"):
            try:
                if p.is_file():
                    best = max(best, p.stat().st_size)
            except OSError:  # gone between the listing and the stat: the fetch moved on
                pass
    except OSError:
        pass
    return best


def _target(ref: str):
    """(registry entry, quant, file) the pull will fetch; raises for unknown names (404)."""
    from ..api import choose_quant
    from ..registry import load_registry

    entry, quant = load_registry().resolve(ref)
    quant = quant or choose_quant(entry)
    return entry, quant, entry.file(quant)


async def pull_events(ref: str, *, on_done=None):
    """Ollama's pull statuses as dicts; an error is the last event ({"error", "_status"})."""
    from .. import api, config
    from .http import message_of, status_of

    entry, quant, file = await asyncio.to_thread(_target, ref)
    yield {"status": "pulling manifest"}
    staging = config.home() / "partial" / entry.name
    digest = f"sha256:{file.sha256}" if file.sha256 else file.filename
    total = file.size or 0
    loop = asyncio.get_running_loop()
    job = loop.run_in_executor(None, lambda: api.pull(f"{entry.name}:{quant.lower()}", progress=False))
    reported = -1
    try:
        while True:
            done, _ = await asyncio.wait({job}, timeout=POLL_S)
            if done:
                break
            have = min(_largest_file(staging), total) if total else _largest_file(staging)
            if have != reported:
                reported = have
                yield {"status": f"pulling {file.filename}", "digest": digest, "total": total, "completed": have}
        stored = job.result()
    except Exception as exc:
        status, _, _ = status_of(exc)
        yield {"error": message_of(exc), "_status": status}
        return
    finally:
        if on_done is not None:
            on_done()
    yield {"status": f"pulling {file.filename}", "digest": digest, "total": stored.size, "completed": stored.size}
    yield {"status": "verifying sha256 digest"}
    yield {"status": "writing manifest"}
    yield {"status": "success"}
