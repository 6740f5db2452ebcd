"""``Model``: a loaded model that any number of threads (and asyncio tasks) may use at once.

``complete()`` and ``chat()`` validate and tokenize in the caller's thread, then hand the
request to the model's engine (engine.py), which batches it with the others; both return
a ``Response`` at once. Defaults are fast on a small CPU: threads = the
physical/performance cores, flash attention on, mmap on, the context from the model.
"""

from __future__ import annotations

import atexit
import copy
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import ContextOverflowError, InvalidArgumentError, ModelCapabilityError, ModelClosedError
from . import heap
from .engine import Engine
from .slots import Request
from .llama import ContextSpec, LlamaHandle
from .params import make_params
from .response import Response, ResponseState
from .tasks import Tasks


@dataclass(frozen=True)
class LoadOptions:
    """What the model is loaded with, in llama.cpp's names. ``n_ctx`` is each sequence's context."""

    n_ctx: int
    n_threads: int
    n_threads_batch: int
    n_batch: int = 512
    n_ubatch: int = 512
    flash_attn: bool = True
    use_mmap: bool = True
    use_mlock: bool = False
    type_k: str | None = None  # KV cache type: "f16" (default), "q8_0", "q4_0"
    type_v: str | None = None
    seed: int | None = None  # default sampling seed for requests that give none
    verbose: bool = False
    n_parallel: int = 1  # sequences decoded together (slots)
    max_queue: int | None = None  # requests allowed to wait for a slot (None: no limit)
    pooling: str | None = None  # embeddings: "mean", "cls", "last" (None: the model's own, else mean)
    speculative: str = "auto"  # prompt-lookup drafts: "auto" (where the measured step costs say they pay), "on", "off"
    spec_slope: float | None = None  # a batch's extra cost per token (fraction of a step) until measured
    kv_unified: bool = False  # one KV cache shared by the sequences (llama.cpp's -kvu) instead of a stream each


_OPEN: "weakref.WeakSet[Model]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # The engine threads are daemons: stop them before the interpreter tears down under them.
    for model in list(_OPEN):
        try:
            model.close()
        except Exception:
            pass


class _Shared:
    """What a Model and its engine thread both use. The engine holds this, never the Model, so
    a Model nobody holds any more is collected, and its ``__del__`` closes it."""

    def __init__(self, handle: LlamaHandle):
        self.h = handle
        self.lock = threading.Lock()  # the vocabulary's users vs freeing it
        self.pieces: dict[int, bytes] = {}
        self.grammar = None  # the grammar tokenizer, built on the first structured request (~0.3 s)

    def piece(self, token: int) -> bytes:
        """The text bytes of a generated token, cached: the token loop's only lookup."""
        piece = self.pieces.get(token)
        if piece is None:
            piece = self.pieces[token] = self.h.piece(token)
        return piece

    def free(self) -> None:
        """On the engine's thread, after its last step: the grammar tokenizer (it calls into the
        vocabulary), then the context and the model, while no tokenize() runs."""
        if self.grammar is not None:
            from ..structured import release_tokenizer
            release_tokenizer(id(self))
        with self.lock:
            self.h.close()
        heap.return_freed_heap()


class Model(Tasks):
    """A loaded model. Use as a context manager, or call ``close()``."""

    def __init__(self, path: Path, options: LoadOptions, *, prompt_format=None,
                 chat_template: str | None = None, name: str | None = None, info=None, plan=None,
                 model_params_hook=None, placement=None, lora=()):
        """``placement``: the model's layers split over RPC servers (runtime.rpc.place()).
        ``lora``: (path, scale) LoRA adapters (checked by the caller: adapter_info), applied
        to every request at those scales unless it chooses others (``adapters=``)."""
        self.path = Path(path)
        self.name = name or self.path.stem
        self.options = options
        self.info = info  # gguf_info.GGUFInfo
        self.plan = plan
        self.prompt_format = prompt_format
        self.chat_template = chat_template
        self.defaults: dict = {}  # generation keywords a request may override (a created model's PARAMETERs)
        self.system_prompt: str | None = None  # a created model's SYSTEM, for chats that bring none
        self.few_shot: tuple[dict, ...] = ()  # a created model's MESSAGE turns, before every chat
        if options.n_parallel < 1:
            raise InvalidArgumentError(f"n_parallel must be >= 1, got {options.n_parallel}")
        spec = ContextSpec(n_ctx=options.n_ctx * options.n_parallel, n_seq=options.n_parallel,
                           n_batch=options.n_batch, n_ubatch=options.n_ubatch, n_threads=options.n_threads,
                           n_threads_batch=options.n_threads_batch, flash_attn=options.flash_attn,
                           type_k=options.type_k, type_v=options.type_v, pooling=options.pooling,
                           kv_unified=options.kv_unified)
        t0 = time.perf_counter()
        self._h = LlamaHandle(self.path, spec, use_mmap=options.use_mmap, use_mlock=options.use_mlock,
                              verbose=options.verbose, model_params_hook=model_params_hook or placement,
                              guard=placement)
        self.placement = placement
        self._lora = None
        if lora:
            from .lora import LoadedAdapters
            try:
                self._lora = LoadedAdapters(self._h, lora)
            except BaseException:
                self._h.close()
                raise
        self.load_s = time.perf_counter() - t0
        self._shared = shared = _Shared(self._h)
        self._lock = shared.lock
        self._terminators: dict[int, str] | None = None
        self._closed = False
        self._engine = Engine(self._h, n_parallel=options.n_parallel, n_ctx_seq=options.n_ctx,
                              n_batch=options.n_batch, name=self.name, load_s=self.load_s,
                              max_queue=options.max_queue, piece_of=shared.piece, on_exit=shared.free,
                              speculative=options.speculative, spec_slope=options.spec_slope,
                              lora=self._lora)
        if placement is not None:  # a failed server ends this model's requests (rpc_guard's default)
            placement.on_failure = self._engine.fail_broken
        _OPEN.add(self)

    # --- lifecycle -----------------------------------------------------------------
    def close(self) -> None:
        """Stop the engine (running and waiting requests end with ModelClosedError) and free llama.cpp."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._engine.close()  # the engine thread frees llama.cpp as it ends (_Shared.free)
        _OPEN.discard(self)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def broken(self) -> BaseException | None:
        """The RpcServerError that ended this model, when an RPC server it is split over failed."""
        return self._engine.broken

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # a safety net; close() is the contract
        try:
            self.close()
        except Exception:
            pass

    def customize(self, *, defaults: dict | None = None, system: str | None = None, few_shot=()) -> None:
        """What a created model (`slmrun create`) adds: default generation parameters (a request's
        own win), a system prompt for chats whose first message is not one, and few-shot turns
        placed after the system message, before every conversation."""
        if defaults:
            make_params(**{k: v for k, v in defaults.items()})  # refused now, not on every request
        self.defaults = dict(defaults or {})
        self.system_prompt = system
        self.few_shot = tuple(dict(m) for m in few_shot)

    def _check_open(self) -> None:
        # llama.cpp's pointers are freed by close(); touching them would crash the process.
        if self._engine.broken is not None:
            raise copy.copy(self._engine.broken)  # a fresh traceback for each caller
        if self._closed:
            raise ModelClosedError("this model was closed")

    def _check_can_generate(self) -> None:
        self._check_open()
        if self._h.encoder_only:
            raise ModelCapabilityError(f"{self.name} is an embedding model: it cannot generate text")

    # --- facts -----------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        """Each request's context: prompt plus reply, in tokens."""
        return self.options.n_ctx

    @property
    def n_parallel(self) -> int:
        return self.options.n_parallel

    @property
    def has_chat_format(self) -> bool:
        """A chat template in the GGUF or a prompt format from the registry: chat() works."""
        return self.chat_template is not None or self.prompt_format is not None

    @property
    def adapters(self) -> list[dict]:
        """The LoRA adapters loaded: [{"id", "path", "scale"}] (llama-server's /lora-adapters)."""
        return self._lora.describe() if self._lora is not None else []

    @property
    def n_vocab(self) -> int:
        return self._h.n_vocab

    @property
    def is_embedding_model(self) -> bool:
        """An encoder (BERT family): it embeds and cannot generate text."""
        return self._h.encoder_only

    @property
    def n_embd(self) -> int:
        """The dimensions of an embedding."""
        return self._h.n_embd

    @property
    def pooling(self) -> str:
        """How embed() pools a text's token states into one vector: "mean", "cls", "last"."""
        return self._h.pooling

    @property
    def embed_limit(self) -> int:
        """The most tokens one input to embed() may have (longer ones are cut or refused)."""
        return min(self.n_ctx, self.options.n_ubatch, self.options.n_batch)

    def status(self) -> dict:
        """Slots busy, queue depth, tokens cached per slot, and request/token counters."""
        return self._engine.snapshot()

    # --- tokens ----------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = True, add_bos: bool = True) -> list[int]:
        with self._lock:
            self._check_open()
            return self._h.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, tokens: Sequence[int], *, special: bool = True) -> str:
        with self._lock:
            self._check_open()
            return self._h.detokenize(list(tokens), special=special)

    def token_piece(self, token: int) -> str:
        """A token's text as generation shows it (special tokens empty)."""
        return self._piece(token).decode("utf-8", "replace")

    def _piece(self, token: int) -> bytes:
        return self._shared.piece(token)

    # --- generation ------------------------------------------------------------------
    def complete(self, prompt: str, **params) -> Response:
        """Continue ``prompt`` (plain text, no chat template). Returns at once; see Response."""
        if not isinstance(prompt, str):
            raise InvalidArgumentError(f"the prompt must be a string, got {type(prompt).__name__}")
        return self._submit(self.tokenize(prompt, special=False), params, stops=(), strip_leading=False)

    def generate(self, tokens: Sequence[int], **params) -> Response:
        """Continue a prompt given as token ids (what ``tokenize`` returns). Returns at once."""
        tokens = list(tokens)
        if not all(isinstance(t, int) and 0 <= t < self._h.n_vocab for t in tokens):
            raise InvalidArgumentError(f"tokens must be ids from 0 to {self._h.n_vocab - 1}")
        return self._submit(tokens, params, stops=(), strip_leading=False)

    def chat(self, messages: list[dict], **params) -> Response:
        """Apply the model's chat format to ``messages`` and generate the reply. Returns at once."""
        tokens, stops = self._chat_prompt(messages)
        return self._submit(tokens, params, stops=stops, strip_leading=True)

    def chat_tokens(self, messages: list[dict]) -> list[int]:
        """The prompt tokens ``chat(messages)`` would evaluate."""
        return self._chat_prompt(messages)[0]

    def _chat_prompt(self, messages: list[dict]) -> tuple[list[int], tuple[str, ...]]:
        from ..chat import render_prompt

        self._check_can_generate()
        h = self._h
        bos = h.token_text(h.bos)
        if isinstance(messages, (list, tuple)) and (self.system_prompt or self.few_shot):
            from ..custom.messages import place
            messages = place(list(messages), self.system_prompt, self.few_shot)
        prompt, stops = render_prompt(messages, template=self.chat_template, fmt=self.prompt_format,
                                      bos=bos, eos=h.token_text(h.eos))
        # A template that writes the BOS text itself must not get a second one.
        add_bos = not (bos and prompt.startswith(bos))
        return self.tokenize(prompt, special=True, add_bos=add_bos), stops

    def _grammar(self):
        """This model's grammar tokenizer (llguidance's view of the vocabulary), built once."""
        from ..structured import tokenizer_for

        shared = self._shared
        with shared.lock:
            self._check_open()
            if shared.grammar is None:
                shared.grammar = tokenizer_for(id(shared), self._h.vocab_table, eos_tokens=self._h.eog_tokens)
            return shared.grammar

    def _submit(self, tokens: list[int], params: dict, *, stops: Sequence[str], strip_leading: bool,
                score_from: int | None = None) -> Response:
        self._check_can_generate()
        if self.defaults:
            params = {**self.defaults, **params}
        extra_stop = params.pop("stop", None)
        adapters = self._adapter_key(params.pop("adapters", None))
        spec = constraint = None
        structured = {k: params.pop(k) for k in ("json_schema", "grammar", "json_object") if k in params}
        if any(v is not None and v is not False for v in structured.values()):
            from ..structured import constraint_spec

            spec = constraint_spec(**structured)  # refused here, before anything is queued
            constraint = self._grammar().constraint(spec)
            stops = ()  # the grammar decides where the value ends; a stop string could cut it
        task = "constrained" if spec is not None else ("chat" if strip_leading else "text")  # chat() strips
        p = make_params(**params, stop=extra_stop if spec is None else None, task=task, default_seed=self.options.seed)
        if not tokens:
            raise InvalidArgumentError("the prompt is empty", hint="Give a prompt with some text.")
        if len(tokens) >= self.n_ctx:
            trained = self.info.context_length if self.info else None
            raise ContextOverflowError(
                f"the prompt is {len(tokens)} tokens but the context holds {self.n_ctx}",
                hint="Shorten the prompt or raise the context with --ctx"
                     + (f" (up to the model's {trained} tokens)." if trained else "."))
        state = ResponseState(len(tokens))
        req = Request(tokens=list(tokens), params=p, state=state, stops=tuple(p.stop) + tuple(stops),
                      strip_leading=strip_leading, constraint=constraint, score_from=score_from,
                      adapters=adapters)
        engine = self._engine
        response = Response(state, model_name=self.name, on_cancel=lambda: engine.cancel(req), spec=spec)
        engine.submit(req)
        return response

    def _adapter_key(self, wanted) -> tuple:
        if self._lora is not None:
            return self._lora.key_for(wanted)
        if wanted:
            raise InvalidArgumentError(f"adapters: {self.name} was loaded without LoRA adapters",
                                       hint="Load it with lora=[(path, scale)] (--lora FILE, ADAPTER in a Modelfile).")
        return ()

    # --- embeddings --------------------------------------------------------------------------
    def embed(self, inputs, *, normalize: bool = True, truncate: bool = True):
        """One vector per input (a string, a list of strings, or token ids), as ``Embeddings``
        (``.vectors`` a float32 numpy array, ``.tolist()``, ``.n_tokens``, ``.truncated``).
        Inputs decode together on the engine, each pooled by llama.cpp; an input longer than
        ``embed_limit`` tokens is cut (``truncate=True``) or refused (ContextOverflowError).
        Blocks until done; safe from any number of threads at once."""
        return self.embed_future(inputs, normalize=normalize, truncate=truncate).result()

    def embed_future(self, inputs, *, normalize: bool = True, truncate: bool = True):
        """``embed`` without the wait: the inputs are checked and tokenized here (errors raise
        now), and a ``concurrent.futures.Future`` of the ``Embeddings`` is returned. For an
        event loop (``asyncio.wrap_future``): no worker thread between it and the engine."""
        from concurrent.futures import Future

        from .embedding import EmbedJob, Embeddings, input_tokens, split_inputs, stack_rows

        self._check_open()
        if self._h.pooling in ("none", "rank"):
            raise ModelCapabilityError(f"{self.name} gives no embeddings (its pooling is {self._h.pooling!r})",
                                       hint="Load it with pooling='mean', 'cls' or 'last', or use an embedding model.")
        h = self._h
        end = h.sep if h.add_sep else (h.eos if h.add_eos else None)
        tokens, cut = input_tokens(split_inputs(inputs), lambda text: self.tokenize(text, special=False),
                                   n_vocab=h.n_vocab, limit=self.embed_limit, end=end, truncate=truncate,
                                   name=self.name)

        def finish(rows) -> Embeddings:
            return Embeddings(stack_rows(rows, h.n_embd, normalize=normalize), n_tokens=[len(t) for t in tokens],
                              truncated=cut, pooling=h.pooling, model=self.name, normalized=normalize)

        out: Future = Future()
        if not tokens:
            out.set_result(finish([]))
            return out
        job = EmbedJob(tokens)

        def done(f: Future) -> None:  # on the engine's thread: stacking a few rows is cheap
            try:
                out.set_result(finish(f.result()))
            except BaseException as exc:  # noqa: BLE001 — the caller's, through the future
                out.set_exception(exc)

        job.future.add_done_callback(done)
        self._engine.submit_embed(job)
        return out
