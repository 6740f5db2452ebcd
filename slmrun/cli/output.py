"""How the CLI shows tables, progress and streamed replies; rich, imported only by the
commands that print them.

On a terminal rich draws tables and progress (a bold header, a progress bar) and chat
replies are wrapped at word boundaries. Anywhere else (a pipe, a file, a test) tables
come out as plain aligned text with no colour, no wrapping and no trailing spaces, and
progress as one line per finished step, so scripts can read them.
"""

from __future__ import annotations

import io
import sys
from typing import Iterable, Sequence

import typer


def render_table(header: Sequence[str] | None, rows: Iterable[Sequence[str]], *, right: Iterable[int] = (),
                 tty: bool = False) -> str:
    """The table as text: columns two spaces apart, `right` (indexes) right-aligned, no
    header line when `header` is None. `tty` renders for a terminal (bold header, ANSI)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    rows = [list(r) for r in rows]
    width = len(header) if header is not None else max((len(r) for r in rows), default=0)
    right = set(right)
    table = Table(box=None, show_header=header is not None, header_style="bold" if tty else "", pad_edge=False,
                  padding=(0, 1), show_edge=False)
    for i in range(width):
        table.add_column(header[i] if header is not None else "", justify="right" if i in right else "left")
    for r in rows:
        table.add_row(*(Text(str(c)) for c in r))  # Text: a "[INST]" in a cell is not markup
    buf = io.StringIO()
    # Never fitted to the window: a squeezed table wraps every cell; an overlong line is
    # the terminal's to wrap, as it always was.
    console = Console(file=buf, width=1 << 16, force_terminal=tty, color_system="standard" if tty else None,
                      markup=False, highlight=False, emoji=False)
    console.print(table)
    return "\n".join(line.rstrip() for line in buf.getvalue().rstrip("\n").splitlines())


def echo_table(header: Sequence[str] | None, rows: Iterable[Sequence[str]], *, right: Iterable[int] = ()) -> None:
    """Print a table to stdout (see render_table), for a terminal when stdout is one."""
    typer.echo(render_table(header, rows, right=right, tty=sys.stdout.isatty()))


class Progress:
    """A progress callback, (steps done, steps in all, what runs now), shown on stderr: a rich
    progress bar on a terminal, one plain line per finished step otherwise. Call close()."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.done = 0
        self._bar = self._task = None

    def __call__(self, done: int, total: int, label: str) -> None:
        if self.tty:
            if self._bar is None:
                from rich.console import Console
                from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
                from rich.progress import Progress as Bar

                self._bar = Bar(BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("{task.description}"), console=Console(file=self.stream), transient=True)
                self._bar.start()
                self._task = self._bar.add_task(label, total=total)
            self._bar.update(self._task, completed=done, total=total, description=label)
        elif done != self.done:
            self.stream.write(f"[{done}/{total}] {label}\n")
            self.stream.flush()
        self.done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class WordWrap:
    """Streamed text wrapped at word boundaries to `width` terminal columns.

    textwrap needs the whole text; a reply arrives in pieces cut anywhere, mid-word too.
    So the current column is counted, and each word (and the spaces before it) is held
    back until it ends: a word that would pass the edge starts a new line, one wider than
    a whole line fills the line and is cut at the edge. Spaces at a break are dropped; the
    model's own newlines and indentation stay. Widths are terminal cells (CJK: two).
    """

    def __init__(self, write, width: int):
        from rich.cells import get_character_cell_size

        self._write, self._cells = write, get_character_cell_size
        self.width = max(1, width)
        self.col = 0  # cells already on the current line
        self.space, self.space_cells = "", 0  # whitespace waiting for the next word
        self.word, self.word_cells = "", 0
        self._broke = False  # the current line began at a break of ours
        self._long = False  # the word being written is wider than a line: it goes on where it is

    def write(self, text: str) -> None:
        for ch in text:
            if ch == "\n":
                self._flush_word()
                self.space, self.space_cells, self._long = "", 0, False
                self._write("\n")
                self.col, self._broke = 0, False
            elif ch in " \t":
                self._flush_word()
                self._long = False
                if self._broke and self.col == 0:
                    continue  # the spaces we broke the line at
                at = self.col + self.space_cells
                self.space += ch
                self.space_cells += 8 - at % 8 if ch == "\t" else 1
            else:
                self.word += ch
                self.word_cells += self._cells(ch)
                if self.word_cells > self.width:  # wider than any line: no need to wait for its end
                    self._flush_word()
                    self._long = True

    def close(self) -> None:
        """Write the word held back (the end of a reply); trailing spaces are dropped."""
        self._flush_word()

    def _newline(self) -> None:
        self._write("\n")
        self.col, self._broke = 0, True

    def _put(self, text: str, cells: int) -> None:
        self._write(text)
        self.col += cells
        self._broke = False

    def _flush_word(self) -> None:
        word, cells, space, space_cells = self.word, self.word_cells, self.space, self.space_cells
        if not word:
            return
        self.word, self.word_cells, self.space, self.space_cells = "", 0, "", 0
        if self.col + space_cells + cells <= self.width:
            self._put(space + word, space_cells + cells)
            return
        if cells <= self.width and self.col + space_cells > 0 and not self._long:
            self._newline()  # and the spaces before the word go
            self._put(word, cells)
            return
        # Wider than a line: fill what is left of this one, go on cutting at the edge.
        if self.col + space_cells < self.width:
            self._put(space, space_cells)
        elif self.col:
            self._newline()
        start, used = 0, self.col
        for i, ch in enumerate(word):
            size = self._cells(ch)
            if used + size > self.width and used:
                self._write(word[start:i])
                self._newline()
                start, used = i, 0
            used += size
        self._put(word[start:], 0)
        self.col = used
