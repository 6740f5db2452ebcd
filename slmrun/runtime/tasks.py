"""What small models are good at, answers other programs consume: ``classify`` (a label and
its probability, from the model's own log-probabilities) and ``extract`` (the fields of a
schema). A mixin of ``Model`` (model.py): it uses only its public and submit methods.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import InvalidArgumentError


class Tasks:
    def classify(self, text: str, labels: Sequence[str], *, instruction: str | None = None,
                 examples=None):
        """The label that fits ``text``, and a probability for every label, from the model's own
        log-probabilities of each label's tokens (teacher forcing; see slmrun.structured.classify),
        not from sampled text. ``examples``: (text, label) pairs shown to the model first."""
        from .. import structured as st

        labels = st.check_labels(labels)
        messages = st.classify_messages(text, labels, instruction=instruction, examples=examples)
        if self.has_chat_format:
            prompt = self.chat_tokens(messages)
            label_text = str
        else:  # plain text: "Text: ... / Label: ..." lines, the labels after a space
            prompt = self.tokenize(_plain_classify_prompt(messages), special=False)
            label_text = " {}".format
        sequences = st.label_tokens(labels, lambda s: self.tokenize(label_text(s), special=False, add_bos=False))
        st.check_fits(len(prompt), labels, sequences, self.n_ctx)
        ends = st.end_tokens(labels, self._h.eog_tokens, self._terminator_tokens())
        # One after another: each reuses the prompt's cells the one before left in its slot.
        logprobs = []
        for seq, end in zip(sequences, ends):
            r = self._submit(list(prompt) + list(seq), {"max_tokens": 0}, stops=(), strip_leading=False,
                             score_from=len(prompt)).wait()
            logprobs.append(st.sequence_logprob(r._s.score_rows, seq, end))
        return st.label_probabilities(labels, logprobs)

    def extract(self, text: str, schema, *, instruction: str | None = None, max_tokens: int | None = 512):
        """The fields of ``schema`` (a JSON Schema dict or string, or a pydantic model class)
        found in ``text``, as a validated value; decoding is constrained to the schema."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidArgumentError("the text to extract from is empty")
        system = instruction or "Extract the information from the user's text as JSON. Use only what the text says."
        messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
        if self.has_chat_format:
            r = self.chat(messages, json_schema=schema, temperature=0, max_tokens=max_tokens)
        else:
            r = self.complete(f"{system}\nText: {text}\nJSON:", json_schema=schema, temperature=0,
                              max_tokens=max_tokens)
        return r.json()

    def _terminator_tokens(self) -> dict[int, str]:
        if self._terminators is None:
            from ..structured import terminator_tokens
            self._terminators = terminator_tokens(self._piece(t) for t in range(self.n_vocab))
        return self._terminators



def _plain_classify_prompt(messages: list[dict]) -> str:
    lines = [messages[0]["content"]]
    for m in messages[1:]:
        lines.append(("Text: " if m["role"] == "user" else "Label: ") + m["content"])
    return "\n".join(lines) + "\nLabel:"
