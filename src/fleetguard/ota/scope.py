"""The signed scope of a rollout: which fraction of which hardware may install a release, and when.

Theory of operation. A rollout's scope is not a server-side setting: it is part of the image
repository's targets metadata for the release (``custom.fleetguard.scope``), signed by the offline
release keys when an operator approves the campaign. The device checks it before installing, with
its own id and hardware id and its own clock, so that a compromised director (the online server)
cannot push a release to more devices, other hardware, or outside the window that the offline keys
approved (Uptane's "director compromise" threat, made concrete for staged rollouts).

The fraction is in parts per million. Every device has a stable bucket in ``[0, 1_000_000)``
derived from the campaign's salt and its id (SHA-256), so that the waves that the director plans
(devices in bucket order) and the check on the device agree exactly, without floating point.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from fleetguard.ota.errors import MetadataInvalid, ScopeViolation
from fleetguard.types import parse_utc

__all__ = ["PPM", "RolloutScope", "device_bucket", "require_in_scope"]

PPM = 1_000_000
_SALT = re.compile(r"[0-9a-f]{16,64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_MAX_HARDWARE_IDS = 256


def device_bucket(salt: str, device_id: str) -> int:
    """Return the device's bucket in ``[0, PPM)`` for the campaign ``salt`` (stable, uniform)."""
    digest = hashlib.sha256(f"{salt}\x00{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % PPM


@dataclass(frozen=True, slots=True)
class RolloutScope:
    """What the offline keys approved for one campaign of one release."""

    campaign: str
    fraction_ppm: int
    salt: str
    hardware_ids: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.campaign):
            raise MetadataInvalid(f"scope campaign {self.campaign[:80]!r} is not a valid name")
        if not 0 < self.fraction_ppm <= PPM:
            raise MetadataInvalid(f"scope fraction {self.fraction_ppm} ppm is outside 1..{PPM}")
        if not _SALT.fullmatch(self.salt):
            raise MetadataInvalid("scope salt must be 16 to 64 lower-case hex digits")
        if not self.hardware_ids or len(self.hardware_ids) > _MAX_HARDWARE_IDS:
            raise MetadataInvalid(f"scope must name 1 to {_MAX_HARDWARE_IDS} hardware ids")
        for hardware_id in self.hardware_ids:
            if not _NAME.fullmatch(hardware_id):
                raise MetadataInvalid(f"scope hardware id {hardware_id[:80]!r} is not a valid name")
        if self.not_before.tzinfo is None or self.not_after.tzinfo is None:
            raise MetadataInvalid("scope window must be timezone-aware")
        if self.not_after <= self.not_before:
            raise MetadataInvalid("scope window ends before it starts")

    def to_custom(self) -> dict[str, object]:
        """Return the JSON object stored under ``custom.fleetguard.scope``."""
        return {
            "campaign": self.campaign,
            "fraction_ppm": self.fraction_ppm,
            "salt": self.salt,
            "hardware_ids": list(self.hardware_ids),
            "not_before": _iso(self.not_before),
            "not_after": _iso(self.not_after),
        }

    @classmethod
    def from_custom(cls, value: object) -> RolloutScope:
        """Parse ``custom.fleetguard.scope``; raise :class:`MetadataInvalid` on anything malformed."""
        if not isinstance(value, Mapping):
            raise MetadataInvalid("scope must be a JSON object")
        try:
            hardware = value["hardware_ids"]
            fraction = value["fraction_ppm"]
            if not isinstance(hardware, list) or not all(isinstance(h, str) for h in hardware):
                raise MetadataInvalid("scope hardware_ids must be a list of strings")
            if not isinstance(fraction, int) or isinstance(fraction, bool):
                raise MetadataInvalid("scope fraction_ppm must be an integer")
            # Strings only: str() would turn a signed number into a salt or a campaign name.
            text = {name: value[name] for name in ("campaign", "salt", "not_before", "not_after")}
            for name, field in text.items():
                if not isinstance(field, str):
                    raise MetadataInvalid(f"scope {name} must be a string")
            return cls(
                campaign=text["campaign"],
                fraction_ppm=fraction,
                salt=text["salt"],
                hardware_ids=tuple(hardware),
                not_before=parse_utc(text["not_before"]),
                not_after=parse_utc(text["not_after"]),
            )
        except KeyError as exc:
            raise MetadataInvalid(f"scope lacks {exc.args[0]!r}") from exc
        except (ValueError, OverflowError) as exc:  # OverflowError: year 1 shifted to UTC
            raise MetadataInvalid(f"scope window is not a valid UTC time: {exc}") from exc

    def covers(self, bucket: int) -> bool:
        """Whether a device in ``bucket`` is inside the approved fraction."""
        return bucket < self.fraction_ppm


def require_in_scope(scope: RolloutScope, *, device_id: str, hardware_id: str, now: dt.datetime) -> None:
    """Raise :class:`ScopeViolation` unless this device may install under ``scope`` at ``now``."""
    if hardware_id not in scope.hardware_ids:
        raise ScopeViolation(
            f"hardware id {hardware_id!r} is not in the signed scope of campaign {scope.campaign}"
        )
    if not scope.not_before <= now < scope.not_after:
        raise ScopeViolation(
            f"{_iso(now)} is outside the signed window of campaign {scope.campaign} "
            f"({_iso(scope.not_before)} .. {_iso(scope.not_after)})"
        )
    bucket = device_bucket(scope.salt, device_id)
    if not scope.covers(bucket):
        raise ScopeViolation(
            f"device {device_id} (bucket {bucket}) is outside the signed fraction of campaign "
            f"{scope.campaign} ({scope.fraction_ppm} ppm)"
        )


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
