"""``fleetguard types``: kinds of device (manufacturer and model) and the MUD URL their maker publishes."""

from typing import Annotated

import typer

from fleetguard.cli.context import cli_context, operator_actor
from fleetguard.cli.exit_status import EXIT_STATUS_EPILOG
from fleetguard.cli.output import JsonFlag, format_time, print_json, print_table
from fleetguard.inventory.model import DeviceType

__all__ = ["app"]

app = typer.Typer(
    name="types", help="List and add device types.", epilog=EXIT_STATUS_EPILOG, no_args_is_help=True
)

TypeId = Annotated[
    str, typer.Argument(help="Device type id: letters, digits, '.', '_', ':' or '-'.", show_default=False)
]
Manufacturer = Annotated[str, typer.Option("--manufacturer", help="Manufacturer.")]
Model = Annotated[str, typer.Option("--model", help="Model.")]
MudUrl = Annotated[str | None, typer.Option("--mud-url", help="MUD URL (https://, RFC 8520).")]
Description = Annotated[str, typer.Option("--description", help="Free text.")]


@app.command("list")
def list_types(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List every device type, by id."""
    with cli_context(ctx).runtime() as runtime:
        types = runtime.inventory.device_types()
    if as_json:
        print_json([_record(device_type) for device_type in types])
        return
    print_table(
        ("id", "manufacturer", "model", "MUD URL", "description"),
        [(t.id, t.manufacturer, t.model, t.mud_url, t.description) for t in types],
        empty="no device types yet: fleetguard types add ID",
    )


@app.command("add")
def add_type(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    ctx: typer.Context,
    type_id: TypeId,
    manufacturer: Manufacturer = "",
    model: Model = "",
    mud_url: MudUrl = None,
    description: Description = "",
    as_json: JsonFlag = False,
) -> None:
    """Add a device type; devices name it with --type."""
    with cli_context(ctx).runtime() as runtime:
        device_type = runtime.inventory.add_device_type(
            type_id, actor=operator_actor(), manufacturer=manufacturer, model=model, mud_url=mud_url,
            description=description,
        )  # fmt: skip
    if as_json:
        print_json(_record(device_type))
        return
    typer.echo(f"added device type {device_type.id}")


def _record(device_type: DeviceType) -> dict[str, object]:
    return {
        "id": device_type.id,
        "manufacturer": device_type.manufacturer,
        "model": device_type.model,
        "mud_url": device_type.mud_url,
        "description": device_type.description,
        "created_at": format_time(device_type.created_at),
    }
