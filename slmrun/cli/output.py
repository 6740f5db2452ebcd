"""How the CLI shows tables and progress: rich, imported only by the commands that print them.

On a terminal rich draws them (a bold header, a progress bar). Anywhere else (a pipe, a
file, a test) the same tables come out as plain aligned text with no colour, no wrapping
and no trailing spaces, and progress as one line per finished step, so scripts can read
them.
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
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

                self._bar = Progress(BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                     TextColumn("{task.description}"), console=Console(file=self.stream),
                                     transient=True)
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
