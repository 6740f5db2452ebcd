"""Token masks for one sequence: what a token loop calls between decoding and sampling.

A ``GrammarTokenizer`` is llguidance's view of one loaded model's vocabulary (built from the
llama.cpp vocab in ~0.3 s for a 49k vocabulary, so once per model). It calls back into
llama.cpp through the vocab pointer, so it and every ``Constraint`` made from it must not
outlive the model: the runtime drops it (``release_tokenizer``) when the model closes.

A ``Constraint`` is one sequence's grammar state. Per generated token the loop does::

    if c.is_stopped(): finish "stop"         # the grammar is complete: no decode needed
    c.apply_mask(logits_row)                  # disallowed tokens -> -inf, in place
    token = sample(logits_row)
    c.commit(token)                           # False -> c.error says why
    forced = c.forced_tokens()                # tokens the grammar forces next:
    c.commit_tokens(forced)                   # append them without sampling, decode in one batch
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from typing import Callable, Hashable, Sequence

from ..errors import InvalidArgumentError, StructuredOutputError, UnsupportedSchemaError
from .spec import ConstraintSpec, one_line

_MATCHERS_PER_TOKENIZER = 32  # compiled grammars kept per model (least recently used dropped)


class GrammarTokenizer:
    """llguidance's tokenizer for one model, plus that model's compiled grammars."""

    def __init__(self, lltokenizer, *, n_vocab: int):
        self._tok = lltokenizer
        self.n_vocab = n_vocab
        self.eos_tokens = tuple(lltokenizer.eos_tokens)
        self._matchers: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_vocab_table(cls, table: dict, *, eos_tokens: Sequence[int] | None = None) -> "GrammarTokenizer":
        """From the runtime's ``vocab_table()`` (each token's bytes and llama_token_attr flags,
        the vocab and the address of ``llama_tokenize``, which llguidance calls to tokenize
        forced text). ``eos_tokens``: every token that ends generation (llama.cpp's
        end-of-generation set, e.g. <|im_end|> and <|endoftext|>); the mask allows them once
        the grammar is complete. Default: the vocab's EOS alone. This is what
        llguidance.llamacpp.lltokenizer_from_vocab does, without its ``import llama_cpp`` of
        the whole Python package (~150 ms of a process's first constrained request)."""
        from llguidance import LLTokenizer

        tokens = [b"\xff" + p if _is_special(p, a) else p for p, a in zip(table["pieces"], table["attrs"])]
        tok = LLTokenizer.from_llamacpp(tokens=tokens, vocab_ptr=table["vocab_ptr"],
                                        tokenize_fptr=table["tokenize_fptr"],
                                        eos_token=list(eos_tokens) if eos_tokens else table["eos"], slices=None)
        return cls(tok, n_vocab=tok.vocab_size)

    @property
    def llguidance_tokenizer(self):
        return self._tok

    def constraint(self, spec: ConstraintSpec) -> "Constraint":
        """A fresh grammar state for one sequence. The first call per spec compiles the grammar
        against this vocabulary (what the benchmark's compile time measures); later calls copy
        the compiled state."""
        import llguidance

        self._check_open()
        with self._lock:
            pristine = self._matchers.get(spec.key)
            if pristine is None:
                pristine = llguidance.LLMatcher(self._tok, spec.grammar, log_level=0)
                if pristine.is_error():
                    raise UnsupportedSchemaError(
                        f"cannot enforce this {_what(spec)} with this model's vocabulary: "
                        f"{one_line(pristine.get_error())}")
                self._matchers[spec.key] = pristine
                if len(self._matchers) > _MATCHERS_PER_TOKENIZER:
                    self._matchers.popitem(last=False)
            else:
                self._matchers.move_to_end(spec.key)
            return Constraint(pristine.deep_copy(), self, spec)

    def tokenize(self, text: str) -> list[int]:
        """Tokens for ``text`` as the model tokenizes it (no BOS, special tokens as text)."""
        self._check_open()
        return self._tok.tokenize_str(text)

    def decode(self, tokens: Sequence[int]) -> bytes:
        return self._tok.decode_bytes(list(tokens))

    def close(self) -> None:
        self._closed = True
        with self._lock:
            self._matchers.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgumentError("the model this grammar tokenizer belongs to was closed",
                                       hint="Load the model again with slmrun.load().")


def _what(spec: ConstraintSpec) -> str:
    return "grammar" if spec.kind == "grammar" else "JSON Schema"


class Constraint:
    """One sequence's position in a grammar: masks, commits, fast-forward, final state."""

    __slots__ = ("_m", "_tokenizer", "spec", "_words", "_n_vocab")

    def __init__(self, matcher, tokenizer: GrammarTokenizer, spec: ConstraintSpec):
        import numpy as np

        self._m = matcher
        self._tokenizer = tokenizer
        self.spec = spec
        self._n_vocab = tokenizer.n_vocab
        self._words = np.empty((self._n_vocab + 31) // 32, dtype=np.uint32)

    # --- the token loop ---------------------------------------------------------------
    def apply_mask(self, logits) -> None:
        """Set every token the grammar does not allow next to -inf in ``logits``, in place: a 1-D
        float32 array over the vocabulary, or llama.cpp's logits row as a ctypes float array
        (what the engine's ``LlamaHandle.logits(i)`` returns; viewed, not copied)."""
        import numpy as np

        if not isinstance(logits, np.ndarray):
            logits = np.frombuffer(logits, dtype=np.float32)
        if logits.ndim != 1 or logits.shape[0] < self._n_vocab:
            raise InvalidArgumentError(
                f"logits of shape {logits.shape} do not cover the grammar's {self._n_vocab}-token vocabulary")
        mask_logits(logits, self.compute_mask()[None, :], self._n_vocab)

    apply = apply_mask  # the name the engine's Request.constraint hook calls

    def compute_mask(self):
        """The tokens allowed next, as uint32 words (bit i of word w: token 32*w + i). The array
        is reused by the next call."""
        self._raise_if_error()
        words = self._words
        self._m.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
        self._raise_if_error()
        return words

    def allowed_tokens(self):
        """The tokens allowed next, as a bool array over the vocabulary."""
        return _unpack(self.compute_mask()[None, :])[0, :self._n_vocab].astype(bool)

    def commit(self, token: int) -> bool:
        """Advance past a sampled token. False when the grammar does not allow it (the
        constraint is then in its error state for good: see ``error``)."""
        return self._m.consume_token(token)

    def commit_tokens(self, tokens: Sequence[int]) -> bool:
        return self._m.consume_tokens(list(tokens))

    def valid_prefix(self, tokens: Sequence[int]) -> int:
        """How many of ``tokens``, in order, the grammar would take from here (nothing committed):
        a speculative draft ends before the first it forbids."""
        return self._m.validate_tokens(list(tokens))

    def forced_tokens(self) -> list[int]:
        """The tokens the grammar forces next, in the model's own tokenization (may be empty).
        Not committed: call ``commit_tokens`` with those the loop appends (all, or as many as
        max_tokens leaves room for)."""
        if self._tokenizer.closed:  # llguidance would call into the freed llama.cpp vocab
            raise InvalidArgumentError("the model this constraint belongs to was closed")
        forced = self._m.compute_ff_tokens()
        if forced:
            # The forced bytes are tokenized by llama.cpp; where its tokens spell them differently
            # from what the grammar reads (a vocabulary without "▁", say), keep only the prefix the
            # grammar takes: committing the rest would put the constraint in its error state for good.
            forced = forced[:self._m.validate_tokens(forced)]
        return forced

    def rollback(self, n_tokens: int) -> bool:
        return self._m.rollback(n_tokens)

    def fork(self) -> "Constraint":
        """An independent copy at the same position (n > 1 completions of one prompt)."""
        return Constraint(self._m.deep_copy(), self._tokenizer, self.spec)

    # --- state ---------------------------------------------------------------------------
    def is_stopped(self) -> bool:
        """Nothing but an end-of-generation token can follow: the loop can finish ("stop")."""
        return self._m.is_stopped()

    def is_accepting(self) -> bool:
        """What was generated so far is a complete value of the grammar."""
        return self._m.is_accepting()

    @property
    def error(self) -> str | None:
        """Why the grammar engine gave up (a token it did not allow, a parser limit), or None."""
        return one_line(self._m.get_error()) if self._m.is_error() else None

    @property
    def stop_reason(self) -> str:
        return self._m.stop_reason()

    def _raise_if_error(self) -> None:
        if self._m.is_error():
            raise StructuredOutputError(f"the grammar engine stopped: {one_line(self._m.get_error())}",
                                        hint="Simplify the schema or grammar; set SLMRUN_DEBUG=1 to see details.")


def apply_masks(constraints: Sequence[Constraint], logits) -> None:
    """``apply_mask`` for a batch: row i of the 2-D ``logits`` gets constraints[i]'s mask. The
    masks are computed in parallel, outside the GIL (llguidance's executor)."""
    import numpy as np

    if not constraints:
        return
    if logits.ndim != 2 or logits.shape[0] != len(constraints):
        raise InvalidArgumentError(f"logits of shape {logits.shape} for {len(constraints)} constraints")
    n_vocab = constraints[0]._n_vocab
    if logits.shape[1] < n_vocab or any(c._n_vocab != n_vocab for c in constraints):
        raise InvalidArgumentError("every constraint of a batch must come from the same model as the logits")
    for c in constraints:
        c._raise_if_error()
    words = np.empty((len(constraints), (n_vocab + 31) // 32), dtype=np.uint32)
    _executor().unsafe_compute_mask_ptr([(c._m, i) for i, c in enumerate(constraints)],
                                        words.ctypes.data, words.shape[1] * 4, len(constraints))
    for c in constraints:
        c._raise_if_error()
    mask_logits(logits, words, n_vocab)


def mask_logits(logits, allowed_words, n_vocab: int) -> None:
    """-inf in ``logits`` (1-D, or 2-D with one row per row of ``allowed_words``) wherever a bit
    of ``allowed_words`` (uint32 rows, bit i = token i) is clear, and on any column past the
    grammar's vocabulary."""
    import numpy as np

    bits = _unpack(np.invert(allowed_words))[:, :n_vocab].view(np.bool_)
    rows = logits if logits.ndim == 2 else logits[None, :]
    # copyto with where= is ~5x faster than putmask or boolean indexing on a 49k row.
    np.copyto(rows[:, :n_vocab], -np.inf, where=bits)
    if rows.shape[1] > n_vocab:
        rows[:, n_vocab:] = -np.inf


def _unpack(words):
    import numpy as np

    if sys.byteorder == "big":  # bit i of word w is token 32*w + i; unpack reads bytes
        words = words.byteswap()
    return np.unpackbits(words.view(np.uint8), axis=1, bitorder="little")


_EXECUTOR = None
_EXECUTOR_LOCK = threading.Lock()


def _executor():
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            import llguidance
            _EXECUTOR = llguidance.LLExecutor()
        return _EXECUTOR


_ATTR_CONTROL, _ATTR_USER_DEFINED = 1 << 3, 1 << 4  # llama_token_attr


def _is_special(piece: bytes, attrs: int) -> bool:
    """A control token, or a user-defined one that looks like one (<...>): llguidance marks
    both with a 0xff prefix so grammar text never matches them by their spelling."""
    return bool(attrs & _ATTR_CONTROL or (attrs & _ATTR_USER_DEFINED and piece.startswith(b"<")
                                          and piece.endswith(b">")))


# --- one tokenizer per loaded model ------------------------------------------------------------
_TOKENIZERS: dict[Hashable, GrammarTokenizer] = {}
_TOKENIZERS_LOCK = threading.Lock()


def tokenizer_for(key: Hashable, vocab_table: Callable[[], dict], *,
                  eos_tokens: Sequence[int] | None = None) -> GrammarTokenizer:
    """The grammar tokenizer of the model ``key`` names, built on first use from
    ``vocab_table()`` (the runtime's reading of its vocabulary). Call
    ``release_tokenizer(key)`` before the model is freed."""
    with _TOKENIZERS_LOCK:
        tok = _TOKENIZERS.get(key)
        if tok is None:
            tok = _TOKENIZERS[key] = GrammarTokenizer.from_vocab_table(vocab_table(), eos_tokens=eos_tokens)
        return tok


def release_tokenizer(key: Hashable) -> None:
    """Forget (and close) the model's tokenizer and compiled grammars; safe to call twice."""
    with _TOKENIZERS_LOCK:
        tok = _TOKENIZERS.pop(key, None)
    if tok is not None:
        tok.close()


# --- model-free checks ----------------------------------------------------------------------------
_BYTES: list = []  # [llguidance's byte-level tokenizer, OrderedDict of compiled matchers]
_BYTES_LOCK = threading.Lock()


def accepts(spec: ConstraintSpec, text: str) -> bool:
    """Whether the grammar accepts ``text`` as a complete value, byte by byte, with no model
    vocabulary involved (a model's mask can be stricter: where the grammar forces bytes it
    allows only the canonical tokens for them)."""
    import llguidance

    with _BYTES_LOCK:
        if not _BYTES:
            _BYTES.extend([llguidance.LLTokenizer("byte"), OrderedDict()])
        tok, cache = _BYTES
        pristine = cache.get(spec.key)
        if pristine is None:
            pristine = cache[spec.key] = llguidance.LLMatcher(tok, spec.grammar, log_level=0)
            if len(cache) > _MATCHERS_PER_TOKENIZER:
                cache.popitem(last=False)
        matcher = pristine.deep_copy()
    return (not matcher.is_error() and matcher.consume_tokens(tok.tokenize_str(text))
            and matcher.is_accepting())


def engine_version() -> str:
    import llguidance

    return llguidance.__version__
