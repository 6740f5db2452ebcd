"""Classification of one text or many, driven on the engine (``Model.classify``, ``classify_many``).

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


def plain_classify_prompt(messages: list[dict]) -> str:
    """For a model with no chat format: the instruction, then "Text: ... / Label: ..." lines."""
    lines = [messages[0]["content"]]
    for m in messages[1:]:
        lines.append(("Text: " if m["role"] == "user" else "Label: ") + m["content"])
    return "\n".join(lines) + "\nLabel:"
