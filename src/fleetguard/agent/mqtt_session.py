"""One MQTT v5 session with the broker, over mutual TLS: the agent's edge to paho-mqtt.

:class:`BrokerSession` is what the agent's MQTT loop (:mod:`fleetguard.agent.mqtt`) needs from a
session: publish at QoS 1 and wait for the broker's PUBACK, take the next incoming message or the
news that the session is gone, and disconnect. :class:`PahoSession` implements it in this process
with paho-mqtt over Python's ``ssl``, which reads the client key from a file. A key behind the TPM's
OpenSSL provider needs the same code in a child process (:mod:`fleetguard.agent.mqtt_child`), for the
reason :mod:`fleetguard.agent.transport` gives for EST.

A session is opened whole or not at all (:meth:`PahoSession.open`): TCP and the TLS handshake, then
CONNECT with a Last Will, CONNACK, then SUBSCRIBE and SUBACK; any failure closes what was opened and
raises :class:`~fleetguard.agent.errors.BrokerRefused` (a failure reason code from the broker) or
:class:`~fleetguard.agent.errors.BrokerUnreachable`. paho's own reconnection is off: when a session
is lost the loop decides when to open the next one.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from fleetguard.agent.errors import AgentConfigInvalid, BrokerRefused, BrokerUnreachable
from fleetguard.agent.transport import TlsClientKey

if TYPE_CHECKING:
    from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

__all__ = [
    "MAX_INCOMING_PACKET_BYTES",
    "MQTTS_PORT",
    "BrokerSession",
    "BrokerSettings",
    "Lost",
    "PahoSession",
    "Received",
    "SessionEvent",
    "Will",
    "parse_broker_url",
]

MAX_INCOMING_PACKET_BYTES = 64 * 1024
"""Sent as CONNECT's Maximum Packet Size: the broker must not send larger packets (MQTT 5.0 3.1.2.11.4)."""

MQTTS_PORT = 8883
"""IANA's port for MQTT over TLS ("secure-mqtt")."""

_PUBLISH_POLL_S = 0.2  # how often a publish waiting for its PUBACK looks for a lost session
_MAX_QUEUED_EVENTS = 100  # commands are rare; a flood beyond this is dropped, with a log line
_log = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes (retained, QoS 1) if the session ends without a DISCONNECT."""

    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Where the broker is, what to trust, the client's certificate and key, and the session's shape."""

    host: str
    port: int
    client_id: str
    trust_anchors: Path
    certificate: Path
    key: TlsClientKey
    will: Will
    subscriptions: tuple[str, ...]
    keepalive_s: int = 60
    timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Received:
    """A message on a subscribed topic; ``retained`` when the broker replayed a retained message."""

    topic: str
    payload: bytes
    retained: bool


@dataclass(frozen=True, slots=True)
class Lost:
    """The session ended (the broker closed it, the network failed, keepalive expired)."""

    reason: str


SessionEvent = Received | Lost


class BrokerSession(Protocol):
    """An open MQTT session."""

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for the PUBACK; raise ``BrokerUnreachable`` if none comes."""
        ...

    def next_event(self, timeout_s: float) -> SessionEvent | None:
        """Return the next message or :class:`Lost`, or ``None`` after ``timeout_s`` without one."""
        ...

    def close(self) -> None:
        """Disconnect normally, so that the broker discards the Will; idempotent."""
        ...


def parse_broker_url(url: str) -> tuple[str, int]:
    """Return ``(host, port)`` of an ``mqtts://host[:port]`` URL; raise ``AgentConfigInvalid`` otherwise.

    Only TLS: the client authenticates with its certificate, which plain MQTT cannot carry.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:  # a bad port, an unbalanced IPv6 bracket
        raise _not_a_broker_url(url) from exc
    if (
        parts.scheme != "mqtts"
        or not parts.hostname
        or parts.path not in ("", "/")
        or port == 0
        or any(character in "?#@" or not character.isprintable() or character.isspace() for character in url)
    ):
        raise _not_a_broker_url(url)
    return parts.hostname, port or MQTTS_PORT


def _not_a_broker_url(url: str) -> AgentConfigInvalid:
    return AgentConfigInvalid(f"the MQTT broker URL must be mqtts://host[:port], not {url!r}")


class PahoSession:
    """An MQTT v5 session in this process (paho-mqtt, Python ``ssl``; the key is a PEM file)."""

    def __init__(self, settings: BrokerSettings) -> None:
        from paho.mqtt.client import Client
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        self._settings = settings
        self._events: queue.Queue[SessionEvent] = queue.Queue(maxsize=_MAX_QUEUED_EVENTS)
        self._connack: queue.Queue[ReasonCode | None] = queue.Queue(maxsize=1)
        self._suback: queue.Queue[list[ReasonCode]] = queue.Queue(maxsize=1)
        self._closing = threading.Event()
        self._lost = threading.Event()
        self._client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe

    @classmethod
    def open(cls, settings: BrokerSettings) -> PahoSession:
        """Connect and subscribe; return the session, or raise ``BrokerRefused`` / ``BrokerUnreachable``."""
        session = cls(settings)
        try:
            session._connect()
            session._subscribe()
        except BaseException:
            session.close()
            raise
        return session

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 and wait up to the timeout for the PUBACK, or until the session is lost."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        deadline = time.monotonic() + self._settings.timeout_s
        try:
            while not info.is_published():
                if self._lost.is_set():
                    raise BrokerUnreachable(f"the session was lost while publishing on {topic}")
                if time.monotonic() > deadline:
                    raise BrokerUnreachable(f"no PUBACK for {topic} within {self._settings.timeout_s:g} s")
                info.wait_for_publish(_PUBLISH_POLL_S)
        except (ValueError, RuntimeError) as exc:  # paho: queue full, or no connection
            raise BrokerUnreachable(f"cannot publish on {topic}: {exc}") from exc

    def next_event(self, timeout_s: float) -> SessionEvent | None:
        """Return the next event, or ``None`` after ``timeout_s``."""
        try:
            return self._events.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            return None

    def close(self) -> None:
        """Send DISCONNECT (reason 0: the broker discards the Will) and stop the network thread."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._client.disconnect()
        self._client.loop_stop()

    # -- opening ------------------------------------------------------------------------------------

    def _connect(self) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        settings = self._settings
        self._client.tls_set_context(_tls_context(settings))
        self._client.connect_timeout = settings.timeout_s
        self._client.will_set(settings.will.topic, settings.will.payload, qos=1, retain=True)
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call] # paho leaves it untyped
        properties.MaximumPacketSize = MAX_INCOMING_PACKET_BYTES
        properties.SessionExpiryInterval = 0  # MQTT 5.0 3.1.2.11.2: nothing kept between sessions
        try:
            self._client.connect(
                settings.host, settings.port, settings.keepalive_s, clean_start=True, properties=properties
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError and ssl.CertificateError among them
            raise BrokerUnreachable(
                f"cannot connect to mqtts://{settings.host}:{settings.port}: {_describe(exc)}",
                hint="check the broker URL, the network and the trust anchors",
            ) from exc
        self._client.loop_start()
        reason = self._wait(self._connack, "CONNACK")
        if reason is None:
            raise BrokerUnreachable(
                "the broker closed the connection before CONNACK",
                hint="a broker that refuses the client certificate closes the connection",
            )
        if reason.is_failure:
            raise BrokerRefused(f"the broker refused the connection: {reason}", reason_code=reason.value)

    def _subscribe(self) -> None:
        from paho.mqtt.subscribeoptions import SubscribeOptions

        # Retained messages are not replayed (MQTT 5.0 3.8.3.1 Retain Handling 2): a command is an
        # event, and a retained one would run again at every reconnection.
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        if not self._settings.subscriptions:
            return
        self._client.subscribe([(topic, options) for topic in self._settings.subscriptions])
        reasons: list[ReasonCode] = self._wait(self._suback, "SUBACK")
        for topic, reason in zip(self._settings.subscriptions, reasons, strict=False):
            if reason.is_failure:
                raise BrokerRefused(
                    f"the broker refused the subscription to {topic}: {reason}", reason_code=reason.value
                )

    def _wait(self, answers: queue.Queue[_T], what: str) -> _T:
        try:
            return answers.get(timeout=self._settings.timeout_s)
        except queue.Empty as exc:
            raise BrokerUnreachable(f"no {what} within {self._settings.timeout_s:g} s") from exc

    # -- paho callbacks (its network thread) ---------------------------------------------------------

    def _on_connect(
        self,
        _client: Client,
        _userdata: object,
        _flags: ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        _offer(self._connack, reason)

    def _on_subscribe(
        self,
        _client: Client,
        _userdata: object,
        _mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        _offer(self._suback, reasons)

    def _on_message(self, _client: Client, _userdata: object, message: MQTTMessage) -> None:
        received = Received(message.topic, bytes(message.payload), bool(message.retain))
        if not _offer(self._events, received):
            _log.warning("dropped a message on %s: %d events are waiting", message.topic, _MAX_QUEUED_EVENTS)

    def _on_disconnect(
        self,
        _client: Client,
        _userdata: object,
        _flags: DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        _offer(self._connack, None)  # before CONNACK: the broker closed the connection
        self._lost.set()
        if not self._closing.is_set():
            lost = Lost(f"the broker closed the session: {reason}")
            while not _offer(self._events, lost):  # the loss must not be dropped: make room
                _take(self._events)


def _tls_context(settings: BrokerSettings) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=str(settings.trust_anchors))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(settings.certificate), settings.key.reference)
    except (OSError, ssl.SSLError) as exc:
        raise AgentConfigInvalid(f"cannot load the TLS credentials for MQTT: {_describe(exc)}") from exc
    return context


def _offer(answers: queue.Queue[_T], item: _T) -> bool:
    try:
        answers.put_nowait(item)
    except queue.Full:
        return False
    return True


def _take(answers: queue.Queue[_T]) -> None:
    with contextlib.suppress(queue.Empty):
        answers.get_nowait()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
