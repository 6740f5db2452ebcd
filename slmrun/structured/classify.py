"""Classification from the model's own probabilities: pure functions the engine calls.

``model.classify(text, labels)`` asks the model, in a chat, which label fits, and instead of
sampling an answer scores every label by teacher forcing: the log-probability that the
reply is exactly that label's tokens and then ends. Normalised over the labels, that is the
model's probability of each label given that it answers with one of them.

Why "and then ends": labels can share a prefix ("positive" / "positively"). Scoring the
label tokens alone gives P(positive) >= P(positive)·P(ly | positive) = P(positively) for
every input, so the shorter label would win whenever the two are close, whatever the text.
Appending an end marker makes each score the probability of a *whole* answer:
P(positive, END) against P(positive, ly, END), events that exclude each other, so neither is
favoured by being a prefix.

What counts as the end: the end-of-turn tokens, and also a token starting with punctuation or
a newline ("positive." and "New York\n..." are that answer too: a 135M model rarely ends its
turn right after the label, and P(END) would otherwise mostly measure that habit). A
terminator character that continues a longer label is left out of that label's end set
("v1" / "v1.2": "." does not end "v1"), which keeps the answers exclusive. The end's
probability is the sum over its set. Labels are scored exactly as written: "Positive" and
"positive" are different answers.

No length normalisation: dividing by the token count would stop the scores being
probabilities, and the end marker already removes the bias length normalisation works around.

The engine's part (``score``): decode the prompt, then each label's tokens after it, keeping
the logits row before every label token and after the last one (len(tokens) + 1 rows per
label, the first row shared by all labels), and once per model find the terminator tokens
(``terminator_tokens`` over the vocabulary's pieces).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from ..errors import ContextOverflowError, InvalidArgumentError


@dataclass(frozen=True)
class Classification:
    label: str  # the most probable label
    probabilities: dict[str, float]  # every label, in the order given; sums to 1
    logprobs: dict[str, float]  # log P(reply == label, then the end marker | prompt)

    def to_dict(self) -> dict:
        return {"label": self.label, "probabilities": self.probabilities, "logprobs": self.logprobs}


def check_labels(labels: Sequence[str]) -> list[str]:
    """The labels as a list, refusing what would make the probabilities meaningless."""
    if isinstance(labels, str):
        raise InvalidArgumentError(f"labels must be a list of strings, got the string {labels!r}",
                                   hint='Pass a list, e.g. ["spam", "ham"] (the CLI: --labels spam,ham).')
    labels = list(labels)
    if len(labels) < 2:
        raise InvalidArgumentError(
            "classification needs at least two labels" + (f", got only {labels[0]!r}" if labels else ", got none"),
            hint='Pass the labels to choose between, e.g. ["spam", "ham"].')
    seen: set[str] = set()
    for label in labels:
        if not isinstance(label, str):
            raise InvalidArgumentError(f"labels must be strings, got {label!r}")
        if not label.strip():
            raise InvalidArgumentError("a label is empty", hint="Remove the empty label (check for a stray comma).")
        if label in seen:
            # Two copies would split one answer's probability between them.
            raise InvalidArgumentError(f"the label {label!r} is given twice", hint="List each label once.")
        seen.add(label)
    return labels


def label_tokens(labels: Sequence[str], tokenize: Callable[[str], list[int]]) -> list[tuple[int, ...]]:
    """Each label's tokens as the reply would hold them (``tokenize`` without BOS). Two labels
    that tokenize the same cannot be told apart by their probabilities: refused."""
    labels = check_labels(labels)
    sequences = [tuple(tokenize(label)) for label in labels]
    first: dict[tuple[int, ...], str] = {}
    for label, tokens in zip(labels, sequences):
        if not tokens:
            raise InvalidArgumentError(f"the label {label!r} has no tokens")
        if tokens in first:
            raise InvalidArgumentError(f"the labels {first[tokens]!r} and {label!r} are the same tokens to the model",
                                       hint="Use labels that differ in more than invisible characters.")
        first[tokens] = label
    return sequences


def check_fits(prompt_tokens: int, labels: Sequence[str], sequences: Sequence[Sequence[int]], n_ctx: int) -> None:
    """Scoring a label decodes its tokens after the prompt: prompt + label must fit the context."""
    if prompt_tokens >= n_ctx:
        raise ContextOverflowError(
            f"the classification prompt is {prompt_tokens} tokens but the context holds {n_ctx}",
            hint="Shorten the text, the instruction or the examples, or load the model with a larger context (--ctx).")
    for label, tokens in zip(labels, sequences):
        need = prompt_tokens + len(tokens)
        if need > n_ctx:
            shown = label if len(label) <= 40 else label[:37] + "..."
            raise ContextOverflowError(
                f"the label {shown!r} is {len(tokens)} token{'s' if len(tokens) > 1 else ''}: after the {prompt_tokens}-token prompt it needs "
                f"{need} positions but the context holds {n_ctx}",
                hint="Use shorter labels or text, or load the model with a larger context (--ctx).")


# Characters that end an answer when a token starts with them (see the module docstring).
TERMINATORS = "\n\r.,;:!?"


def terminator_tokens(pieces) -> dict[int, str]:
    """Token id -> first character, for the tokens whose text starts with a terminator;
    ``pieces`` is each token's bytes, in id order. Once per model."""
    out = {}
    for token, piece in enumerate(pieces):
        first = piece[:1].decode("latin-1") if piece else ""
        if first and first in TERMINATORS:
            out[token] = first
    return out


def end_tokens(labels: Sequence[str], eog_tokens: Sequence[int], terminators: Mapping[int, str]) -> list[list[int]]:
    """For each label, the tokens that end an answer right after it: the end-of-generation
    tokens and the terminators, less those whose first character continues a longer label."""
    out = []
    for label in labels:
        continuing = {other[len(label)] for other in labels if len(other) > len(label) and other.startswith(label)}
        out.append(list(eog_tokens) + [t for t, first in terminators.items() if first not in continuing])
    return out


def sequence_logprob(rows, tokens: Sequence[int], end_tokens: Sequence[int]) -> float:
    """log P(tokens, then one of end_tokens) from logits ``rows``: row i is the model's logits
    after the prompt and tokens[:i], so there are len(tokens) + 1 rows."""
    import numpy as np

    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[0] != len(tokens) + 1:
        raise InvalidArgumentError(f"need {len(tokens) + 1} logits rows for {len(tokens)} tokens, got {rows.shape}")
    if not end_tokens:
        raise InvalidArgumentError("no end-of-reply tokens to score the label's end with")
    peak = rows.max(axis=1, keepdims=True)
    log_norm = (peak[:, 0] + np.log(np.exp(rows - peak).sum(axis=1)))  # log-sum-exp per row
    total = float(sum(rows[i, t] - log_norm[i] for i, t in enumerate(tokens)))
    last = rows[-1, list(end_tokens)] - log_norm[-1]
    top = last.max()
    return total + float(top + np.log(np.exp(last - top).sum()))


def label_probabilities(labels: Sequence[str], logprobs: Sequence[float]) -> Classification:
    """Normalise per-label log-probabilities into probabilities over the labels (a softmax)."""
    labels = list(labels)
    if len(labels) != len(logprobs):
        raise InvalidArgumentError(f"{len(labels)} labels but {len(logprobs)} scores")
    finite = [lp for lp in logprobs if lp != -math.inf]
    if not finite:
        raise InvalidArgumentError("every label has probability zero under the model",
                                   hint="Check the labels tokenize to text the model can produce.")
    top = max(finite)
    weights = [math.exp(lp - top) if lp != -math.inf else 0.0 for lp in logprobs]
    total = sum(weights)
    probabilities = {label: w / total for label, w in zip(labels, weights)}
    best = max(range(len(labels)), key=lambda i: logprobs[i])  # ties: the first label listed
    return Classification(label=labels[best], probabilities=probabilities,
                          logprobs={label: float(lp) for label, lp in zip(labels, logprobs)})


def classify_messages(text: str, labels: Sequence[str], *, instruction: str | None = None,
                      examples: Sequence[tuple[str, str]] | Mapping[str, str] | None = None) -> list[dict]:
    """The chat that asks for one label: an instruction (default: name the labels), optional
    worked examples as earlier turns, then the text. The reply is what gets scored."""
    labels = check_labels(labels)
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgumentError("the text to classify is empty")
    system = instruction or ("Classify the text. Answer with exactly one of these labels and nothing else: "
                             + ", ".join(labels) + ".")
    messages = [{"role": "system", "content": system}]
    pairs = list(examples.items()) if isinstance(examples, Mapping) else list(examples or [])
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise InvalidArgumentError(f"an example must be a (text, label) pair, got {pair!r}")
        example_text, example_label = pair
        if example_label not in labels:
            raise InvalidArgumentError(f"the example label {example_label!r} is not one of the labels {labels}",
                                       hint="Label every example with one of the labels.")
        messages += [{"role": "user", "content": example_text}, {"role": "assistant", "content": example_label}]
    messages.append({"role": "user", "content": text})
    return messages
