"""The in-process event bus: a bounded stream in memory, shared by threads of one process.

It follows the semantics in :mod:`fleetguard.events.bus` exactly as the NATS JetStream bus does, so
that one process (``fleetguard up``) and a cluster behave alike. Nothing survives the process.

One lock guards the stream and every durable's state; a condition on it wakes fetches when a message
is published, acknowledged (freeing room under ``max_ack_pending``) or the bus closes. A durable's
state is a cursor (the next stream sequence it has not looked at) and its pending deliveries, each
with a redelivery deadline on the monotonic clock and a delivery count. Acknowledging removes a
pending delivery; a pending delivery past its deadline is delivered again by the next fetch.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from fleetguard.events.bus import (
    DEFAULT_ACK_WAIT_S,
    DEFAULT_MAX_ACK_PENDING,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_STREAM_MAX_BYTES,
    DEFAULT_STREAM_MAX_MESSAGES,
    BusMessage,
    Delivery,
    require_ack_wait,
    require_durable,
    require_fetch_args,
    require_filter,
    require_payload,
    require_subject,
    subject_matches,
)
from fleetguard.events.errors import BusError, BusInputRejected

__all__ = ["MemoryBus", "MemorySubscription"]


@dataclass(slots=True)
class _Consumer:
    """Mutable state of one durable; only touched with the bus's lock held."""

    filter_subject: str
    filter_tokens: tuple[str, ...]
    ack_wait_s: float
    next_sequence: int = 1
    # stream sequence -> (monotonic redelivery deadline, times delivered)
    pending: dict[int, tuple[float, int]] = field(default_factory=dict)


class MemoryBus:
    """An :class:`~fleetguard.events.bus.EventBus` that keeps its stream in this process."""

    def __init__(
        self,
        *,
        max_messages: int = DEFAULT_STREAM_MAX_MESSAGES,
        max_bytes: int = DEFAULT_STREAM_MAX_BYTES,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        max_ack_pending: int = DEFAULT_MAX_ACK_PENDING,
    ) -> None:
        if min(max_messages, max_bytes, max_payload_bytes, max_ack_pending) < 1:
            raise BusInputRejected("memory bus limits must be positive")
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._max_payload_bytes = max_payload_bytes
        self._max_ack_pending = max_ack_pending
        self._changed = threading.Condition()
        self._messages: OrderedDict[int, BusMessage] = OrderedDict()
        self._stored_bytes = 0
        self._last_sequence = 0
        self._consumers: dict[str, _Consumer] = {}
        self._closed = False

    def publish(self, subject: str, payload: bytes) -> int:
        """Store the message and return its sequence; see ``EventBus.publish``."""
        require_subject(subject)
        require_payload(payload, self._max_payload_bytes)
        with self._changed:
            self._require_open()
            self._last_sequence += 1
            self._messages[self._last_sequence] = BusMessage(subject, payload, self._last_sequence)
            self._stored_bytes += len(payload)
            self._drop_oldest()
            self._changed.notify_all()
            return self._last_sequence

    def _drop_oldest(self) -> None:
        while len(self._messages) > self._max_messages or self._stored_bytes > self._max_bytes:
            _, dropped = self._messages.popitem(last=False)
            self._stored_bytes -= len(dropped.payload)

    def subscribe(
        self, filter_subject: str, durable: str, *, ack_wait_s: float = DEFAULT_ACK_WAIT_S
    ) -> MemorySubscription:
        """Create or resume a durable; see ``EventBus.subscribe``. A new ``ack_wait_s`` applies."""
        tokens = require_filter(filter_subject)
        require_durable(durable)
        require_ack_wait(ack_wait_s)
        with self._changed:
            self._require_open()
            consumer = self._consumers.get(durable)
            if consumer is None:
                consumer = _Consumer(filter_subject, tokens, ack_wait_s)
                self._consumers[durable] = consumer
            elif consumer.filter_subject != filter_subject:
                raise BusInputRejected(
                    f"durable {durable!r} exists with filter {consumer.filter_subject!r}",
                    hint="use another durable name for another filter",
                )
            consumer.ack_wait_s = ack_wait_s
        return MemorySubscription(self, consumer)

    def close(self) -> None:
        """Close the bus; later calls on it or its subscriptions raise ``BusError``."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _require_open(self) -> None:
        if self._closed:
            raise BusError("the event bus is closed")

    def _fetch(self, consumer: _Consumer, max_messages: int, timeout_s: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                self._require_open()
                now = time.monotonic()
                batch = self._redeliver(consumer, max_messages, now)
                batch += self._deliver_new(consumer, max_messages - len(batch), now)
                if batch or now >= deadline:
                    return batch
                self._changed.wait(max(0.0, self._next_expiry(consumer, deadline) - now))

    def _redeliver(self, consumer: _Consumer, limit: int, now: float) -> list[Delivery]:
        batch: list[Delivery] = []
        for sequence, (expires, count) in sorted(consumer.pending.items()):
            if len(batch) >= limit:
                break
            if expires > now:
                continue
            message = self._messages.get(sequence)
            if message is None:  # dropped from the stream: nothing left to redeliver
                del consumer.pending[sequence]
                continue
            consumer.pending[sequence] = (now + consumer.ack_wait_s, count + 1)
            batch.append(self._delivery(consumer, message, count + 1))
        return batch

    def _deliver_new(self, consumer: _Consumer, limit: int, now: float) -> list[Delivery]:
        batch: list[Delivery] = []
        first = next(iter(self._messages), self._last_sequence + 1)
        sequence = max(consumer.next_sequence, first)
        while (
            sequence <= self._last_sequence
            and len(batch) < limit
            and len(consumer.pending) < self._max_ack_pending
        ):
            message = self._messages[sequence]
            if subject_matches(consumer.filter_tokens, tuple(message.subject.split("."))):
                consumer.pending[sequence] = (now + consumer.ack_wait_s, 1)
                batch.append(self._delivery(consumer, message, 1))
            sequence += 1
        consumer.next_sequence = sequence
        return batch

    @staticmethod
    def _next_expiry(consumer: _Consumer, deadline: float) -> float:
        return min([deadline, *(expires for expires, _ in consumer.pending.values())])

    def _delivery(self, consumer: _Consumer, message: BusMessage, count: int) -> Delivery:
        def acknowledge() -> None:
            with self._changed:
                self._require_open()
                if consumer.pending.pop(message.sequence, None) is not None:
                    self._changed.notify_all()

        return Delivery(message, count, acknowledge)


class MemorySubscription:
    """A :class:`~fleetguard.events.bus.Subscription` on a :class:`MemoryBus` durable."""

    def __init__(self, bus: MemoryBus, consumer: _Consumer) -> None:
        self._bus = bus
        self._consumer = consumer
        self._closed = False

    def fetch(self, max_messages: int = 100, timeout_s: float = 1.0) -> list[Delivery]:
        """Return what is deliverable, waiting up to ``timeout_s``; see ``Subscription.fetch``."""
        require_fetch_args(max_messages, timeout_s)
        if self._closed:
            raise BusError("the subscription is closed")
        return self._bus._fetch(self._consumer, max_messages, timeout_s)

    def close(self) -> None:
        """Stop fetching; unacknowledged deliveries are redelivered after their ``ack_wait_s``."""
        self._closed = True
