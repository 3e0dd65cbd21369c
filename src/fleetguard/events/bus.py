"""The event bus: one small synchronous interface over an in-process stream or NATS JetStream.

Every change of state that other capabilities enforce (a device quarantined, a certificate
revoked, a rollout paused) is published on the bus after it is written to the event log. Subscribers
are durable consumers: the bus remembers, per durable name, which messages were acknowledged.

Theory of operation
-------------------
* One stream, ``FLEETGUARD``, holds every subject under ``fleetguard.>``, each message numbered by
  a stream sequence (1-based, increasing). It keeps at most ``DEFAULT_STREAM_MAX_MESSAGES`` messages
  and ``DEFAULT_STREAM_MAX_BYTES`` bytes and drops the oldest beyond that.
* ``publish`` returns the sequence once the stream has stored the message.
* ``subscribe(filter_subject, durable)`` creates the durable consumer on first use with deliver
  policy *all*: it sees every stored message that matches the filter, including those published
  before it existed. ``Subscription.fetch`` returns up to ``max_messages`` deliveries (oldest first,
  redeliveries first) or an empty list when none arrived within ``timeout_s``.
* A delivery not acknowledged within ``ack_wait_s`` is delivered again on a later fetch, with
  ``num_delivered`` raised by one. An acknowledged message is never delivered again to that durable,
  also not after ``close`` and a new ``subscribe`` with the same name. Each durable has its own
  position, so two durables each get every message. A durable keeps its filter for life;
  re-subscribing with another filter raises :class:`BusInputRejected`. At most
  ``DEFAULT_MAX_ACK_PENDING`` deliveries per durable wait for an acknowledgement; beyond that no new
  messages are delivered until some are acknowledged or expire.

Subjects
--------
Subjects are dot-separated tokens of ``[A-Za-z0-9_~-]``, at most ``MAX_SUBJECT_LENGTH``
characters, and start with ``fleetguard.``. Filters may also use the NATS wildcards ``*`` (exactly
one token) and ``>`` (one or more trailing tokens, last position only). The scheme::

    fleetguard.dev.<partition>.<device-token>.<action>    device events, sharded by device
    fleetguard.sys.<action>                                installation-wide events

``partition`` is the first four bytes of SHA-256 of the UTF-8 device id, big-endian, modulo the
number of partitions (``Settings.bus_partitions``), so a worker that subscribes to
``fleetguard.dev.<p>.>`` sees every event of the devices in partition ``p`` and of no others.
``device-token`` is the device id with every byte of its UTF-8 encoding outside ``[A-Za-z0-9_-]``
written as ``~`` and two lowercase hex digits (``~`` itself becomes ``~7e``), which is reversible
(:func:`device_id_from_token`) and injective. ``action`` is one or more tokens (``cert.revoked``).

``open_bus("memory://")`` gives the in-process bus (one process, nothing persisted);
``open_bus("nats://host:port")`` the NATS JetStream bus (file storage, several nodes).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol
from urllib.parse import urlsplit

from fleetguard.events.errors import BusInputRejected

__all__ = [
    "DEFAULT_ACK_WAIT_S",
    "DEFAULT_MAX_ACK_PENDING",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DEFAULT_STREAM_MAX_BYTES",
    "DEFAULT_STREAM_MAX_MESSAGES",
    "MAX_FETCH_MESSAGES",
    "MAX_SUBJECT_LENGTH",
    "STREAM_NAME",
    "STREAM_SUBJECTS",
    "BusMessage",
    "Delivery",
    "EventBus",
    "Subscription",
    "device_id_from_token",
    "device_partition",
    "device_subject",
    "device_token",
    "open_bus",
    "require_ack_wait",
    "require_durable",
    "require_fetch_args",
    "require_filter",
    "require_payload",
    "require_subject",
    "subject_matches",
    "system_subject",
]

STREAM_NAME: Final = "FLEETGUARD"
STREAM_SUBJECTS: Final = "fleetguard.>"
_ROOT: Final = "fleetguard"

MAX_SUBJECT_LENGTH: Final = 256
# The NATS server's default max_payload is 1 MiB; the stream's max_msg_size is set to this bound.
DEFAULT_MAX_PAYLOAD_BYTES: Final = 1024 * 1024
DEFAULT_STREAM_MAX_MESSAGES: Final = 1_000_000
DEFAULT_STREAM_MAX_BYTES: Final = 1024 * 1024 * 1024
# The NATS server's default max_ack_pending for a consumer is 1000.
DEFAULT_MAX_ACK_PENDING: Final = 1000
MAX_FETCH_MESSAGES: Final = 1000
DEFAULT_ACK_WAIT_S: Final = 30.0
MAX_ACK_WAIT_S: Final = 24 * 3600.0
MAX_FETCH_TIMEOUT_S: Final = 300.0
_MAX_DURABLE_LENGTH: Final = 64
_MAX_PARTITIONS: Final = 1 << 16

_TOKEN = re.compile(r"[A-Za-z0-9_~-]+")
_DURABLE = re.compile(r"[A-Za-z0-9_-]+")
_SAFE_BYTES: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
)


@dataclass(frozen=True, slots=True)
class BusMessage:
    """One stored message: its subject, its payload and its stream sequence (1-based)."""

    subject: str
    payload: bytes
    sequence: int


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message handed to a subscriber; ``num_delivered`` is 1 the first time, more on redelivery.

    ``ack`` tells the bus the message is processed, so that this durable never gets it again.
    """

    message: BusMessage
    num_delivered: int
    _acknowledge: Callable[[], None] = field(repr=False, compare=False)

    @property
    def subject(self) -> str:
        """The message's subject."""
        return self.message.subject

    @property
    def payload(self) -> bytes:
        """The message's payload."""
        return self.message.payload

    @property
    def sequence(self) -> int:
        """The message's stream sequence."""
        return self.message.sequence

    def ack(self) -> None:
        """Acknowledge the message; acknowledging twice is harmless.

        Raises ``BusError`` if the bus is closed or does not confirm the acknowledgement.
        """
        self._acknowledge()


class Subscription(Protocol):
    """A durable consumer bound to one filter; see the module docstring for delivery semantics."""

    def fetch(self, max_messages: int = 100, timeout_s: float = 1.0) -> list[Delivery]:
        """Return up to ``max_messages`` deliveries, or ``[]`` if none came within ``timeout_s``.

        Raises ``BusInputRejected`` for bounds out of range and ``BusError`` if the subscription or
        bus is closed or the server fails.
        """
        ...

    def close(self) -> None:
        """Stop fetching; the durable and its acknowledged position survive. Idempotent."""
        ...


class EventBus(Protocol):
    """Publish to and subscribe from the ``FLEETGUARD`` stream."""

    def publish(self, subject: str, payload: bytes) -> int:
        """Store ``payload`` under ``subject`` and return its stream sequence.

        Raises ``BusInputRejected`` for an invalid subject or oversize payload, ``BusError`` if the
        bus is closed or the stream does not confirm.
        """
        ...

    def subscribe(
        self, filter_subject: str, durable: str, *, ack_wait_s: float = DEFAULT_ACK_WAIT_S
    ) -> Subscription:
        """Create or resume the durable consumer ``durable`` on ``filter_subject``.

        Raises ``BusInputRejected`` for an invalid filter, durable name or ``ack_wait_s``, or a
        durable that exists with another filter; ``BusError`` if the bus is closed or fails.
        """
        ...

    def close(self) -> None:
        """Close every subscription and release the bus's resources. Idempotent."""
        ...


def open_bus(url: str) -> EventBus:
    """Return the bus named by ``url``: ``memory://`` (in-process) or ``nats://host:port``.

    Raises ``BusInputRejected`` for an unknown scheme or malformed URL, ``BusError`` if the NATS
    server cannot be reached or the stream cannot be created.
    """
    parts = urlsplit(url)
    if parts.scheme == "memory" and not (parts.netloc or parts.path or parts.query):
        from fleetguard.events.bus_memory import MemoryBus

        return MemoryBus()
    if parts.scheme == "nats" and parts.hostname:
        from fleetguard.events.bus_nats import NatsBus

        return NatsBus.connect(url)
    raise BusInputRejected(
        f"unsupported event bus URL {parts.scheme}://...",
        hint="use memory:// or nats://host:port",
    )


def require_subject(subject: str) -> tuple[str, ...]:
    """Return the tokens of a publishable subject (no wildcards).

    Raises ``BusInputRejected`` if it is too long, has an empty or invalid token, or is not under
    ``fleetguard.``.
    """
    tokens = _split_subject(subject)
    if not all(_TOKEN.fullmatch(token) for token in tokens):
        raise BusInputRejected(f"invalid subject {subject[:MAX_SUBJECT_LENGTH]!r}")
    return tokens


def require_filter(filter_subject: str) -> tuple[str, ...]:
    """Return the tokens of a subscription filter; ``*`` and a final ``>`` are allowed.

    Raises ``BusInputRejected`` like :func:`require_subject`, and for ``>`` before the last token.
    """
    tokens = _split_subject(filter_subject)
    for index, part in enumerate(tokens):
        wildcard = part == "*" or (part == ">" and index == len(tokens) - 1)
        if not (wildcard or _TOKEN.fullmatch(part)):
            raise BusInputRejected(f"invalid filter {filter_subject[:MAX_SUBJECT_LENGTH]!r}")
    return tokens


def _split_subject(subject: str) -> tuple[str, ...]:
    if not 0 < len(subject) <= MAX_SUBJECT_LENGTH:
        raise BusInputRejected(f"subject length {len(subject)} is not between 1 and {MAX_SUBJECT_LENGTH}")
    tokens = tuple(subject.split("."))
    if tokens[0] != _ROOT or len(tokens) < 2:
        raise BusInputRejected(f"subject {subject!r} is not under {_ROOT}.")
    return tokens


def subject_matches(filter_tokens: tuple[str, ...], subject_tokens: tuple[str, ...]) -> bool:
    """Return whether a subject matches a filter, both given as tokens (NATS wildcard rules)."""
    for index, pattern in enumerate(filter_tokens):
        if pattern == ">":
            return len(subject_tokens) > index
        if index >= len(subject_tokens):
            return False
        if pattern not in ("*", subject_tokens[index]):
            return False
    return len(subject_tokens) == len(filter_tokens)


def require_payload(payload: bytes, max_bytes: int) -> None:
    """Raise ``BusInputRejected`` unless ``payload`` is ``bytes`` of at most ``max_bytes``."""
    if not isinstance(payload, bytes):
        raise BusInputRejected(f"payload must be bytes, not {type(payload).__name__}")
    if len(payload) > max_bytes:
        raise BusInputRejected(f"payload of {len(payload)} bytes exceeds the limit of {max_bytes}")


def require_durable(durable: str) -> None:
    """Raise ``BusInputRejected`` unless ``durable`` is 1-64 characters of ``[A-Za-z0-9_-]``."""
    if len(durable) > _MAX_DURABLE_LENGTH or not _DURABLE.fullmatch(durable):
        raise BusInputRejected(
            f"invalid durable name {durable[:_MAX_DURABLE_LENGTH]!r}",
            hint=f"use 1 to {_MAX_DURABLE_LENGTH} characters of A-Z a-z 0-9 _ -",
        )


def require_ack_wait(ack_wait_s: float) -> None:
    """Raise ``BusInputRejected`` unless ``0 < ack_wait_s <= 24 h``."""
    if not 0 < ack_wait_s <= MAX_ACK_WAIT_S:
        raise BusInputRejected(f"ack_wait_s {ack_wait_s} is not in (0, {MAX_ACK_WAIT_S}]")


def require_fetch_args(max_messages: int, timeout_s: float) -> None:
    """Raise ``BusInputRejected`` unless ``1 <= max_messages <= 1000``, ``0 < timeout_s <= 300``."""
    if not 1 <= max_messages <= MAX_FETCH_MESSAGES:
        raise BusInputRejected(f"max_messages {max_messages} is not between 1 and {MAX_FETCH_MESSAGES}")
    if not 0 < timeout_s <= MAX_FETCH_TIMEOUT_S:
        raise BusInputRejected(f"timeout_s {timeout_s} is not in (0, {MAX_FETCH_TIMEOUT_S}]")


def device_token(device_id: str) -> str:
    """Return ``device_id`` as one subject token (see the module docstring for the escape).

    Raises ``BusInputRejected`` if the id is empty or not encodable as UTF-8.
    """
    raw = _device_bytes(device_id)
    return "".join(chr(byte) if byte in _SAFE_BYTES else f"~{byte:02x}" for byte in raw)


def device_id_from_token(token: str) -> str:
    """Return the device id that :func:`device_token` turned into ``token``.

    Raises ``BusInputRejected`` unless ``token`` is exactly what ``device_token`` produces.
    """
    raw = bytearray()
    index = 0
    try:
        while index < len(token):
            if token[index] == "~":
                raw.append(int(token[index + 1 : index + 3], 16))
                index += 3
            else:
                raw.append(ord(token[index]))
                index += 1
        device_id = raw.decode("utf-8")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BusInputRejected(f"malformed device token {token[:MAX_SUBJECT_LENGTH]!r}") from exc
    if not token or device_token(device_id) != token:
        raise BusInputRejected(f"non-canonical device token {token[:MAX_SUBJECT_LENGTH]!r}")
    return device_id


def device_partition(device_id: str, partitions: int) -> int:
    """Return ``device_id``'s partition: SHA-256 prefix (4 bytes, big-endian) mod ``partitions``.

    Raises ``BusInputRejected`` for an empty or non-UTF-8 id, or partitions not in 1..65536.
    """
    if not 1 <= partitions <= _MAX_PARTITIONS:
        raise BusInputRejected(f"partitions {partitions} is not between 1 and {_MAX_PARTITIONS}")
    digest = hashlib.sha256(_device_bytes(device_id)).digest()
    return int.from_bytes(digest[:4], "big") % partitions


def _device_bytes(device_id: str) -> bytes:
    try:
        raw = device_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BusInputRejected("device id is not valid Unicode text") from exc
    if not raw:
        raise BusInputRejected("device id is empty")
    return raw


def device_subject(device_id: str, action: str, partitions: int) -> str:
    """Return ``fleetguard.dev.<partition>.<device-token>.<action>``.

    Raises ``BusInputRejected`` for an empty device id, an invalid action or partition count, or a
    subject longer than ``MAX_SUBJECT_LENGTH``.
    """
    token = device_token(device_id)
    subject = f"{_ROOT}.dev.{device_partition(device_id, partitions)}.{token}.{action}"
    require_subject(subject)
    return subject


def system_subject(action: str) -> str:
    """Return ``fleetguard.sys.<action>``; raises ``BusInputRejected`` for an invalid action."""
    subject = f"{_ROOT}.sys.{action}"
    require_subject(subject)
    return subject
