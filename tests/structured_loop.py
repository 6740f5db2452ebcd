"""A minimal constrained token loop over the current runtime, for tests only.

The real one belongs to the engine (slmrun/runtime/); this one shows, in the fewest lines,
how slmrun.structured plugs into a loop, so the tests can prove constrained decoding end to
end before the engine exists. It drives ``Model._llama`` (llama_cpp.Llama) one sequence at a
time: decode, mask, pick, commit, append forced tokens, decode them in one batch.
``classify`` is the prototype of ``model.classify``: the engine version scores the labels
as parallel sequences sharing the prompt's KV cache instead of one after another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slmrun import structured
from slmrun.structured import Classification, Constraint


def eog_tokens(model) -> list[int]:
    import llama_cpp

    n = llama_cpp.llama_vocab_n_tokens(model._vocab)
    return [t for t in range(n) if llama_cpp.llama_vocab_is_eog(model._vocab, t)]


def grammar_tokenizer(model) -> structured.GrammarTokenizer:
    """The model's grammar tokenizer; the test must call structured.release_tokenizer(id(model))."""
    return structured.tokenizer_for(id(model), model._vocab, eos_tokens=eog_tokens(model))


def logits_row(model) -> np.ndarray:
    """A numpy view of llama.cpp's logits for the last decoded token (no copy)."""
    import ctypes

    import llama_cpp

    n = llama_cpp.llama_vocab_n_tokens(model._vocab)
    ptr = llama_cpp.llama_get_logits_ith(model._ctx, -1)
    return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n,))


@dataclass
class Generated:
    text: str
    finish_reason: str  # "stop" or "length"
    tokens: list[int]
    n_forced: int  # tokens appended from the grammar without sampling


def generate(model, prompt_tokens: list[int], *, constraint: Constraint | None = None, max_tokens: int = 64,
             temperature: float = 0.0, seed: int = 0) -> Generated:
    llama = model._llama
    eog = set(eog_tokens(model))
    rng = np.random.default_rng(seed)
    llama.reset()
    llama.eval(prompt_tokens)
    out: list[int] = []
    n_forced = 0
    finish = "length"
    if constraint is not None:  # the grammar may force the first tokens before any sampling
        forced = constraint.forced_tokens()[:max_tokens]
        if forced:
            assert constraint.commit_tokens(forced), constraint.error
            out += forced
            n_forced += len(forced)
            llama.eval(forced)
    while len(out) < max_tokens:
        if constraint is not None and constraint.is_stopped():
            finish = "stop"
            break
        row = logits_row(model)
        if constraint is not None:
            constraint.apply_mask(row)
        if temperature <= 0:
            token = int(np.argmax(row))
        else:
            z = row.astype(np.float64) / temperature
            p = np.exp(z - z.max())
            token = int(rng.choice(len(p), p=p / p.sum()))
        if constraint is not None:
            assert constraint.commit(token), constraint.error
        if token in eog:
            finish = "stop"
            break
        new = [token]
        if constraint is not None:
            forced = constraint.forced_tokens()[:max_tokens - len(out) - 1]
            if forced:
                assert constraint.commit_tokens(forced), constraint.error
                new += forced
                n_forced += len(forced)
        out += new
        llama.eval(new)
    text = model._llama.detokenize(out, special=False).decode("utf-8", "replace")
    return Generated(text=text, finish_reason=finish, tokens=out, n_forced=n_forced)


def score_sequences(model, prompt_tokens: list[int], sequences) -> list[np.ndarray]:
    """Teacher forcing: for each token sequence, the len(seq) + 1 logits rows that predict each
    of its tokens and what follows the last one. The prompt is decoded once."""
    llama = model._llama
    llama.reset()
    llama.eval(prompt_tokens)
    first = logits_row(model).copy()
    rows_per_sequence = []
    for tokens in sequences:
        llama.n_tokens = len(prompt_tokens)  # eval() drops the KV cache past this point
        rows = [first]
        for token in tokens:
            llama.eval([token])
            rows.append(logits_row(model).copy())
        rows_per_sequence.append(np.stack(rows))
    return rows_per_sequence


_TERMINATORS: dict[int, dict[int, str]] = {}


def terminators(model) -> dict[int, str]:
    """The model's terminator tokens, found once (the engine keeps them with the model)."""
    key = id(model)
    if key not in _TERMINATORS:
        n = model._llama.n_vocab()
        _TERMINATORS[key] = structured.terminator_tokens(model._piece_bytes(t) for t in range(n))
    return _TERMINATORS[key]


def classify(model, text: str, labels, *, instruction=None, examples=None) -> Classification:
    """Prototype of model.classify over the loop above."""
    labels = structured.check_labels(labels)
    messages = structured.classify_messages(text, labels, instruction=instruction, examples=examples)
    prompt = model.chat_tokens(messages)
    sequences = structured.label_tokens(labels, lambda s: model.tokenize(s, special=False, add_bos=False))
    structured.check_fits(len(prompt), labels, sequences, model.n_ctx)
    ends = structured.end_tokens(labels, eog_tokens(model), terminators(model))
    rows = score_sequences(model, prompt, sequences)
    logprobs = [structured.sequence_logprob(r, seq, end) for r, seq, end in zip(rows, sequences, ends)]
    return structured.label_probabilities(labels, logprobs)
