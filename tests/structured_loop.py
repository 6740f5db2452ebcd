"""A minimal constrained token loop over the runtime's llama.cpp handle, for tests only.

The real one belongs to the engine (slmrun/runtime/engine.py); this one shows, in the fewest
lines, how slmrun.structured plugs into a loop, so the tests can prove constrained decoding
end to end: decode, mask, pick, commit, append the forced tokens, decode them in one batch.
It takes the context for itself (``Engine.exclusive()``, as runtime/measure.py does) and
works on sequence 0, clearing the KV cache before and after. ``classify`` is the prototype
of ``model.classify``: the engine version scores the labels as parallel sequences sharing
the prompt's cells instead of one after another.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from slmrun import structured
from slmrun.structured import Classification, Constraint


def eog_tokens(model) -> list[int]:
    h = model._h
    return [t for t in range(h.n_vocab) if h.is_eog(t)]


def grammar_tokenizer(model) -> structured.GrammarTokenizer:
    """The model's grammar tokenizer; the test must call structured.release_tokenizer(id(model))."""
    return structured.tokenizer_for(id(model), model._h.vocab, eos_tokens=eog_tokens(model))


@dataclass
class Generated:
    text: str
    finish_reason: str  # "stop" or "length"
    tokens: list[int]
    n_forced: int  # tokens appended from the grammar without sampling


class _Sequence:
    """Sequence 0 of the context, decoded in chunks of n_batch."""

    def __init__(self, model, h):
        self.h, self.n_batch, self.pos = h, model.options.n_batch, 0

    def decode(self, tokens, *, all_logits: bool = False) -> None:
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            items = [(t, self.pos + j, 0, all_logits or j == len(chunk) - 1) for j, t in enumerate(chunk)]
            assert self.h.decode(items) == 0, "llama.cpp failed to decode"
            self.pos += len(chunk)

    def row(self, index: int = -1) -> np.ndarray:
        return np.frombuffer(self.h.logits(index), dtype=np.float32)

    def truncate(self, n: int) -> None:
        self.h.seq_rm(0, n, -1)
        self.pos = n


def generate(model, prompt_tokens: list[int], *, constraint: Constraint | None = None, max_tokens: int = 64,
             temperature: float = 0.0, seed: int = 0) -> Generated:
    eog = set(eog_tokens(model))
    rng = np.random.default_rng(seed)
    out: list[int] = []
    n_forced = 0
    finish = "length"
    with model._engine.exclusive() as h:
        model._engine.forget_cache()
        seq = _Sequence(model, h)
        pending = list(prompt_tokens)
        if constraint is not None:  # the grammar may force the first tokens before any sampling
            forced = constraint.forced_tokens()[:max_tokens]
            assert constraint.commit_tokens(forced), constraint.error
            out += forced
            n_forced += len(forced)
            pending += forced
        while len(out) < max_tokens:
            if constraint is not None and constraint.is_stopped():
                finish = "stop"
                break
            seq.decode(pending)
            row = seq.row()
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
            pending = [token]
            if constraint is not None:
                forced = constraint.forced_tokens()[:max_tokens - len(out) - 1]
                assert constraint.commit_tokens(forced), constraint.error
                pending += forced
                n_forced += len(forced)
            out += pending
        model._engine.forget_cache()
    text = model.detokenize(out, special=False)
    return Generated(text=text, finish_reason=finish, tokens=out, n_forced=n_forced)


def score_sequences(model, prompt_tokens: list[int], sequences) -> list[np.ndarray]:
    """Teacher forcing: for each token sequence, the len(seq) + 1 logits rows that predict each
    of its tokens and what follows the last one. The prompt is decoded once."""
    rows_per_sequence = []
    with model._engine.exclusive() as h:
        model._engine.forget_cache()
        seq = _Sequence(model, h)
        seq.decode(list(prompt_tokens))
        first = seq.row().copy()
        for tokens in sequences:
            seq.truncate(len(prompt_tokens))
            seq.decode(list(tokens), all_logits=True)  # one batch: logits at every label position
            rows_per_sequence.append(np.stack([first] + [seq.row(i).copy() for i in range(len(tokens))]))
        model._engine.forget_cache()
    return rows_per_sequence


_TERMINATORS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def terminators(model) -> dict[int, str]:
    """The model's terminator tokens, found once (the engine keeps them with the model)."""
    if model not in _TERMINATORS:
        _TERMINATORS[model] = structured.terminator_tokens(model._piece(t) for t in range(model.n_vocab))
    return _TERMINATORS[model]


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
