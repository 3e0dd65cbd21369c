"""Identifier types and time helpers shared by every package.

Ids and digests are ``NewType`` so that mypy keeps a device id from being passed where a serial is
expected. Time is always timezone-aware UTC; decisions take ``now`` as an argument.
"""

from __future__ import annotations

import datetime as dt
from typing import NewType

__all__ = [
    "Actor",
    "DeviceId",
    "Sha256",
    "ensure_utc",
    "parse_utc",
    "utc_now",
]

DeviceId = NewType("DeviceId", str)
Sha256 = NewType("Sha256", bytes)
Actor = NewType("Actor", str)


def utc_now() -> dt.datetime:
    """Return the current time, timezone-aware, in UTC."""
    return dt.datetime.now(dt.UTC)


def ensure_utc(value: dt.datetime) -> dt.datetime:
    """Return ``value`` in UTC; a naive datetime is taken to be UTC already (as stored by SQLite)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def parse_utc(text: str) -> dt.datetime:
    """Parse an ISO 8601 timestamp; raise ``ValueError`` if it has no offset and is not 'Z'."""
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return value.astimezone(dt.UTC)
