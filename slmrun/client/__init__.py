"""A running ``slmrun serve`` as a model: what `slmrun run` and `slmrun chat` use instead of
loading, as `ollama run` talks to its server.

- ``served_model(ref)`` -> ServedModel, or None: the server at SLMRUN_HOST, when it runs on
  this machine and has ``ref`` loaded (the same file: its SHA-256 checked), else None (the
  caller loads the model itself).
- ``why_local(...)``: pure; the command-line options that need a model of one's own (a
  context, threads, adapters...), so a served one would not give the same answer.
- ``ServedModel.chat`` / ``.complete`` return the runtime's ``Response``, fed from the
  server's NDJSON stream (Ollama's /api/chat and /api/generate), with the engine's Stats.

Nothing here imports llama_cpp, the web framework or numpy: a client starts in the time
of the interpreter and its first request.
"""

from .discover import local_address, served_model, why_local

__all__ = ["ServedModel", "local_address", "served_model", "why_local"]


def __getattr__(name: str):  # served.py (http.client, the runtime's Response) only once a server answers
    if name == "ServedModel":
        from .served import ServedModel
        return ServedModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
