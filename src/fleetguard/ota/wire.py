"""The device-facing OTA protocol: check-in and step reports, as bytes in and values out.

Both ends use this module: the server (:mod:`fleetguard.ota.device_api`, on the installation's mTLS
endpoint, where the client certificate names the device) and the agent's update client.

* ``POST /ota/v1/checkin`` with :class:`CheckIn` → :class:`CheckInReply`. When nothing changed for the
  device, that one request of a few hundred bytes is the whole check; when the director's metadata
  for the device moved past the version the device holds, the reply says where to refresh the two
  TUF repositories (paths on the same server). The reply is a hint, never trusted for what to install:
  only the verified metadata decides (:mod:`fleetguard.ota.crosscheck`), so a forged "no update"
  can only delay an update, which the device also notices when its director timestamp expires.
* ``POST /ota/v1/report`` with :class:`StepReport` → 204; a refused report is a problem document
  (422) and changes nothing on the server.

Every body is bounded by :data:`MAX_BODY` and parsed strictly (unknown keys are refused).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetguard.ota.errors import ReportInvalid
from fleetguard.types import parse_utc

__all__ = [
    "CHECKIN_PATH",
    "DIRECTOR_PREFIX",
    "IMAGE_METADATA_PREFIX",
    "IMAGE_TARGETS_PREFIX",
    "MAX_BODY",
    "REPORT_PATH",
    "CheckIn",
    "CheckInReply",
    "StepReport",
]

CHECKIN_PATH = "/ota/v1/checkin"
REPORT_PATH = "/ota/v1/report"
DIRECTOR_PREFIX = "/ota/director/devices/"
IMAGE_METADATA_PREFIX = "/ota/image/metadata/"
IMAGE_TARGETS_PREFIX = "/ota/image/targets/"
MAX_BODY = 4096
_MAX_TEXT = 128
_MAX_DETAIL = 512


@dataclass(frozen=True, slots=True)
class CheckIn:
    """What the device runs, and which director metadata version it holds (0: none)."""

    hardware_id: str
    release: str
    release_counter: int
    director_version: int

    def to_bytes(self) -> bytes:
        """Serialize as compact JSON."""
        return _dump({
            "hardware_id": self.hardware_id, "release": self.release,
            "release_counter": self.release_counter, "director_version": self.director_version,
        })  # fmt: skip

    @classmethod
    def parse(cls, data: bytes) -> CheckIn:
        """Parse a check-in body; raise :class:`ReportInvalid`."""
        fields = _load(data, {"hardware_id", "release", "release_counter", "director_version"})
        return cls(
            hardware_id=_text(fields, "hardware_id"),
            release=_text(fields, "release"),
            release_counter=_counter(fields, "release_counter"),
            director_version=_counter(fields, "director_version"),
        )


@dataclass(frozen=True, slots=True)
class CheckInReply:
    """Whether to refresh: ``update`` and the director version the server serves for the device."""

    update: bool
    director_version: int

    def to_bytes(self) -> bytes:
        """Serialize as compact JSON (about 40 bytes)."""
        return _dump({"update": self.update, "director_version": self.director_version})

    @classmethod
    def parse(cls, data: bytes) -> CheckInReply:
        """Parse a check-in reply; raise :class:`ReportInvalid`."""
        fields = _load(data, {"update", "director_version"})
        update = fields["update"]
        if not isinstance(update, bool):
            raise ReportInvalid("check-in reply: update must be true or false")
        return cls(update, _counter(fields, "director_version"))


@dataclass(frozen=True, slots=True)
class StepReport:
    """A step of the device's update (the strings of ``fleetguard.agent.slots.UpdateStep``)."""

    campaign: str
    release: str
    step: str
    detail: str
    at: dt.datetime

    def to_bytes(self) -> bytes:
        """Serialize as compact JSON."""
        return _dump({
            "campaign": self.campaign, "release": self.release, "step": self.step,
            "detail": self.detail[:_MAX_DETAIL], "at": self.at.astimezone(dt.UTC).isoformat(),
        })  # fmt: skip

    @classmethod
    def parse(cls, data: bytes) -> StepReport:
        """Parse a report body; raise :class:`ReportInvalid`."""
        fields = _load(data, {"campaign", "release", "step", "detail", "at"})
        detail = fields["detail"]
        if not isinstance(detail, str) or len(detail) > _MAX_DETAIL:
            raise ReportInvalid(f"report: detail must be a string of at most {_MAX_DETAIL} characters")
        try:
            at = parse_utc(_text(fields, "at"))
        except ValueError as exc:
            raise ReportInvalid(f"report: at is not a UTC timestamp: {exc}") from exc
        return cls(_text(fields, "campaign"), _text(fields, "release"), _text(fields, "step"), detail, at)


def _dump(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _load(data: bytes, keys: set[str]) -> Mapping[str, Any]:
    if len(data) > MAX_BODY:
        raise ReportInvalid(f"body is {len(data)} bytes; at most {MAX_BODY}")
    try:
        value = json.loads(data, object_pairs_hook=_unique, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ReportInvalid(f"body is not JSON: {str(exc)[:120]}") from exc
    if not isinstance(value, dict):
        raise ReportInvalid("body must be a JSON object")
    if set(value) != keys:
        missing, unknown = sorted(keys - set(value)), sorted(set(value) - keys)
        raise ReportInvalid(f"body fields: missing {missing}, unknown {[u[:40] for u in unknown][:5]}")
    return value


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:40]!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _text(fields: Mapping[str, Any], key: str) -> str:
    value = fields[key]
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_TEXT or not value.isprintable():
        raise ReportInvalid(f"{key} must be printable text of 1 to {_MAX_TEXT} characters")
    return value


def _counter(fields: Mapping[str, Any], key: str) -> int:
    value = fields[key]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**62:
        raise ReportInvalid(f"{key} must be a non-negative integer")
    return value
