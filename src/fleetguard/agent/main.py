"""The ``fleetguard-agent`` program: the device side of fleetguard."""

from typing import Annotated

import typer

from fleetguard import __version__
from fleetguard.cli.exit_status import EXIT_STATUS_EPILOG, ReportingGroup

__all__ = ["app", "main"]

app = typer.Typer(
    cls=ReportingGroup,
    name="fleetguard-agent",
    help=(
        "fleetguard-agent runs on a device. It will enroll the device with the fleet's CA (EST), keep "
        "its certificate renewed, connect to the MQTT broker with mutual TLS, install signed updates "
        "(TUF) with rollback, and report telemetry. Those commands arrive in later releases."
    ),
    epilog=EXIT_STATUS_EPILOG,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def root(
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Show tracebacks on failure.")] = False,
) -> None:
    """fleetguard-agent: the device side of fleetguard."""


@app.command("version")
def version() -> None:
    """Print the agent's version."""
    typer.echo(f"fleetguard-agent {__version__}")


def main() -> None:
    """Run the ``fleetguard-agent`` program; exit with 0 ok, 1 failure, 2 usage or 130 interrupted."""
    app(prog_name="fleetguard-agent")
