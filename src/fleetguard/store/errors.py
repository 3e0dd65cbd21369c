"""Errors raised by the store; each maps to a clear CLI line and an RFC 9457 problem."""

from __future__ import annotations

from fleetguard.errors import Conflict, FleetguardError, Unavailable

__all__ = ["ConcurrentUpdate", "DuplicateKey", "StoreError", "StoreUnavailable"]


class StoreError(FleetguardError):
    """Base of store errors."""

    code = "store"


class StoreUnavailable(Unavailable, StoreError):
    """The database cannot be written or read now (locked, disk full, unreachable)."""

    code = "store-unavailable"


class DuplicateKey(Conflict, StoreError):
    """A row with the same unique key exists already."""

    code = "duplicate"


class ConcurrentUpdate(Conflict, StoreError):
    """Another writer changed the row since it was read (optimistic locking)."""

    code = "concurrent-update"
