"""What every command gets from the global options: the settings, verbosity, and the runtime."""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from pydantic import ValidationError

from fleetguard.config import Settings
from fleetguard.errors import InvalidInput

if TYPE_CHECKING:
    from fleetguard.installation import Runtime

__all__ = ["CliContext", "cli_context", "load_settings", "operator_actor"]


@dataclass(frozen=True, slots=True)
class CliContext:
    """The global options of one invocation."""

    settings: Settings
    verbose: bool

    @contextmanager
    def runtime(self) -> Iterator[Runtime]:
        """Open the installation's services for one command and close them after it.

        Raises:
            NotInitialized: the data directory holds no installation.
            StoreUnavailable: the database cannot be opened or migrated.
        """
        from fleetguard.installation import Runtime

        runtime = Runtime(self.settings)
        try:
            yield runtime
        finally:
            runtime.close()


def load_settings(data_dir: Path, database_url: str | None) -> Settings:
    """Return the settings: the given options over ``FLEETGUARD_*`` variables over defaults.

    Raises:
        InvalidInput: a ``FLEETGUARD_*`` variable holds a value out of range or of the wrong type.
    """
    try:
        return Settings(data_dir=data_dir, database_url=database_url)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(part) for part in first["loc"])
        raise InvalidInput(
            f"setting {name} is invalid: {first['msg']}", hint=f"fix FLEETGUARD_{name.upper()}"
        ) from exc


def cli_context(ctx: typer.Context) -> CliContext:
    """Return the :class:`CliContext` that the root command stored."""
    obj = ctx.find_root().obj
    assert isinstance(obj, CliContext), "the root callback sets the context"
    return obj


def operator_actor() -> str:
    """Return the event-log actor for changes made from the command line: ``cli:<login name>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name in the environment and no passwd entry
        return "cli:unknown"
