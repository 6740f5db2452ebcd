"""One generation for either API: lease the model, fit the chat history to its context,
submit, and tie the lease, the metrics and the access log to the Response's end."""

from __future__ import annotations

from dataclasses import dataclass

import asyncio

from ..chat import fit_history
from .translate import Call, model_ref


@dataclass
class Generation:
    key: str  # the model's canonical name
    model: object  # slmrun.runtime.Model
    response: object  # slmrun.runtime.Response
    load_s: float  # what this request waited for the model to load
    dropped: int = 0  # oldest chat messages left out to fit the context
    prompt_tokens: list[int] | None = None  # Ollama generate's context (prompt side)


def reply_reserve(model, params: dict) -> int:
    """Tokens kept free for the reply when old turns are dropped: what was asked, within a quarter of the context."""
    return min(params.get("max_tokens") or 256, model.n_ctx // 4)


def fit_messages(model, messages: list[dict], params: dict) -> tuple[list[dict], int]:
    """Drop the oldest turns (never the system prompt or the newest message) until the prompt
    fits: clients resend the whole conversation, which outgrows any context. A quarter of
    the context at a time, so the turns after a cut reuse the slot's KV cache. A newest message
    that alone is too long is left to the engine, whose ContextOverflowError says by how much."""
    return fit_history(messages, lambda ms: len(model.chat_tokens(ms)), n_ctx=model.n_ctx,
                       reserve=reply_reserve(model, params), quantum=model.n_ctx // 4)


def request_params(model, call: Call, extra: dict | None = None) -> dict:
    """The request's parameters over the model's own (a created model's PARAMETERs, which
    Model fills in) over the API's defaults: an API default the model sets is left out."""
    params = {**call.params, **(extra or {})}
    own = getattr(model, "defaults", None) or {}
    for key in call.defaulted & set(own):
        if key not in (extra or {}):
            del params[key]
    return params


def submit(model, call: Call, extra: dict | None = None) -> tuple[object, int, list[int] | None]:
    """(Response, messages dropped, prompt tokens for Ollama's context); blocking: worker thread."""
    params = request_params(model, call, extra)
    if call.context:  # Ollama's deprecated conversation tokens: continue them with this prompt
        if call.raw:
            new = model.tokenize(call.prompt, special=False, add_bos=False) if call.prompt else []
        else:
            new = model.chat_tokens(call.messages) if call.messages else []
            bos = model.tokenize("", add_bos=True)
            if bos and new[:len(bos)] == bos:
                new = new[len(bos):]
        tokens = list(call.context) + new
        return model.generate(tokens, **params), 0, tokens
    if call.messages is not None:
        messages, dropped = fit_messages(model, call.messages, params)
        response = model.chat(messages, **params)
        # Ollama's generate (a prompt turned into messages) answers with its context tokens.
        return response, dropped, model.chat_tokens(messages) if call.prompt is not None else None
    if isinstance(call.prompt, list):
        return model.generate(call.prompt, **params), 0, list(call.prompt)
    response = model.complete(call.prompt, **params)
    tokens = model.tokenize(call.prompt, special=False) if call.prompt is not None and call.raw else None
    return response, 0, tokens


async def start(state, call: Call, request, extra: dict | None = None) -> Generation:
    """Lease the model and submit ``call``; the lease ends with the Response."""
    lease = await state.manager.lease(model_ref(call.model or state.default_model), keep_alive=call.keep_alive)
    key = lease.entry.key
    note = request.scope.get("slmrun.log", {})
    note["model"] = key
    try:
        response, dropped, prompt_tokens = await asyncio.to_thread(submit, lease.model, call, extra)
    except BaseException:
        lease.release()
        raise
    metrics = state.metrics

    def done(r) -> None:
        metrics.generation_done(key, r)
        lease.release_threadsafe()

    def describe() -> dict:  # for the access-log line, written when the HTTP response has ended
        r = response
        if not r.done:
            return {"finish": "running"}
        try:
            s = r.stats
            return {"prompt": s.prompt_tokens, "cached": s.cached_tokens, "gen": s.generated_tokens,
                    "ttft": f"{s.ttft_s:.3f}s", "finish": r.finish_reason}
        except Exception as exc:  # the error itself went to the client
            return {"error": type(exc).__name__}

    response.add_done_callback(done)
    note["_describe"] = describe
    if dropped:
        note["dropped"] = dropped
    return Generation(key=key, model=lease.model, response=response, load_s=lease.load_s, dropped=dropped,
                      prompt_tokens=prompt_tokens)
