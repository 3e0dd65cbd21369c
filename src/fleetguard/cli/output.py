"""How commands print: JSON for scripts, rich tables and field lists for people, progress on stderr.

Results go to stdout and nothing else does, so ``--json`` output can be piped; progress bars and
notices go to stderr. Values are rendered as plain text (never as rich markup), so a device named
``[red]`` prints as written.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

__all__ = [
    "JsonFlag",
    "StageProgress",
    "format_time",
    "print_fields",
    "print_json",
    "print_notice",
    "print_table",
    "progress_bar",
    "stderr_console",
    "stdout_console",
]

_PIPE_WIDTH = 4096  # columns when stdout is not a terminal: wide enough that no value is cut

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")]


def stdout_console() -> Console:
    """Return a console on the current stdout (made per use, so redirected streams are honoured).

    Piped into another program, lines are as wide as their content: nothing is cut off or folded.
    """
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = _PIPE_WIDTH
    return console


def stderr_console() -> Console:
    """Return a console on the current stderr."""
    return Console(stderr=True, highlight=False)


def print_json(value: object) -> None:
    """Print ``value`` as indented JSON on stdout."""
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


def print_records(
    records: Sequence[Mapping[str, object]],
    columns: Sequence[tuple[str, str]],
    *,
    as_json: bool,
    empty: str,
) -> None:
    """Print ``records`` as a JSON array, or as a table of ``(key, header)`` columns."""
    if as_json:
        print_json(list(records))
        return
    print_table(
        [header for _, header in columns],
        [[record[key] for key, _ in columns] for record in records],
        empty=empty,
    )


def print_table(columns: Sequence[str], rows: Iterable[Sequence[object]], *, empty: str) -> None:
    """Print ``rows`` as a table under ``columns``; print ``empty`` instead when there are none."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(_cell(value)) for value in row))
    if table.row_count == 0:
        print_notice(empty)
        return
    stdout_console().print(table)


def print_fields(fields: Sequence[tuple[str, object]]) -> None:
    """Print name/value pairs as two aligned columns."""
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in fields:
        table.add_row(Text(name), Text(_cell(value)))
    stdout_console().print(table)


def print_notice(text: str) -> None:
    """Print a one-line message for people on stderr."""
    typer.echo(text, err=True)


def progress_bar(console: Console | None = None) -> Progress:
    """Return a progress display on stderr; it shows nothing when stderr is not a terminal."""
    target = console or stderr_console()
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<11}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=target,
        disable=not target.is_terminal,
    )


def format_time(value: dt.datetime | None) -> str | None:
    """Return ``value`` as RFC 3339 UTC with a ``Z`` (as exports and the API write it), or None."""
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    return str(value)


class StageProgress:
    """Shows each stage of a long operation as its own bar, and tells ``observer`` (if any)."""

    def __init__(self, bar: Progress, observer: Callable[[str, int, int], None] | None = None) -> None:
        self._bar = bar
        self._observer = observer
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        task = self._tasks.get(stage)
        if task is None:
            task = self._tasks[stage] = self._bar.add_task(stage, total=total)
        self._bar.update(task, completed=done)
        if self._observer is not None:
            self._observer(stage, done, total)
