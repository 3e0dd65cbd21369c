"""The ``fleetguard`` program: global options, the command groups, and the entry point."""

from pathlib import Path
from typing import Annotated

import typer

from fleetguard.cli import (
    ca,
    certs,
    device_types,
    devices,
    enroll,
    events,
    firmware,
    policy,
    segment,
    sites,
    tokens,
)
from fleetguard.cli.context import CliContext, load_settings
from fleetguard.cli.exit_status import EXIT_STATUS_EPILOG, ReportingGroup
from fleetguard.cli.init import init_command
from fleetguard.cli.up import up_command

__all__ = ["app", "main"]

app = typer.Typer(
    cls=ReportingGroup,
    name="fleetguard",
    help=(
        "fleetguard: a self-hosted security control plane for IoT fleets.\n\n"
        "Start with: fleetguard init --trust-domain example.org, then fleetguard up. "
        "Every listing takes --json for scripts."
    ),
    epilog=EXIT_STATUS_EPILOG,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("init")(init_command)
app.command("up")(up_command)
app.add_typer(devices.app)
app.add_typer(sites.app)
app.add_typer(device_types.app)
app.add_typer(events.app)
app.add_typer(tokens.app)
app.add_typer(ca.app)
app.add_typer(certs.app)
app.add_typer(enroll.app)
app.add_typer(policy.app)
app.add_typer(segment.app)
app.add_typer(firmware.app)

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


@app.callback()
def root(
    ctx: typer.Context,
    data_dir: DataDir = Path("fleetguard-data"),
    database_url: DatabaseUrl = None,
    verbose: Verbose = False,
) -> None:
    """fleetguard: a self-hosted security control plane for IoT fleets."""
    ctx.obj = CliContext(settings=load_settings(data_dir, database_url), verbose=verbose)


def main() -> None:
    """Run the ``fleetguard`` program; exit with 0 ok, 1 failure, 2 usage or 130 interrupted."""
    app(prog_name="fleetguard")
