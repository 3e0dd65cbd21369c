"""``fleetguard init``: create an installation (data directory, trust domain, keys, first admin token)."""

from typing import Annotated

import typer
from rich.text import Text

from fleetguard.cli.context import cli_context
from fleetguard.cli.output import JsonFlag, print_json, stdout_console
from fleetguard.installation import Installation, initialize
from fleetguard.types import utc_now

__all__ = ["init_command"]

TrustDomain = Annotated[
    str,
    typer.Option(
        "--trust-domain",
        envvar="FLEETGUARD_TRUST_DOMAIN",
        help="DNS name of this installation; device identities become spiffe://<trust-domain>/device/<id>.",
        show_envvar=True,
    ),
]


def init_command(ctx: typer.Context, trust_domain: TrustDomain, as_json: JsonFlag = False) -> None:
    """Create an installation in the data directory.

    Writes installation.json and the Ed25519 key that signs event-log checkpoints, creates the
    database, and prints the first admin API token. The token is shown only this once: store it
    in a password manager. Fails (exit 1) if the directory already holds an installation.
    """
    context = cli_context(ctx)
    installation, token = initialize(context.settings, trust_domain, now=utc_now())
    data_dir = str(context.settings.data_dir.resolve())
    if as_json:
        print_json(
            {
                "installation_id": installation.id,
                "trust_domain": installation.trust_domain,
                "data_dir": data_dir,
                "admin_token": token,
            }
        )
        return
    _print_created(installation, data_dir, token)


def _print_created(installation: Installation, data_dir: str, token: str) -> None:
    # soft_wrap: long paths and the token must stay on one line, copyable, at any terminal width.
    console = stdout_console()
    console.print(Text("fleetguard installation created", style="bold green"))
    for name, value in (
        ("data dir", data_dir),
        ("trust domain", installation.trust_domain),
        ("installation id", installation.id),
    ):
        console.print(Text(f"  {name + ':':<17}{value}"), soft_wrap=True)
    console.print(Text("  admin API token: ").append(token, style="bold"), soft_wrap=True)
    console.print(
        Text(
            "The admin token is shown only this once: store it now (only its hash is kept).", style="yellow"
        ),
        soft_wrap=True,
    )
    console.print(Text(f"Next: fleetguard --data-dir {data_dir} up"), soft_wrap=True)
