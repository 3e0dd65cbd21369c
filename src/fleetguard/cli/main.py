"""The ``fleetguard`` program: global options, the command groups, and the entry point."""

import importlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from fleetguard.cli.context import CliContext, load_settings
from fleetguard.cli.exit_status import EXIT_STATUS_EPILOG, ReportingGroup

__all__ = ["app", "build_app", "main"]  # noqa: F822 - app is made on first use (__getattr__)

_HELP = (
    "fleetguard: a self-hosted security control plane for IoT fleets.\n\n"
    "Start with: fleetguard init --trust-domain example.org, then fleetguard up. "
    "Every listing takes --json for scripts."
)
# Each command group's module, in the order `--help` lists them. `main` imports only the one a
# command line names (the whole tree takes a second and a half to import; one group a fraction).
_GROUPS = {
    "devices": "fleetguard.cli.devices",
    "sites": "fleetguard.cli.sites",
    "types": "fleetguard.cli.device_types",
    "events": "fleetguard.cli.events",
    "tokens": "fleetguard.cli.tokens",
    "ca": "fleetguard.cli.ca",
    "certs": "fleetguard.cli.certs",
    "enroll": "fleetguard.cli.enroll",
    "policy": "fleetguard.cli.policy",
    "segment": "fleetguard.cli.segment",
    "firmware": "fleetguard.cli.firmware",
    "ota": "fleetguard.cli.ota",
    "monitor": "fleetguard.cli.monitor",
}
# Root options that take a value, and so are not the command name.
_VALUED = {"--data-dir", "--database-url"}


def _new_app() -> typer.Typer:
    program = typer.Typer(
        cls=ReportingGroup,
        name="fleetguard",
        help=_HELP,
        epilog=EXIT_STATUS_EPILOG,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    program.callback()(root)
    return program


DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="FLEETGUARD_DATA_DIR",
        show_envvar=True,
        help="The installation's directory: installation file, signing keys, SQLite database.",
    ),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="FLEETGUARD_DATABASE_URL",
        show_envvar=True,
        help="SQLAlchemy URL of the database (default: SQLite in the data directory).",
    ),
]
Verbose = Annotated[bool, typer.Option("-v", "--verbose", help="Show tracebacks on failure and server logs.")]


def root(
    ctx: typer.Context,
    data_dir: DataDir = Path("fleetguard-data"),
    database_url: DatabaseUrl = None,
    verbose: Verbose = False,
) -> None:
    """fleetguard: a self-hosted security control plane for IoT fleets."""
    ctx.obj = CliContext(settings=load_settings(data_dir, database_url), verbose=verbose)


def build_app(only: str | None = None) -> typer.Typer:
    """The program: every command, or only ``only`` (a group or command name) and the root options."""
    program = _new_app()
    if only in (None, "init"):
        from fleetguard.cli.init import init_command

        program.command("init")(init_command)
    if only in (None, "up"):
        from fleetguard.cli.up import up_command

        program.command("up")(up_command)
    for name, module in _GROUPS.items():
        if only in (None, name):
            program.add_typer(importlib.import_module(module).app)
    return program


def _command_named(argv: list[str]) -> str | None:
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token in _VALUED:
            skip = True
        elif not token.startswith("-"):
            return token if token in _GROUPS or token in ("init", "up") else None
    return None


def main() -> None:
    """Run the ``fleetguard`` program; exit with 0 ok, 1 failure, 2 usage or 130 interrupted."""
    build_app(_command_named(sys.argv[1:]))(prog_name="fleetguard")


def __getattr__(name: str) -> typer.Typer:
    # ``app`` (the whole tree, for tests and tools) is built on first use, not when ``main`` runs.
    if name == "app":
        program = build_app()
        globals()["app"] = program
        return program
    raise AttributeError(name)
