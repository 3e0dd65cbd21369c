"""The fleet's firmware posture policy: a minimum version per device type and an end-of-life list.

Cedar compares strings only for equality, so version ordering is decided here and handed to the
policies as booleans (``posture.firmware_compliant``, ``posture.end_of_life``). Versions compare
numerically component by component (``1.10.0 > 1.9.3``, ``v1.2 == 1.2``); a component with letters
compares before the numeric ones of the same position, by text; trailing zeros do not count
(``1.2 == 1.2.0``), and a version that goes on with letters where another ends is older: a
pre-release is older than its release (``2.0.0rc1 < 2.0.0``), so it never meets a minimum of the
release (fail closed).

Fail closed: a firmware version that is empty, not a version, or of another scheme than the minimum
(``unknown`` against ``2.0``: a word against a number) is never compliant when a minimum is set. A
version is at end of life when it equals an entry as versions compare (``v1.0`` is ``1.0``), so a
device that spells its version differently is still caught.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from fleetguard.trust.errors import TrustInputInvalid
from fleetguard.trust.model import Posture

__all__ = ["ANY_TYPE", "FirmwarePolicy", "compare_versions", "posture_of"]

ANY_TYPE = "*"
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_~-]{0,63}")  # whole string: `$` would pass a final \n
_PART = re.compile(r"(\d+|[A-Za-z]+)")


@dataclass(frozen=True, slots=True)
class FirmwarePolicy:
    """Minimum firmware per device type (``*`` for any type) and versions at end of life.

    An end-of-life entry is ``VERSION`` (any type) or ``TYPE@VERSION``.
    """

    minimum: Mapping[str, str] = field(default_factory=dict)
    end_of_life: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for device_type, version in self.minimum.items():
            _require_version(version, f"minimum for {device_type!r}")
        for entry in self.end_of_life:
            _require_version(entry.rpartition("@")[2], f"end-of-life entry {entry!r}")

    def minimum_for(self, device_type: str) -> str | None:
        """Return the minimum version for ``device_type`` (its own, else ``*``), or ``None``."""
        return self.minimum.get(device_type) or self.minimum.get(ANY_TYPE)


def posture_of(
    policy: FirmwarePolicy,
    device_type: str,
    firmware_version: str,
    *,
    known_vulnerable: bool = False,
    attestation_fresh: bool = False,
) -> Posture:
    """Return the device's posture under ``policy``."""
    minimum = policy.minimum_for(device_type)
    compliant = minimum is None or _meets(firmware_version, minimum)
    end_of_life = any(_is_entry_for(entry, device_type, firmware_version) for entry in policy.end_of_life)
    return Posture(firmware_version, compliant, end_of_life, known_vulnerable, attestation_fresh)


def compare_versions(left: str, right: str) -> int:
    """Return -1, 0 or 1 as ``left`` is older than, the same as, or newer than ``right``."""
    a, b = _parts(left), _parts(right)
    for index in range(max(len(a), len(b))):
        x, y = _normal(_at(a, index)), _normal(_at(b, index))  # 1.2 == 1.2.0
        if x != y:
            return -1 if x < y else 1
    return 0


_END = (1, 0, "")  # where a version has ended: after any word, before any number but 0


def _parts(version: str) -> list[tuple[int, int, str]]:
    # A word (0, 0, text) < the end of the version < a number (2, n, ""): 2.0.0rc1 < 2.0.0 < 2.0.0.1,
    # so a pre-release never meets a minimum of its release (fail closed).
    return [
        (2, int(p), "") if p.isdigit() else (0, 0, p.lower()) for p in _PART.findall(version.lstrip("vV"))
    ]


def _at(parts: list[tuple[int, int, str]], index: int) -> tuple[int, int, str]:
    if index < len(parts):
        return parts[index]
    return _END


def _normal(part: tuple[int, int, str]) -> tuple[int, int, str]:
    return _END if part == (2, 0, "") else part


def _meets(version: str, minimum: str) -> bool:
    """Return whether ``version`` is a version of the minimum's scheme and at least ``minimum``."""
    have, need = _parts(version), _parts(minimum)
    return (
        _VERSION.fullmatch(version) is not None
        and bool(have)
        and have[0][0] == need[0][0]
        and compare_versions(version, minimum) >= 0
    )


def _is_entry_for(entry: str, device_type: str, version: str) -> bool:
    """Return whether the end-of-life ``entry`` (``VERSION`` or ``TYPE@VERSION``) names this version."""
    entry_type, at, entry_version = entry.rpartition("@")
    return (not at or entry_type == device_type) and compare_versions(version, entry_version) == 0


def _require_version(version: str, what: str) -> None:
    if not _VERSION.fullmatch(version) or not _parts(version):
        raise TrustInputInvalid(f"{what}: {version!r} is not a version (1-64 of [0-9A-Za-z.+_~-])")
