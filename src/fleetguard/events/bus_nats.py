"""The NATS JetStream event bus, behind the same synchronous interface as the in-process one.

nats-py is asyncio-only, and fleetguard's callers are synchronous (request handlers in worker
threads, the CLI, schedulers). So each :class:`NatsBus` owns one private event loop that runs in a
daemon thread; every operation is a coroutine handed to that loop with
``asyncio.run_coroutine_threadsafe`` and awaited here with a timeout. Every nats-py error, and every
timeout, becomes :class:`~fleetguard.events.errors.BusError`.

On connect the bus makes sure the ``FLEETGUARD`` stream exists (file storage, subjects
``fleetguard.>``, bounded by message count, bytes and message size, oldest dropped first); an
existing stream is used as it is if it holds ``fleetguard.>``. A subscription is a pull consumer
with deliver policy *all* and explicit acknowledgement; ``Delivery.ack`` waits until the server
confirms the acknowledgement (a NATS "ack sync"), so an acknowledged message is never redelivered,
also not to a new subscription made right after.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Coroutine
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    StorageType,
    StreamConfig,
)

from fleetguard.events.bus import (
    DEFAULT_ACK_WAIT_S,
    DEFAULT_MAX_ACK_PENDING,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_STREAM_MAX_BYTES,
    DEFAULT_STREAM_MAX_MESSAGES,
    STREAM_NAME,
    STREAM_SUBJECTS,
    BusMessage,
    Delivery,
    require_ack_wait,
    require_durable,
    require_fetch_args,
    require_filter,
    require_payload,
    require_subject,
)
from fleetguard.events.errors import BusError, BusInputRejected

__all__ = ["NatsBus", "NatsSubscription"]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")
DEFAULT_TIMEOUT_S: Final = 5.0
# Extra time, beyond an operation's own timeout, for the answer to travel back to the caller.
_MARGIN_S: Final = 2.0
_LOOP_STOP_TIMEOUT_S: Final = 5.0
_NATS_FAILURES = (nats.errors.Error, OSError, TimeoutError, concurrent.futures.CancelledError)


class _LoopThread:
    """An asyncio event loop running in a daemon thread, fed coroutines from other threads."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fleetguard-nats", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        tasks = asyncio.all_tasks(self._loop)
        for task in tasks:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.run_until_complete(self._loop.shutdown_default_executor())
        self._loop.close()

    def call(self, operation: Coroutine[Any, Any, _T], timeout_s: float) -> _T:
        """Run ``operation`` on the loop and return its result.

        Raises ``BusError`` if the loop is gone, the operation fails with a nats-py or socket
        error, or it does not finish within ``timeout_s`` (then it is cancelled).
        """
        try:
            future = asyncio.run_coroutine_threadsafe(operation, self._loop)
        except RuntimeError as exc:  # the loop is closed
            operation.close()
            raise BusError("the event bus is closed") from exc
        try:
            return future.result(timeout_s)
        except _NATS_FAILURES as exc:
            if not future.done():
                future.cancel()
                raise BusError(f"NATS JetStream did not answer within {timeout_s:g} s") from exc
            raise BusError(f"NATS JetStream failed: {exc!r}") from exc

    def stop(self) -> None:
        """Stop the loop, cancel what still runs on it, close it and join the thread."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_LOOP_STOP_TIMEOUT_S)


class NatsBus:
    """An :class:`~fleetguard.events.bus.EventBus` on a NATS JetStream server or cluster."""

    def __init__(
        self,
        loop: _LoopThread,
        client: Client,
        *,
        timeout_s: float,
        max_payload_bytes: int,
        max_ack_pending: int,
    ) -> None:
        """Wrap a connected client; use :meth:`connect` instead of calling this directly."""
        self._loop = loop
        self._client = client
        self._js: JetStreamContext = client.jetstream(timeout=timeout_s)
        self._timeout_s = timeout_s
        self._max_payload_bytes = max_payload_bytes
        self._max_ack_pending = max_ack_pending
        self._lock = threading.Lock()
        self._subscriptions: set[NatsSubscription] = set()
        self._closed = False

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        stream_max_messages: int = DEFAULT_STREAM_MAX_MESSAGES,
        stream_max_bytes: int = DEFAULT_STREAM_MAX_BYTES,
        max_ack_pending: int = DEFAULT_MAX_ACK_PENDING,
    ) -> NatsBus:
        """Connect to ``url``, ensure the ``FLEETGUARD`` stream exists, and return the bus.

        The payload bound is lowered to the server's ``max_payload`` if that is smaller. Raises
        ``BusError`` if the server is not reachable within ``timeout_s`` or the stream cannot be
        created or exists without ``fleetguard.>``.
        """
        loop = _LoopThread()
        client = Client()
        try:
            _connect(loop, client, url, timeout_s)
            max_payload_bytes = min(max_payload_bytes, client.max_payload)
            stream = _stream_config(max_payload_bytes, stream_max_messages, stream_max_bytes)
            loop.call(_ensure_stream(client.jetstream(timeout=timeout_s), stream), timeout_s)
        except BusError:
            _close_quietly(loop, client, timeout_s)
            raise
        return cls(
            loop,
            client,
            timeout_s=timeout_s,
            max_payload_bytes=max_payload_bytes,
            max_ack_pending=max_ack_pending,
        )

    def publish(self, subject: str, payload: bytes) -> int:
        """Store the message and return its stream sequence; see ``EventBus.publish``."""
        require_subject(subject)
        require_payload(payload, self._max_payload_bytes)
        self._require_open()
        ack = self._call(self._js.publish(subject, payload, timeout=self._timeout_s))
        if ack.stream != STREAM_NAME:
            raise BusError(f"subject {subject!r} was stored in stream {ack.stream!r}")
        return ack.seq

    def subscribe(
        self, filter_subject: str, durable: str, *, ack_wait_s: float = DEFAULT_ACK_WAIT_S
    ) -> NatsSubscription:
        """Create or resume a durable; see ``EventBus.subscribe``. A new ``ack_wait_s`` applies."""
        require_filter(filter_subject)
        require_durable(durable)
        require_ack_wait(ack_wait_s)
        self._require_open()
        config = ConsumerConfig(
            durable_name=durable,
            filter_subject=filter_subject,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait_s,
            max_ack_pending=self._max_ack_pending,
        )
        pull = self._call(_bind_consumer(self._js, config))
        subscription = NatsSubscription(self, pull)
        with self._lock:
            self._subscriptions.add(subscription)
        return subscription

    def close(self) -> None:
        """Unsubscribe everything, drain and close the connection, and stop the loop thread.

        Raises ``BusError`` if the connection did not close cleanly; the thread is stopped anyway.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pulls = [subscription._pull for subscription in self._subscriptions]
            self._subscriptions.clear()
        try:
            self._loop.call(_drain(self._client, pulls), self._timeout_s + _MARGIN_S)
        finally:
            self._loop.stop()

    def _require_open(self) -> None:
        if self._closed:
            raise BusError("the event bus is closed")

    def _call(self, operation: Coroutine[Any, Any, _T], extra_s: float = 0.0) -> _T:
        if self._closed:
            operation.close()
            raise BusError("the event bus is closed")
        return self._loop.call(operation, self._timeout_s + extra_s + _MARGIN_S)

    def _fetch(
        self, pull: JetStreamContext.PullSubscription, max_messages: int, timeout_s: float
    ) -> list[Delivery]:
        messages = self._call(_fetch(pull, max_messages, timeout_s), extra_s=timeout_s)
        return [self._delivery(message) for message in messages]

    def _delivery(self, message: Msg) -> Delivery:
        metadata = message.metadata
        stored = BusMessage(message.subject, message.data, metadata.sequence.stream)

        def acknowledge() -> None:
            self._call(_ack(message, self._timeout_s))

        return Delivery(stored, metadata.num_delivered, acknowledge)

    def _forget(self, subscription: NatsSubscription) -> bool:
        with self._lock:
            if subscription not in self._subscriptions:
                return False
            self._subscriptions.discard(subscription)
            return not self._closed


class NatsSubscription:
    """A :class:`~fleetguard.events.bus.Subscription` on a JetStream pull consumer."""

    def __init__(self, bus: NatsBus, pull: JetStreamContext.PullSubscription) -> None:
        self._bus = bus
        self._pull = pull
        self._closed = False

    def fetch(self, max_messages: int = 100, timeout_s: float = 1.0) -> list[Delivery]:
        """Return what the consumer delivers within ``timeout_s``; see ``Subscription.fetch``."""
        require_fetch_args(max_messages, timeout_s)
        if self._closed:
            raise BusError("the subscription is closed")
        return self._bus._fetch(self._pull, max_messages, timeout_s)

    def close(self) -> None:
        """Unsubscribe; the durable consumer and its acknowledged position stay on the server."""
        if self._closed:
            return
        self._closed = True
        if self._bus._forget(self):
            self._bus._call(_unsubscribe([self._pull]))


def _stream_config(max_msg_size: int, max_msgs: int, max_bytes: int) -> StreamConfig:
    return StreamConfig(
        name=STREAM_NAME,
        subjects=[STREAM_SUBJECTS],
        storage=StorageType.FILE,
        max_msgs=max_msgs,
        max_bytes=max_bytes,
        max_msg_size=max_msg_size,
        discard=DiscardPolicy.OLD,
    )


def _connect(loop: _LoopThread, client: Client, url: str, timeout_s: float) -> None:
    """Connect ``client`` on ``loop``; raise ``BusError`` naming the server (not its credentials)."""
    parts = urlsplit(url)
    try:
        loop.call(_open(client, url, timeout_s), timeout_s)
    except BusError as exc:
        raise BusError(
            f"cannot reach NATS at {parts.hostname}:{parts.port or 4222} within {timeout_s} s",
            hint="start nats-server with -js, or check FLEETGUARD_BUS_URL",
        ) from exc


async def _open(client: Client, url: str, timeout_s: float) -> None:
    await client.connect(
        servers=[url],
        connect_timeout=max(1, round(timeout_s)),
        name="fleetguard",
        error_cb=_report_error,
    )


async def _report_error(exc: Exception) -> None:
    # nats-py reports connection trouble here while it reconnects; callers see BusError on timeout.
    _log.warning("NATS connection error: %r", exc)


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        info = await js.stream_info(STREAM_NAME)
    except nats.js.errors.NotFoundError:
        await js.add_stream(config)
        return
    if STREAM_SUBJECTS not in (info.config.subjects or []):
        raise BusError(
            f"stream {STREAM_NAME} exists without subjects {STREAM_SUBJECTS}",
            hint=f"add {STREAM_SUBJECTS} to the stream or delete it",
        )


async def _bind_consumer(js: JetStreamContext, config: ConsumerConfig) -> JetStreamContext.PullSubscription:
    durable = config.durable_name
    assert durable is not None, "subscribe() always names the durable"
    try:
        info = await js.consumer_info(STREAM_NAME, durable)
    except nats.js.errors.NotFoundError:
        pass
    else:
        if info.config.filter_subject != config.filter_subject:
            raise BusInputRejected(
                f"durable {durable!r} exists with filter {info.config.filter_subject!r}",
                hint="use another durable name for another filter",
            )
    # Creates the consumer, or updates ack_wait of an existing one with the same filter.
    await js.add_consumer(STREAM_NAME, config)
    return await js.pull_subscribe_bind(durable=durable, stream=STREAM_NAME)


async def _fetch(pull: JetStreamContext.PullSubscription, max_messages: int, timeout_s: float) -> list[Msg]:
    try:
        return await pull.fetch(max_messages, timeout=timeout_s)
    except TimeoutError:  # nats-py's way of saying that nothing arrived in time
        return []


async def _ack(message: Msg, timeout_s: float) -> None:
    try:
        await message.ack_sync(timeout=timeout_s)
    except nats.errors.MsgAlreadyAckdError:
        return


async def _unsubscribe(pulls: list[JetStreamContext.PullSubscription]) -> None:
    for pull in pulls:
        await pull.unsubscribe()


async def _drain(client: Client, pulls: list[JetStreamContext.PullSubscription]) -> None:
    # Unsubscribe first: a pull subscription's queue may hold deliveries no one will fetch, and
    # draining would wait for them. They are unacknowledged, so the server delivers them again.
    if client.is_closed:
        return
    await _unsubscribe(pulls)
    await client.drain()


def _close_quietly(loop: _LoopThread, client: Client, timeout_s: float) -> None:
    """Close a half-opened client and stop the loop; the caller is already raising."""
    # The connect failure being raised is the error worth reporting, not a failure to clean up.
    try:
        with contextlib.suppress(BusError):
            loop.call(client.close(), timeout_s)
    finally:
        loop.stop()
