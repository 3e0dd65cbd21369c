"""``fleetguard sites``: the places devices are installed in."""

from typing import Annotated

import typer

from fleetguard.cli.context import cli_context, operator_actor
from fleetguard.cli.exit_status import EXIT_STATUS_EPILOG
from fleetguard.cli.output import JsonFlag, format_time, print_json, print_table
from fleetguard.inventory.model import Site

__all__ = ["app"]

app = typer.Typer(name="sites", help="List and add sites.", epilog=EXIT_STATUS_EPILOG, no_args_is_help=True)

SiteId = Annotated[
    str, typer.Argument(help="Site id: letters, digits, '.', '_', ':' or '-'.", show_default=False)
]
Name = Annotated[str, typer.Option("--name", help="Display name (default: the id).")]
Description = Annotated[str, typer.Option("--description", help="Free text.")]


@app.command("list")
def list_sites(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List every site, by id."""
    with cli_context(ctx).runtime() as runtime:
        sites = runtime.inventory.sites()
    if as_json:
        print_json([_record(site) for site in sites])
        return
    print_table(
        ("id", "name", "description", "created"),
        [(s.id, s.name, s.description, format_time(s.created_at)) for s in sites],
        empty="no sites yet: fleetguard sites add ID",
    )


@app.command("add")
def add_site(
    ctx: typer.Context,
    site_id: SiteId,
    name: Name = "",
    description: Description = "",
    as_json: JsonFlag = False,
) -> None:
    """Add a site; devices name it with --site."""
    with cli_context(ctx).runtime() as runtime:
        site = runtime.inventory.add_site(site_id, name, actor=operator_actor(), description=description)
    if as_json:
        print_json(_record(site))
        return
    typer.echo(f"added site {site.id}")


def _record(site: Site) -> dict[str, object]:
    return {
        "id": site.id,
        "name": site.name,
        "description": site.description,
        "created_at": format_time(site.created_at),
    }
