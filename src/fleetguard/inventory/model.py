"""Inventory records as frozen values, and the validation every way in (API, CLI, import) shares."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from fleetguard.errors import InvalidInput
from fleetguard.inventory.lifecycle import State
from fleetguard.types import DeviceId

__all__ = [
    "DEVICE_FIELDS",
    "Device",
    "DeviceChanges",
    "DeviceFilter",
    "DeviceSpec",
    "DeviceType",
    "Site",
    "validate_device_id",
    "validate_labels",
]

# A device id becomes a SPIFFE path segment, a certificate CN, an MQTT username and a topic level, so
# it excludes '/', '+', '#' and whitespace (MQTT 3.1.1 section 4.7; RFC 3986 segment characters).
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# Path segments under /v1/devices that are actions, not ids.
_RESERVED_IDS = frozenset({"export", "import"})
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_LABELS = 64
_MAX_LABEL_VALUE = 256
_TEXT_LIMITS = {
    "serial": 128,
    "manufacturer": 256,
    "model": 256,
    "hardware_revision": 128,
    "firmware_version": 128,
    "owner": 256,
    "mud_url": 2048,
}

DEVICE_FIELDS = (
    "id",
    "serial",
    "manufacturer",
    "model",
    "device_type",
    "hardware_revision",
    "firmware_version",
    "mud_url",
    "site",
    "owner",
    "labels",
)
"""The fields an operator sets; export adds state, created_at, updated_at, last_seen, version."""


def validate_device_id(value: str, what: str = "device id") -> str:
    """Return ``value`` if it is a valid id; raise :class:`InvalidInput` saying why not."""
    if value in _RESERVED_IDS:
        raise InvalidInput(f"{what} {value!r} is reserved (it names an API collection action)")
    if not _ID.fullmatch(value):
        raise InvalidInput(
            f"invalid {what} {value[:140]!r}: use 1-128 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit"
        )
    return value


def validate_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Return a plain copy of ``labels`` after checking count, key syntax and value length."""
    if len(labels) > _MAX_LABELS:
        raise InvalidInput(f"{len(labels)} labels; at most {_MAX_LABELS} are allowed")
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
            raise InvalidInput(f"invalid label key {str(key)[:80]!r}")
        if not isinstance(value, str) or len(value) > _MAX_LABEL_VALUE:
            raise InvalidInput(f"label {key!r} must be a string of at most {_MAX_LABEL_VALUE} chars")
    return dict(labels)


def _check_text(name: str, value: str | None) -> None:
    if value is None:
        return
    limit = _TEXT_LIMITS[name]
    if len(value) > limit:
        raise InvalidInput(f"{name} is {len(value)} characters; the limit is {limit}")
    if _CONTROL.search(value):
        raise InvalidInput(f"{name} contains control characters")


def _check_mud_url(value: str | None) -> None:
    # RFC 8520 section 10: the MUD URL MUST use the "https" scheme.
    if value and not value.startswith("https://"):
        raise InvalidInput(f"MUD URL {value[:80]!r} must be an https:// URL (RFC 8520 section 10)")


@dataclass(frozen=True, slots=True)
class Site:
    """A place devices are installed in."""

    id: str
    name: str
    description: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class DeviceType:
    """A kind of device (manufacturer + model), with the MUD URL its maker publishes."""

    id: str
    manufacturer: str
    model: str
    mud_url: str | None
    description: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """What is needed to register a device; ``id`` defaults to a new UUID when empty."""

    serial: str
    manufacturer: str
    id: str = ""
    model: str = ""
    device_type: str | None = None
    hardware_revision: str = ""
    firmware_version: str = ""
    mud_url: str | None = None
    site: str | None = None
    owner: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.id:
            validate_device_id(self.id)
        if not self.serial.strip():
            raise InvalidInput("serial must not be empty")
        if not self.manufacturer.strip():
            raise InvalidInput("manufacturer must not be empty")
        for name in _TEXT_LIMITS:
            _check_text(name, getattr(self, name))
        _check_mud_url(self.mud_url)
        if self.device_type is not None:
            validate_device_id(self.device_type, "device type id")
        if self.site is not None:
            validate_device_id(self.site, "site id")
        validate_labels(self.labels)


@dataclass(frozen=True, slots=True)
class DeviceChanges:
    """A partial update; a field left as None is unchanged (an empty mud_url clears it)."""

    model: str | None = None
    device_type: str | None = None
    hardware_revision: str | None = None
    firmware_version: str | None = None
    mud_url: str | None = None
    site: str | None = None
    owner: str | None = None
    labels: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        for name in ("model", "hardware_revision", "firmware_version", "owner", "mud_url"):
            _check_text(name, getattr(self, name))
        _check_mud_url(self.mud_url)
        if self.labels is not None:
            validate_labels(self.labels)
        for name in ("device_type", "site"):
            value = getattr(self, name)
            if value:
                validate_device_id(value, name.replace("_", " ") + " id")

    def is_empty(self) -> bool:
        """True when nothing would change."""
        return all(getattr(self, name) is None for name in self.__slots__)


@dataclass(frozen=True, slots=True)
class Device:
    """A device as the inventory holds it."""

    id: DeviceId
    serial: str
    manufacturer: str
    model: str
    device_type: str | None
    hardware_revision: str
    firmware_version: str
    mud_url: str | None
    site: str | None
    owner: str
    labels: Mapping[str, str]
    state: State
    created_at: dt.datetime
    updated_at: dt.datetime
    last_seen: dt.datetime | None
    version: int


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    """Search criteria; every given criterion must match (AND). Text fields match exactly, ``text``
    matches a substring of id, serial, model or owner."""

    id: str | None = None
    serial: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    device_type: str | None = None
    hardware_revision: str | None = None
    firmware_version: str | None = None
    mud_url: str | None = None
    site: str | None = None
    owner: str | None = None
    state: State | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    text: str | None = None
    created_after: dt.datetime | None = None
    created_before: dt.datetime | None = None
    seen_after: dt.datetime | None = None
    seen_before: dt.datetime | None = None
