"""What small models are good at, answers other programs consume: ``classify`` (a label and
its probability, from the model's own log-probabilities), ``classify_many`` and ``extract``
(the fields of a schema; ``extract_request`` returns its Response at once,
so `slmrun eval --task extract` keeps several in flight). ``Tasks`` is a mixin of ``Model`` (model.py): it uses only its
public and submit methods.

Classification of one text or many is driven on the engine (``classify_stream``):
A text is scored by one request per label (teacher forcing: structured/classify.py). The
labels of one text run one after another in the same slot, so each reuses the prompt's
cells the one before left there (the slot's prefix cache): the prompt is evaluated once,
each further label costs its own few tokens. Many texts run side by side, one per slot:
up to ``n_parallel`` texts are in flight, each label's request submitted from the done
callback of the one before, so the engine decodes every in-flight text's next tokens in
one batch. The window is exactly the slot count: with more texts waiting than slots, a
freed slot would go to the queue's head, another text, and the prompt its next label
needed would be evicted. Results come back in the order of the texts.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Iterable, Iterator, Sequence

from ..errors import InvalidArgumentError


class Tasks:
    def classify(self, text: str, labels, *, instruction: str | None = None, examples=None,
                 method: str | None = None, calibrate=False):
        """The label that fits ``text``, and a probability for every label, from the model's own
        log-probabilities of each label's tokens (teacher forcing; see slmrun.structured.classify),
        not from sampled text. ``examples``: (text, label) pairs shown to the model first.
        ``method="embedding"`` (an embedding model's default), ``calibrate``, labels with
        descriptions ({name: description}): see slmrun.classification."""
        if method is not None or calibrate or self.is_embedding_model or not isinstance(labels, (list, tuple)):
            from ..classification import classify
            return classify(self, text, labels, instruction=instruction, examples=examples, method=method,
                            calibrate=calibrate)
        return self.classify_many([text], labels, instruction=instruction, examples=examples)[0]

    def classify_many(self, texts: Sequence[str], labels: Sequence[str], *, instruction: str | None = None,
                      examples=None) -> list:
        """``classify`` for each of ``texts``, in order; up to ``n_parallel`` texts are scored at
        once, batched by the engine, each text's prompt evaluated once for all its labels
        (classify_stream below). A text that fails raises after nothing is left running."""
        if isinstance(texts, str):
            raise InvalidArgumentError("texts must be a list of strings, got one string",
                                       hint="Use classify(text, labels) for one text, or pass [text].")
        return list(classify_stream(self, texts, labels, instruction=instruction, examples=examples))

    def extract(self, text: str, schema, *, instruction: str | None = None, max_tokens: int | None = 512,
                examples=None):
        """The fields of ``schema`` (a JSON Schema dict or string, or a pydantic model class)
        found in ``text``, as a validated value; decoding is constrained to the schema.
        ``examples``: (text, value) pairs shown to the model first (extract_request below)."""
        return extract_request(self, text, schema, instruction=instruction, max_tokens=max_tokens,
                               examples=examples).json()

    def _terminator_tokens(self) -> dict[int, str]:
        if self._terminators is None:
            from ..structured import terminator_tokens
            self._terminators = terminator_tokens(self._piece(t) for t in range(self.n_vocab))
        return self._terminators


class _Labels:
    """What every text of one call shares: the labels' tokens and their end-token sets."""

    def __init__(self, model, labels: Sequence[str], instruction, examples):
        from .. import structured as st

        self.labels = st.check_labels(labels)
        self.instruction, self.examples = instruction, examples
        label_text = str if model.has_chat_format else " {}".format  # plain text: "Label: spam"
        self.sequences = st.label_tokens(
            self.labels, lambda s: model.tokenize(label_text(s), special=False, add_bos=False))
        self.ends = st.end_tokens(self.labels, model._h.eog_tokens, model._terminator_tokens())

    def prompt(self, model, text: str) -> list[int]:
        from .. import structured as st

        messages = st.classify_messages(text, self.labels, instruction=self.instruction, examples=self.examples)
        if model.has_chat_format:
            prompt = model.chat_tokens(messages)
        else:
            prompt = model.tokenize(plain_classify_prompt(messages), special=False)
        st.check_fits(len(prompt), self.labels, self.sequences, model.n_ctx)
        return prompt


class _TextJob:
    """One text's label requests, each submitted when the one before ends (engine thread)."""

    def __init__(self, model, shared: _Labels, prompt: list[int], on_done):
        self.model, self.shared, self.prompt = model, shared, prompt
        self.rows: list = []  # per label, the logits rows its request kept
        self.error: BaseException | None = None
        self.done = False
        self.cancelled = False
        self._on_done = on_done
        self._response = None
        self._lock = threading.Lock()  # cancel() (caller's thread) vs the next label's submit (engine thread)

    def start(self) -> None:
        self._submit(0)

    def _submit(self, i: int) -> None:
        seq = self.shared.sequences[i]
        try:
            r = self.model._submit(self.prompt + list(seq), {"max_tokens": 0}, stops=(), strip_leading=False,
                                   score_from=len(self.prompt))
        except BaseException as exc:  # closed, broken, queue full: this text fails, the others go on
            self._finish(exc)
            return
        with self._lock:
            self._response = r
            cancelled = self.cancelled
        if cancelled:  # cancel() ran while this label was being submitted: it saw the one before
            r.cancel()
        r.add_done_callback(lambda resp: self._label_done(i, resp))

    def _label_done(self, i: int, resp) -> None:
        s = resp._s
        if self.cancelled:
            self._finish(InvalidArgumentError("cancelled"))
            return
        if s.error is not None or s.finish_reason != "stop":
            self._finish(s.error or InvalidArgumentError(f"scoring a label ended with {s.finish_reason!r}"))
            return
        self.rows.append(s.score_rows)
        if i + 1 < len(self.shared.sequences):
            self._submit(i + 1)
        else:
            self._finish(None)

    def _finish(self, error) -> None:
        self.error = error
        self._on_done(self)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True  # no further label is submitted
            r = self._response
        if r is not None:
            r.cancel()

    def result(self):
        from .. import structured as st

        if self.error is not None:
            raise self.error
        sh = self.shared
        logprobs = [st.sequence_logprob(rows, seq, end) for rows, seq, end in zip(self.rows, sh.sequences, sh.ends)]
        return st.label_probabilities(sh.labels, logprobs)


def classify_stream(model, texts: Iterable[str], labels: Sequence[str], *, instruction: str | None = None,
                    examples=None, window: int | None = None) -> Iterator:
    """Classification of each text, yielded in the texts' order, up to ``window`` (default: the
    model's slots) texts in flight at once. ``texts`` may be any iterable (stdin's lines): it is
    read only as the window has room. A bad text raises when its turn comes, after the results
    before it; leaving the loop early cancels what is in flight."""
    shared = _Labels(model, labels, instruction, examples)
    window = max(1, window or model.n_parallel)
    cond = threading.Condition()
    running = [0]

    def finished(job: _TextJob) -> None:
        with cond:
            job.done = True
            running[0] -= 1
            cond.notify_all()

    jobs: deque[_TextJob] = deque()
    it, exhausted = iter(texts), False
    try:
        while True:
            while not exhausted and running[0] < window:
                try:
                    text = next(it)
                except StopIteration:
                    exhausted = True
                    break
                job = _TextJob(model, shared, shared.prompt(model, text), finished)
                jobs.append(job)
                with cond:
                    running[0] += 1
                job.start()
            if not jobs:
                return
            head = jobs[0]
            with cond:
                cond.wait_for(lambda: head.done or (not exhausted and running[0] < window))
            while jobs and jobs[0].done:
                yield jobs.popleft().result()
    finally:
        for job in jobs:  # the caller stopped early (or a text failed): free the slots
            job.cancel()
        # and wait until each cancelled job has ended (a label submitted as the cancel ran ends
        # at the engine's next turn), so nothing of this call is queued once it returns or raises
        with cond:
            cond.wait_for(lambda: all(job.done for job in jobs), timeout=60)


def plain_classify_prompt(messages: list[dict]) -> str:
    """For a model with no chat format: the instruction, then "Text: ... / Label: ..." lines."""
    lines = [messages[0]["content"]]
    for m in messages[1:]:
        lines.append(("Text: " if m["role"] == "user" else "Label: ") + m["content"])
    return "\n".join(lines) + "\nLabel:"


EXTRACT_INSTRUCTION = "Extract the information from the user's text as JSON. Use only what the text says."


def extract_request(model, text: str, schema, *, instruction: str | None = None, max_tokens: int | None = 512,
                    examples=None):
    """The Response (returned at once) of ``model.extract(text, schema)``: a chat (a completion
    for a model with no chat format) constrained to ``schema``, greedy. ``examples``: (text,
    value) pairs, shown as earlier turns whose answers are the values as JSON."""
    import json

    if not isinstance(text, str) or not text.strip():
        raise InvalidArgumentError("the text to extract from is empty")
    system = instruction or EXTRACT_INSTRUCTION
    pairs = []
    for pair in examples or ():
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str)):
            raise InvalidArgumentError(f"an extraction example must be a (text, value) pair, got {pair!r}")
        pairs.append((pair[0], json.dumps(pair[1], ensure_ascii=False)))
    if model.has_chat_format:
        messages = [{"role": "system", "content": system}]
        for example_text, value in pairs:
            messages += [{"role": "user", "content": example_text}, {"role": "assistant", "content": value}]
        messages.append({"role": "user", "content": text})
        return model.chat(messages, json_schema=schema, temperature=0, max_tokens=max_tokens)
    shown = "".join(f"Text: {t}\nJSON: {v}\n" for t, v in pairs)
    return model.complete(f"{system}\n{shown}Text: {text}\nJSON:", json_schema=schema, temperature=0,
                          max_tokens=max_tokens)
