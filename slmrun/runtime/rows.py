"""Logits rows read off llama.cpp's buffer: copies, log-probabilities, OpenAI's logprobs shape."""

from __future__ import annotations


def row_copy(logits):
    import numpy as np

    return np.ctypeslib.as_array(logits).copy()


def logsoftmax_row(logits):
    """A copy of a logits row (before any constraint masks it) and its log-normaliser."""
    import numpy as np

    row = np.ctypeslib.as_array(logits).copy()
    m = float(row.max())
    return row, m + float(np.log(np.exp(row - m).sum()))


def logprob_entry(row, logz: float, token: int, k: int) -> dict:
    """OpenAI's per-token shape: the chosen token's log-probability and the k likeliest."""
    import numpy as np

    entry = {"token": token, "logprob": float(row[token]) - logz}
    if k:
        top = np.argpartition(-row, k)[:k]
        top = top[np.argsort(-row[top])]
        entry["top_logprobs"] = [{"token": int(t), "logprob": float(row[t]) - logz} for t in top]
    return entry
