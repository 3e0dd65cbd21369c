"""One event-log entry and its canonical encoding.

An entry's hash is the RFC 9162 leaf hash of its canonical bytes, and the canonical bytes include the
previous entry's hash. So the same 32 bytes both chain the log (any edit breaks the next link) and form
the leaves of the Merkle tree that signed checkpoints commit to (any rewrite breaks a signed root).

Canonical encoding, version 1 (all integers big-endian)::

    b"FGEV1" || seq (u64) || time in microseconds since the Unix epoch (i64) || prev_hash (32 bytes)
    || for actor, subject, action, reason, data: length (u32) || UTF-8 bytes

Length prefixes make the encoding injective: no two different entries share bytes.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from fleetguard.errors import InvalidInput
from fleetguard.events.merkle import leaf_hash

__all__ = [
    "GENESIS_HASH",
    "DataValue",
    "EventEntry",
    "NewEvent",
    "canonical_bytes",
    "entry_hash",
    "from_micros",
    "to_micros",
]

GENESIS_HASH = bytes(32)
"""The ``prev_hash`` of the first entry."""

DataValue = str | int | bool | None

_MAGIC = b"FGEV1"
_HEADER = struct.Struct(">Qq")
_LENGTH = struct.Struct(">I")
_LIMITS = {"actor": 256, "subject": 256, "action": 128, "reason": 4096}
_MAX_DATA_BYTES = 16 * 1024
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """What a caller asks the log to record.

    ``subject`` names what the event is about: ``device:<id>``, ``token:<id>``, ``installation``.
    ``data`` holds flat, typed details (from/to states, counts); it is stored as canonical JSON.
    """

    actor: str
    subject: str
    action: str
    reason: str = ""
    data: Mapping[str, DataValue] = field(default_factory=dict)
    canonical_data: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, limit in _LIMITS.items():
            value: str = getattr(self, name)
            if len(value) > limit:
                raise InvalidInput(f"event {name} is {len(value)} characters; the limit is {limit}")
        for name in ("actor", "subject", "action"):
            if not getattr(self, name):
                raise InvalidInput(f"event {name} must not be empty")
        canonical = json.dumps(dict(self.data), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if len(canonical.encode()) > _MAX_DATA_BYTES:
            raise InvalidInput(f"event data exceeds {_MAX_DATA_BYTES} bytes")
        # ``data`` as canonical JSON (sorted keys, no insignificant whitespace), computed once.
        object.__setattr__(self, "canonical_data", canonical)


@dataclass(frozen=True, slots=True)
class EventEntry:
    """An entry as stored: its position, time, content and both hashes."""

    seq: int
    time: dt.datetime
    actor: str
    subject: str
    action: str
    reason: str
    data: str
    prev_hash: bytes
    hash: bytes

    def details(self) -> dict[str, DataValue]:
        """Return the decoded ``data`` object."""
        decoded: dict[str, DataValue] = json.loads(self.data)
        return decoded

    def to_json(self) -> dict[str, object]:
        """Return a JSON-ready view for the API, the CLI and the bus."""
        return {
            "seq": self.seq,
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "actor": self.actor,
            "subject": self.subject,
            "action": self.action,
            "reason": self.reason,
            "data": self.details(),
            "prev_hash": self.prev_hash.hex(),
            "hash": self.hash.hex(),
        }


def to_micros(value: dt.datetime) -> int:
    """Return microseconds since the Unix epoch for an aware datetime."""
    if value.tzinfo is None:
        raise ValueError("naive datetime refused: the event log records UTC only")
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> dt.datetime:
    """Return the aware UTC datetime for microseconds since the Unix epoch."""
    return _EPOCH + dt.timedelta(microseconds=micros)


def canonical_bytes(  # noqa: PLR0917 - positional: called once per entry in verify
    seq: int,
    time_us: int,
    prev_hash: bytes,
    actor: str,
    subject: str,
    action: str,
    reason: str,
    data: str,
) -> bytes:
    """Return the version-1 canonical encoding described in the module docstring."""
    parts = [_MAGIC, _HEADER.pack(seq, time_us), prev_hash]
    for text in (actor, subject, action, reason, data):
        raw = text.encode()
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def entry_hash(  # noqa: PLR0917 - positional: called once per entry in verify
    seq: int,
    time_us: int,
    prev_hash: bytes,
    actor: str,
    subject: str,
    action: str,
    reason: str,
    data: str,
) -> bytes:
    """Return the RFC 9162 leaf hash of the entry's canonical bytes."""
    return leaf_hash(canonical_bytes(seq, time_us, prev_hash, actor, subject, action, reason, data))
