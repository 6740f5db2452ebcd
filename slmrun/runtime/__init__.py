"""The runtime: the only package that imports llama_cpp.

    model.py     Model: what callers hold; validates, tokenizes, submits, returns a Response;
                 classify / extract
    engine.py    the engine thread: the queue, turns between kinds of step, call(), closing
    decoding.py  generation steps: admission to slots, batched decode, sampling, grammars, text
    embedding.py embedding steps: inputs batched as sequences, pooled by llama.cpp; Embeddings
    slots.py     a request, a slot (a sequence id and its cached tokens), a request holding a slot
    rows.py      logits rows: copies, log-probabilities, OpenAI-shaped logprobs
    response.py  Response (stream, wait, cancel, await), Stats, text assembly and stop strings
    params.py    per-request sampling parameters, validated in the caller's thread
    tasks.py     classify / extract (a mixin of Model)
    lora.py      LoRA adapters: loading, a request's adapter set, which set each step decodes
    llama.py     llama.cpp's C API: model, context, batch, samplers (measure.py's timing loop
                 also calls llama_decode itself, to time nothing but the decode)
    measure.py   raw decode timings for slmrun.bench (llama-bench's method)
    rpc.py       a model split across llama.cpp RPC servers: endpoints, survey, Placement
    rpc_guard.py what happens when a server fails: ggml's abort hook, the watchdog, handlers
    rpc_server.py, rpc_wire.py, ggml_backend.py
                 `slmrun rpc-server`, slmrun's own short queries to servers, ggml through ctypes
"""


# Names load on first use (PEP 562): `runtime.params` or `runtime.response` alone (a command
# checking its options, a client of a running server) need not import the engine.
_LAZY = {"Embeddings": "embedding", "LoadOptions": "model", "Model": "model", "Response": "response",
         "Stats": "response", "set_llama_log": "llama", "system_info": "llama"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
