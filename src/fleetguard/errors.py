"""The root of every error fleetguard raises on purpose.

Each package has its own base under :class:`FleetguardError` (``StoreError``, ``EventLogError``,
``InventoryError``, ...). Leaves carry structured fields and an HTTP status hint so that the API maps
them to RFC 9457 problem details in one place (``fleetguard.api.problems``) and the CLI prints one line.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "Conflict",
    "FleetguardError",
    "InvalidInput",
    "LimitExceeded",
    "NotFound",
    "Unavailable",
]


class FleetguardError(Exception):
    """Base of all fleetguard errors.

    ``status`` is the HTTP status the API answers with; ``code`` is a stable, machine-readable slug
    used as the last segment of the problem ``type`` URI; ``hint`` says what to do next.
    """

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    retry_after_s: float | None = None
    """When set, the API answers with ``Retry-After`` so that clients back off (RFC 9110 10.2.3)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message} ({self.hint})"


class InvalidInput(FleetguardError):
    """The caller sent something malformed or out of range."""

    status = 422
    code = "invalid-input"


class NotFound(FleetguardError):
    """The named object does not exist."""

    status = 404
    code = "not-found"


class Conflict(FleetguardError):
    """The request conflicts with the current state (duplicate, stale version, illegal transition)."""

    status = 409
    code = "conflict"


class LimitExceeded(FleetguardError):
    """A size or count bound was exceeded."""

    status = 413
    code = "limit-exceeded"


class Unavailable(FleetguardError):
    """A dependency (database, bus) cannot serve the request now; retrying later may work."""

    status = 503
    code = "unavailable"
