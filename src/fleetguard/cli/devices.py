"""``fleetguard devices``: list, show, register, update and move devices through their lifecycle.

Lifecycle commands follow the transition table in :mod:`fleetguard.inventory.lifecycle`; an action
the table forbids fails with the actions that are allowed. ``--expect-version`` makes a change
conditional on the version last read (optimistic locking), so two operators cannot overwrite each
other unnoticed. Import and export live in :mod:`fleetguard.cli.device_transfer`.
"""

import dataclasses
from typing import Annotated

import typer

from fleetguard.cli.context import cli_context, operator_actor
from fleetguard.cli.device_options import (
    CreatedAfter,
    CreatedBefore,
    DeviceIdArgument,
    ExpectVersion,
    FirmwareOption,
    HardwareRevisionOption,
    LabelOption,
    ManufacturerOption,
    ModelOption,
    MudUrlOption,
    OwnerOption,
    ReasonOption,
    SearchOption,
    SeenAfter,
    SeenBefore,
    SerialOption,
    SiteOption,
    StateOption,
    TypeOption,
    device_filter,
    parse_labels,
)
from fleetguard.cli.device_transfer import export_command, import_command
from fleetguard.cli.exit_status import EXIT_STATUS_EPILOG
from fleetguard.cli.output import JsonFlag, print_fields, print_json, print_notice, print_table
from fleetguard.inventory.lifecycle import Action
from fleetguard.inventory.model import Device, DeviceChanges, DeviceSpec
from fleetguard.inventory.service import Inventory
from fleetguard.inventory.transfer import export_record

__all__ = ["app"]

app = typer.Typer(
    name="devices",
    help="List, show, register, update, import and export devices; move them through their lifecycle.",
    epilog=EXIT_STATUS_EPILOG,
    no_args_is_help=True,
)

_LIST_COLUMNS = ("id", "serial", "manufacturer", "model", "state", "site", "firmware", "version")

Limit = Annotated[int, typer.Option("--limit", min=1, max=10_000, help="At most this many devices.")]
After = Annotated[
    str | None, typer.Option("--after", metavar="ID", help="Start after this device id (paging).")
]
RequiredSerial = Annotated[str, typer.Option("--serial", help="Serial number.", show_default=False)]
RequiredManufacturer = Annotated[
    str, typer.Option("--manufacturer", help="Manufacturer.", show_default=False)
]
NewId = Annotated[str, typer.Option("--id", help="Device id (default: a new UUID).", show_default=False)]
RemoveLabel = Annotated[
    list[str] | None, typer.Option("--remove-label", metavar="KEY", help="Remove a label; repeat for more.")
]


@app.command("list")
def list_devices(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    ctx: typer.Context,
    serial: SerialOption = None,
    manufacturer: ManufacturerOption = None,
    model: ModelOption = None,
    device_type: TypeOption = None,
    hardware_revision: HardwareRevisionOption = None,
    firmware: FirmwareOption = None,
    mud_url: MudUrlOption = None,
    site: SiteOption = None,
    owner: OwnerOption = None,
    state: StateOption = None,
    label: LabelOption = None,
    search: SearchOption = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    seen_after: SeenAfter = None,
    seen_before: SeenBefore = None,
    limit: Limit = 100,
    after: After = None,
    as_json: JsonFlag = False,
) -> None:
    """List devices matching every given filter, ordered by id."""
    criteria = device_filter(
        serial=serial, manufacturer=manufacturer, model=model, device_type=device_type,
        hardware_revision=hardware_revision, firmware=firmware, mud_url=mud_url, site=site, owner=owner,
        state=state, labels=label, search=search, created_after=created_after,
        created_before=created_before, seen_after=seen_after, seen_before=seen_before,
    )  # fmt: skip
    with cli_context(ctx).runtime() as runtime:
        devices = runtime.inventory.find(criteria, limit=limit, after=after)
    if as_json:
        print_json([export_record(device) for device in devices])
        return
    rows = [
        (d.id, d.serial, d.manufacturer, d.model, d.state, d.site, d.firmware_version, d.version)
        for d in devices
    ]
    print_table(_LIST_COLUMNS, rows, empty="no devices match")
    if len(devices) == limit:
        print_notice(f"more may match: add --after {devices[-1].id}")


@app.command("show")
def show_device(ctx: typer.Context, device_id: DeviceIdArgument, as_json: JsonFlag = False) -> None:
    """Show one device with every field, its state and its version."""
    with cli_context(ctx).runtime() as runtime:
        device = runtime.inventory.get(device_id)
    _print_device(device, as_json=as_json)


@app.command("add")
def add_device(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    ctx: typer.Context,
    serial: RequiredSerial,
    manufacturer: RequiredManufacturer,
    device_id: NewId = "",
    model: ModelOption = None,
    device_type: TypeOption = None,
    site: SiteOption = None,
    owner: OwnerOption = None,
    firmware: FirmwareOption = None,
    hardware_revision: HardwareRevisionOption = None,
    mud_url: MudUrlOption = None,
    label: LabelOption = None,
    reason: ReasonOption = "",
    as_json: JsonFlag = False,
) -> None:
    """Register a device (state: registered). The site and device type must exist."""
    spec = DeviceSpec(
        serial=serial, manufacturer=manufacturer, id=device_id, model=model or "", device_type=device_type,
        hardware_revision=hardware_revision or "", firmware_version=firmware or "", mud_url=mud_url,
        site=site, owner=owner or "", labels=parse_labels(label),
    )  # fmt: skip
    with cli_context(ctx).runtime() as runtime:
        device = runtime.inventory.register(spec, actor=operator_actor(), reason=reason)
    if as_json:
        print_json(export_record(device))
        return
    typer.echo(f"registered device {device.id} (version {device.version})")


@app.command("update")
def update_device(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    ctx: typer.Context,
    device_id: DeviceIdArgument,
    model: ModelOption = None,
    device_type: TypeOption = None,
    site: SiteOption = None,
    owner: OwnerOption = None,
    firmware: FirmwareOption = None,
    hardware_revision: HardwareRevisionOption = None,
    mud_url: MudUrlOption = None,
    label: LabelOption = None,
    remove_label: RemoveLabel = None,
    expect_version: ExpectVersion = None,
    reason: ReasonOption = "",
    as_json: JsonFlag = False,
) -> None:
    """Change a device's fields; pass '' to --type, --site or --mud-url to clear it.

    --label sets or replaces one label and --remove-label removes one; the other labels stay.
    """
    changes = DeviceChanges(
        model=model, device_type=device_type, hardware_revision=hardware_revision, firmware_version=firmware,
        mud_url=mud_url, site=site, owner=owner,
    )  # fmt: skip
    with cli_context(ctx).runtime() as runtime:
        device = _update(
            runtime.inventory, device_id, changes, parse_labels(label), remove_label or [],
            expect_version=expect_version, reason=reason,
        )  # fmt: skip
    if as_json:
        print_json(export_record(device))
        return
    typer.echo(f"updated device {device.id} (version {device.version})")


def _update(
    inventory: Inventory,
    device_id: str,
    changes: DeviceChanges,
    set_labels: dict[str, str],
    remove_labels: list[str],
    *,
    expect_version: int | None,
    reason: str,
) -> Device:
    if set_labels or remove_labels:
        # Labels are replaced as a whole, so merge with what was read and require that version:
        # a concurrent label change fails instead of being overwritten.
        current = inventory.get(device_id)
        merged = {k: v for k, v in {**current.labels, **set_labels}.items() if k not in remove_labels}
        changes = dataclasses.replace(changes, labels=merged)
        expect_version = expect_version or current.version
    return inventory.update(
        device_id, changes, actor=operator_actor(), reason=reason, expected_version=expect_version
    )


def _print_device(device: Device, *, as_json: bool) -> None:
    record = export_record(device)
    if as_json:
        print_json(record)
        return
    labels = ", ".join(f"{k}={v}" for k, v in sorted(device.labels.items()))
    print_fields([(name, labels if name == "labels" else value) for name, value in record.items()])


# -- lifecycle ---------------------------------------------------------------------------------

_LIFECYCLE_HELP = {
    Action.PROVISION: "Mark a registered device provisioned (its identity was issued).",
    Action.ACTIVATE: "Let a provisioned device connect (state: active).",
    Action.QUARANTINE: "Cut an active device off pending investigation; --reason is required.",
    Action.RELEASE: "Return a quarantined device to active.",
    Action.DECOMMISSION: "Retire a device for good (terminal); --reason is required.",
}
_REASON_REQUIRED = frozenset({Action.QUARANTINE, Action.DECOMMISSION})

RequiredReason = Annotated[
    str, typer.Option("--reason", help="Why: recorded in the event log.", show_default=False)
]


def _transition(
    ctx: typer.Context,
    action: Action,
    *,
    device_id: str,
    reason: str,
    expect_version: int | None,
    as_json: bool,
) -> None:
    with cli_context(ctx).runtime() as runtime:
        device = runtime.inventory.transition(
            device_id, action, actor=operator_actor(), reason=reason, expected_version=expect_version
        )
    if as_json:
        print_json(export_record(device))
        return
    typer.echo(f"device {device.id} is now {device.state} (version {device.version})")


def _add_lifecycle_command(action: Action) -> None:
    help_text = _LIFECYCLE_HELP[action]
    if action in _REASON_REQUIRED:

        def command_with_reason(
            ctx: typer.Context,
            device_id: DeviceIdArgument,
            reason: RequiredReason,
            expect_version: ExpectVersion = None,
            as_json: JsonFlag = False,
        ) -> None:
            _transition(
                ctx,
                action,
                device_id=device_id,
                reason=reason,
                expect_version=expect_version,
                as_json=as_json,
            )

        app.command(action.value, help=help_text)(command_with_reason)
        return

    def command(
        ctx: typer.Context,
        device_id: DeviceIdArgument,
        reason: ReasonOption = "",
        expect_version: ExpectVersion = None,
        as_json: JsonFlag = False,
    ) -> None:
        _transition(
            ctx, action, device_id=device_id, reason=reason, expect_version=expect_version, as_json=as_json
        )

    app.command(action.value, help=help_text)(command)


for _action in Action:
    _add_lifecycle_command(_action)

app.command("import")(import_command)
app.command("export")(export_command)
