"""Exit statuses of fleetguard's programs, and the root command group that maps outcomes to them.

Theory of operation: click already turns usage errors into its usage message and status 2, and typer
turns Ctrl-C into status 130. :class:`ReportingGroup` adds the rest at the one boundary every command
passes through: a :class:`~fleetguard.errors.FleetguardError` becomes ``error: <message> (<hint>)`` on
stderr and status 1; so does an operating-system error (a file that cannot be read) and, as a last
resort, any other exception, which is a bug. The traceback is printed only with ``-v``.
"""

from __future__ import annotations

import enum
import sys
import traceback
from typing import Any

import typer
from typer._click import Context as ClickContext  # typer vendors click; invoke() receives its Context
from typer.core import TyperGroup

from fleetguard.errors import FleetguardError

__all__ = ["EXIT_STATUS_EPILOG", "ExitStatus", "ReportingGroup", "failure_line"]


class ExitStatus(enum.IntEnum):
    """What a fleetguard program's exit status means."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    INTERRUPTED = 130  # 128 + SIGINT, the shell convention typer follows


EXIT_STATUS_EPILOG = (
    "Exit status: 0 ok; 1 failure (one line on stderr saying what to do next; -v adds the traceback); "
    "2 usage error; 130 interrupted."
)


def failure_line(exc: BaseException) -> str:
    """Return the one-line report of ``exc`` (without the ``error:`` prefix)."""
    if isinstance(exc, FleetguardError):
        text = str(exc)
    elif isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename is not None else ""
        text = f"{exc.strerror or exc}{where} (check the path and its permissions)"
    else:
        text = f"unexpected {type(exc).__name__}: {exc} (a bug: run again with -v and report the traceback)"
    return " ".join(text.split())


class ReportingGroup(TyperGroup):
    """The root command group: reports failures as one line and exits with :class:`ExitStatus`."""

    def invoke(self, ctx: ClickContext) -> Any:
        """Run the command; map a failure to one line on stderr and exit status 1."""
        try:
            return super().invoke(ctx)
        except (typer.TyperException, typer.Exit, typer.Abort, BrokenPipeError):
            raise  # click's own outcomes (usage errors, exits, aborts) and a closed pipe: typer's to report
        # The command-line boundary: every failure is reported here, once, then the program exits.
        except Exception as exc:  # noqa: BLE001
            _report(exc, verbose=bool(ctx.params.get("verbose")))
            raise typer.Exit(ExitStatus.FAILURE) from None


def _report(exc: Exception, *, verbose: bool) -> None:
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    typer.echo(f"error: {failure_line(exc)}", err=True)
