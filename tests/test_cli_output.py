"""The CLI's one table renderer and its progress display (slmrun/cli/output.py, over rich)."""

from __future__ import annotations

import io
import re

from slmrun.cli.output import Progress, render_table

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_plain_tables_are_aligned_text():
    rows = [("tiny", "9.6 MiB", "[INST] {x}"), ("a-much-longer-name", "1.2 GiB", "")]
    text = render_table(("NAME", "SIZE", "NOTE"), rows, right=[1])
    assert text.splitlines() == [
        "NAME                   SIZE  NOTE",
        "tiny                9.6 MiB  [INST] {x}",  # not rich markup: printed as it is
        "a-much-longer-name  1.2 GiB",
    ]
    assert "\x1b" not in text


def test_a_table_without_header_and_long_cells_is_not_wrapped():
    long = "x" * 500
    assert render_table(None, [("key", long), ("k", "v")]).splitlines() == [f"key  {long}", "k    v"]


def test_on_a_terminal_the_header_is_bold_and_the_text_the_same():
    rows = [("tiny", "9.6 MiB")]
    tty = render_table(("NAME", "SIZE"), rows, tty=True)
    assert "\x1b[1m" in tty
    plain = render_table(("NAME", "SIZE"), rows)
    assert [line.rstrip() for line in ANSI.sub("", tty).splitlines()] == plain.splitlines()


def test_progress_in_a_pipe_is_one_line_per_finished_step():
    out = io.StringIO()
    progress = Progress(out)
    for done, label in [(0, "load"), (1, "load done"), (1, "pp warm-up"), (2, "pp"), (3, "tg")]:
        progress(done, 3, label)
    progress.close()
    assert out.getvalue().splitlines() == ["[1/3] load done", "[2/3] pp", "[3/3] tg"]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_on_a_terminal_is_a_bar_that_goes_away():
    out = _Terminal()
    progress = Progress(out)
    for done in range(4):
        progress(done, 3, f"step {done}")
    progress.close()
    drawn = ANSI.sub("", out.getvalue())
    assert "3/3" in drawn and "step 3" in drawn
    assert "[1/3]" not in drawn  # the pipe format is not used on a terminal
