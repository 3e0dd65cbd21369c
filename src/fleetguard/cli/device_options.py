"""The device options shared by several commands: filters, record fields, labels and versions.

Each option is declared once here as an ``Annotated`` alias, so that ``devices list`` and ``devices
export`` filter alike and ``devices add`` and ``devices update`` name fields alike.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Annotated

import typer

from fleetguard.inventory.lifecycle import State
from fleetguard.inventory.model import DeviceFilter
from fleetguard.types import parse_utc

__all__ = [
    "CreatedAfter",
    "CreatedBefore",
    "DeviceIdArgument",
    "ExpectVersion",
    "FirmwareOption",
    "HardwareRevisionOption",
    "LabelOption",
    "ManufacturerOption",
    "ModelOption",
    "MudUrlOption",
    "OwnerOption",
    "ReasonOption",
    "SearchOption",
    "SeenAfter",
    "SeenBefore",
    "SerialOption",
    "SiteOption",
    "StateOption",
    "TypeOption",
    "device_filter",
    "parse_labels",
]

DeviceIdArgument = Annotated[str, typer.Argument(help="The device id.", show_default=False)]
SerialOption = Annotated[str | None, typer.Option("--serial", help="Serial number.")]
ManufacturerOption = Annotated[str | None, typer.Option("--manufacturer", help="Manufacturer.")]
ModelOption = Annotated[str | None, typer.Option("--model", help="Model.")]
TypeOption = Annotated[str | None, typer.Option("--type", help="Device type id.")]
HardwareRevisionOption = Annotated[str | None, typer.Option("--hardware-revision", help="Hardware revision.")]
FirmwareOption = Annotated[str | None, typer.Option("--firmware", help="Firmware version.")]
MudUrlOption = Annotated[str | None, typer.Option("--mud-url", help="MUD URL (https://, RFC 8520).")]
SiteOption = Annotated[str | None, typer.Option("--site", help="Site id.")]
OwnerOption = Annotated[str | None, typer.Option("--owner", help="Owner.")]
LabelOption = Annotated[
    list[str] | None, typer.Option("--label", metavar="KEY=VALUE", help="A label; repeat for more.")
]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why: recorded in the event log.")]
ExpectVersion = Annotated[
    int | None,
    typer.Option(
        "--expect-version",
        min=1,
        help="Refuse the change unless the device is at this version (as shown by devices show).",
    ),
]

StateOption = Annotated[State | None, typer.Option("--state", help="Lifecycle state.")]
SearchOption = Annotated[
    str | None,
    typer.Option("--search", metavar="TEXT", help="Substring of id, serial, model or owner."),
]
CreatedAfter = Annotated[
    str | None,
    typer.Option("--created-after", metavar="TIME", help="Created at or after (ISO 8601 with offset)."),
]
CreatedBefore = Annotated[
    str | None,
    typer.Option("--created-before", metavar="TIME", help="Created before (ISO 8601 with offset)."),
]
SeenAfter = Annotated[
    str | None,
    typer.Option("--seen-after", metavar="TIME", help="Last seen at or after (ISO 8601 with offset)."),
]
SeenBefore = Annotated[
    str | None,
    typer.Option("--seen-before", metavar="TIME", help="Last seen before (ISO 8601 with offset)."),
]


def parse_labels(values: Sequence[str] | None, option: str = "--label") -> dict[str, str]:
    """Return ``KEY=VALUE`` strings as a mapping; raise :class:`typer.BadParameter` (usage) otherwise."""
    labels: dict[str, str] = {}
    for value in values or ():
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{value!r} is not KEY=VALUE", param_hint=f"'{option}'")
        labels[key] = text
    return labels


def device_filter(
    *,
    serial: str | None = None,
    manufacturer: str | None = None,
    model: str | None = None,
    device_type: str | None = None,
    hardware_revision: str | None = None,
    firmware: str | None = None,
    mud_url: str | None = None,
    site: str | None = None,
    owner: str | None = None,
    state: State | None = None,
    labels: Sequence[str] | None = None,
    search: str | None = None,
    created_after: str | None = None,
    created_before: str | None = None,
    seen_after: str | None = None,
    seen_before: str | None = None,
) -> DeviceFilter:
    """Return the :class:`DeviceFilter` for the filter options; raise ``BadParameter`` on bad input."""
    return DeviceFilter(
        serial=serial,
        manufacturer=manufacturer,
        model=model,
        device_type=device_type,
        hardware_revision=hardware_revision,
        firmware_version=firmware,
        mud_url=mud_url,
        site=site,
        owner=owner,
        state=state,
        labels=parse_labels(labels),
        text=search,
        created_after=_time(created_after, "--created-after"),
        created_before=_time(created_before, "--created-before"),
        seen_after=_time(seen_after, "--seen-after"),
        seen_before=_time(seen_before, "--seen-before"),
    )


def _time(text: str | None, option: str) -> dt.datetime | None:
    if text is None:
        return None
    try:
        return parse_utc(text)
    except ValueError as exc:
        raise typer.BadParameter(
            f"{text!r} is not an ISO 8601 time with offset, e.g. 2025-01-31T12:00:00Z",
            param_hint=f"'{option}'",
        ) from exc
