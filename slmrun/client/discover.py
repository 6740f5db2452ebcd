"""Whether a running server may answer instead of a model of one's own, and finding it.

Decisions are pure functions (tested from tables); ``served_model`` does the looking: a
connect to SLMRUN_HOST first (a refused connect costs ~0.1 ms, so `slmrun run` with no
server pays nothing measurable), then who owns the listening socket (this user only),
then the store's name and SHA-256 against /api/ps.
"""

from __future__ import annotations

import os
import socket

ANY_HOST = ("0.0.0.0", "::", "")  # a server bound to every interface answers on loopback
LOOPBACK = ("localhost", "::1")

# Options that choose how a model is loaded, with the flag a user typed: a served model was
# loaded by the server's command line, so with any of these only a model of one's own gives
# the answer asked for. (--format json and sampling options travel with the request.)
LOAD_OPTIONS = (("no_server", "--no-server"), ("ctx", "--ctx"), ("threads", "--threads"), ("force", "--force"),
                ("rpc", "--rpc"), ("lora", "--lora"), ("chat_format", "--format"), ("grammar", "--grammar"))


def local_address(host: str, port: int) -> tuple[str, int] | None:
    """Where this machine reaches a server bound to (host, port); None for another machine's
    address (a served model is used only on this machine, where it is faster than a load
    for certain) or for port 0 (a port the server picks)."""
    h = host.strip().lower().strip("[]")
    if not 0 < port < 65536:
        return None
    if h in ANY_HOST:
        return ("::1" if h == "::" else "127.0.0.1", port)
    if h in LOOPBACK or h.startswith("127."):
        return h, port
    return None


def why_local(**given) -> str | None:
    """None when a served model may answer; else the first option that needs a model of
    one's own, as typed. ``chat_format`` is a prompt format's name ("json" is a request's)."""
    if str(given.get("chat_format") or "").strip().lower() == "json":
        given = {**given, "chat_format": None}
    for key, flag in LOAD_OPTIONS:
        if given.get(key) not in (None, False, "", [], ()):
            return flag
    return None


def listener_uids(tables, port: int) -> set[int]:
    """The user ids owning the sockets that listen on ``port``, from the text of Linux's
    /proc/net/tcp and /proc/net/tcp6 (state 0A is LISTEN; the port is hex after the colon).
    Pure."""
    uids = set()
    for text in tables:
        for line in text.splitlines()[1:]:
            f = line.split()
            if len(f) < 8 or f[3] != "0A":
                continue
            try:
                if int(f[1].rsplit(":", 1)[1], 16) == port:
                    uids.add(int(f[7]))
            except ValueError:
                continue
    return uids


def owned_by_me(port: int, *, named: bool) -> bool:
    """Whether the server on ``port`` is this user's own: another user's program on the same
    port would read the prompts and could answer anything. Linux tells the owner of a
    listening socket (/proc/net/tcp); where nothing tells, only an address the user named
    (SLMRUN_HOST set, ``named``) is trusted, as Ollama's clients trust OLLAMA_HOST."""
    tables = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                tables.append(f.read())
        except OSError:
            pass
    uids = listener_uids(tables, port) if tables else set()
    if not uids or not hasattr(os, "getuid"):  # another OS, or a namespace /proc does not show
        return named
    return uids == {os.getuid()}


def listening(address: tuple[str, int], timeout: float) -> bool:
    """Whether something accepts connections at ``address`` (refused: at once, on loopback)."""
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def served_model(ref: str | None, *, timeout: float = 2.0):
    """The ServedModel for ``ref`` when a server on this machine (SLMRUN_HOST) has the same
    file loaded, else None. Never raises for a server that is absent, slow, refuses or
    answers something else: the caller then loads the model itself."""
    from .. import config
    from ..errors import SlmrunError

    try:
        address = local_address(*config.server_address())
    except ValueError:  # a malformed SLMRUN_HOST is `slmrun serve`'s error to report
        return None
    if address is None or not listening(address, timeout):
        return None
    if not owned_by_me(address[1], named=config.server_address_named()):
        return None
    from ..resolution import resolve

    try:  # names only: a server takes no file paths, and the store's record has the SHA-256
        r = resolve(ref or config.default_model(), allow_path=False)
    except SlmrunError:
        return None  # the local load reports it, in its own words
    digest = r.stored.sha256 if r.stored is not None else None
    if not digest:
        return None
    from .served import ServedModel, ServerAnswerError, request_json

    try:
        loaded = request_json(address, "GET", "/api/ps", timeout=timeout).get("models") or []
    except (OSError, ValueError, ServerAnswerError):
        return None
    for m in loaded:
        if isinstance(m, dict) and m.get("name") == r.key and m.get("digest") == digest \
                and not (m.get("slmrun") or {}).get("lora"):  # serve --lora's adapters change every answer
            return ServedModel(address, key=r.key, n_ctx=int(m.get("context_length") or 0),
                               defaults=_defaults(r.custom))
    return None


def _defaults(custom) -> dict:
    """A created model's own sampling settings (the server applies them too; the command
    line reads them to choose its own defaults, as with a model it loads)."""
    if custom is None:
        return {}
    from ..custom.parameters import sampling_defaults

    return sampling_defaults(custom.parameters)
