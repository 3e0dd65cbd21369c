"""Errors of the firmware capability."""

from __future__ import annotations

from fleetguard.errors import Conflict, FleetguardError, InvalidInput, LimitExceeded, NotFound

__all__ = [
    "ExtractionLimit",
    "FirmwareError",
    "ImageInvalid",
    "ReleaseBlocked",
    "ScanNotFound",
    "UnsafePath",
    "VulnDbInvalid",
]


class FirmwareError(FleetguardError):
    """Base of the firmware package's errors."""

    code = "firmware"


class ImageInvalid(InvalidInput, FirmwareError):
    """An image or container is truncated or corrupt where it must not be."""

    code = "firmware-image-invalid"


class ExtractionLimit(LimitExceeded, FirmwareError):
    """Extraction stopped at a limit (total size, ratio, depth, file count, time)."""

    code = "firmware-extraction-limit"


class UnsafePath(InvalidInput, FirmwareError):
    """A member would land outside the work directory (traversal, absolute or escaping link)."""

    code = "firmware-unsafe-path"


class VulnDbInvalid(InvalidInput, FirmwareError):
    """A vulnerability database file (OSV or NVD JSON) is malformed."""

    code = "vulndb-invalid"


class ScanNotFound(NotFound, FirmwareError):
    """No stored scan with that id."""

    code = "firmware-scan-not-found"


class ReleaseBlocked(Conflict, FirmwareError):
    """The release gate refuses the firmware: findings above the threshold are not waived."""

    code = "release-blocked"
