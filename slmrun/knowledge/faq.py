"""FAQ files as first-class data: CSV and JSONL of question/answer pairs, one entry per chunk.

CSV: a header row naming the columns (question/answer, q/a, questions/answers, prompt/response,
any case), or, with no such header, two columns: question then answer. JSONL: one object per
line with "question" and "answer" (or "q"/"a"). Rows and lines that are not an entry (an empty
answer, a line that is not JSON) are counted and said in one line at the end, the rest indexed.
Both stream: one row in memory at a time.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

from .chunking import Section
from .parsers import Unreadable

QUESTION_KEYS = ("question", "q", "questions", "prompt", "query")
ANSWER_KEYS = ("answer", "a", "answers", "response", "reply")


class BadRows(Exception):
    """Raised after the last entry of a file some of whose rows were not entries (a warning)."""

    def __init__(self, count: int, first: int, what: str):
        super().__init__(f"{count} {what}{'s' if count > 1 else ''} not a question/answer pair "
                         f"(the first: {what} {first}); the other entries are indexed")
        self.count = count


def faq_sections(path: Path, kind: str, encoding: str) -> Iterator[Section]:
    rows = _csv_rows(path, encoding) if kind == "csv" else _jsonl_rows(path, encoding)
    bad, first_bad, good = 0, 0, 0
    for number, pair in rows:
        if pair is None or not pair[0].strip() or not pair[1].strip():
            bad += 1
            first_bad = first_bad or number
            continue
        good += 1
        yield Section(pair[1], pair[0], faq=True)
    if not good:
        raise Unreadable(f"no question/answer pairs found (read as {kind.upper()}: "
                         + ("a header with question and answer columns, or two columns" if kind == "csv"
                            else 'one {"question": ..., "answer": ...} object per line') + ")")
    if bad:
        raise BadRows(bad, first_bad, "row" if kind == "csv" else "line")


def _pick(keys, names: list[str]) -> int | None:
    lowered = [n.strip().lower() for n in names]
    return next((lowered.index(k) for k in keys if k in lowered), None)


def _csv_rows(path: Path, encoding: str):
    with open(path, encoding=encoding, errors="replace", newline="") as f:
        sample = f.read(8192)
        f.seek(0)
        try:
            dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
        except csv.Error:
            dialect = csv.excel
        reader = csv.reader(f, dialect)
        try:
            header = next(reader)
        except (StopIteration, csv.Error):
            return
        q, a = _pick(QUESTION_KEYS, header), _pick(ANSWER_KEYS, header)
        if q is None or a is None:
            if len(header) < 2:
                raise Unreadable("a CSV FAQ needs two columns: question and answer")
            q, a = 0, 1
            yield 1, (header[0], header[1])  # no header: the first row is an entry
        try:
            for row in reader:
                number = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                yield number, (row[q], row[a]) if len(row) > max(q, a) else None
        except csv.Error as exc:
            raise Unreadable(f"not a readable CSV ({exc})") from None


def _jsonl_rows(path: Path, encoding: str):
    with open(path, encoding=encoding, errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                yield number, None
                continue
            if not isinstance(obj, dict):
                yield number, None
                continue
            keys = {str(k).lower(): v for k, v in obj.items()}
            question = next((keys[k] for k in QUESTION_KEYS if k in keys), None)
            answer = next((keys[k] for k in ANSWER_KEYS if k in keys), None)
            if isinstance(question, str) and isinstance(answer, str):
                yield number, (question, answer)
            else:
                yield number, None
