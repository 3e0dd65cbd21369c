"""The agent's MQTT link: telemetry out, commands in, over mutual TLS with the operational certificate.

Theory of operation. :class:`MqttLink` keeps one MQTT v5 session with the broker at a time. The
client id is the device id; the broker takes the certificate's identity as the username
(Mosquitto's ``use_identity_as_username``) and its ACL lets a device use ``devices/<id>/#`` only.
Topics (:class:`DeviceTopics`):

``devices/<id>/status``        ``online``, retained, on connection; the Last Will ``offline``, retained,
                               if the session dies; ``offline`` again when the agent stops
``devices/<id>/telemetry``     a JSON :class:`Telemetry` every ``telemetry_interval_s``, from connection on
``devices/<id>/commands``      commands (:mod:`fleetguard.agent.command`), QoS 1; retained ones are not
                               replayed and are ignored
``devices/<id>/commands/ack``  one acknowledgement per command

A session ends in one of four ways (:class:`_End`):

* *lost* (the broker closed it, the network failed, a PUBACK did not come, or it could not be
  opened: no TLS, or a CONNACK refusal such as 0x87 Not authorized for a quarantined device): the
  link waits :func:`~fleetguard.agent.renewal.retry_delay` under :data:`RECONNECT_POLICY`, i.e.
  exponential backoff with jitter, growing while sessions keep failing, and starts over;
* *renewed*: the certificate file changed (the ``reenroll`` command, the renewal loop, or
  ``fleetguard-agent renew`` from another process); the link reconnects at once with the new one;
* *stopped*: the stop event was set (SIGTERM); the link publishes ``offline`` and disconnects;
* *wiped*: the ``wipe`` command decommissioned the device; the link acknowledges, publishes
  ``offline``, disconnects and returns :attr:`LinkOutcome.WIPED`.

Only the link's thread touches a session, so commands run one at a time; a ``reenroll`` or ``wipe``
waits for a renewal in progress (:class:`~fleetguard.agent.identity.DeviceIdentity` holds one lock).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, assert_never

from fleetguard import __version__
from fleetguard.agent.command import (
    Ack,
    AckLog,
    AckResult,
    Command,
    CommandKind,
    Ignored,
    Rejected,
    encode_ack,
    parse_command,
)
from fleetguard.agent.errors import AgentConfigInvalid, BrokerRefused, BrokerUnreachable
from fleetguard.agent.identity import DeviceIdentity
from fleetguard.agent.keystore import KeyStoreKind
from fleetguard.agent.mqtt_child import ChildSession
from fleetguard.agent.mqtt_session import (
    BrokerSession,
    BrokerSettings,
    Lost,
    PahoSession,
    Received,
    Will,
    parse_broker_url,
)
from fleetguard.agent.renewal import RenewalPolicy, retry_delay
from fleetguard.agent.state import AgentState
from fleetguard.agent.transport import TlsKeyKind
from fleetguard.errors import FleetguardError

__all__ = [
    "DEFAULT_TELEMETRY_INTERVAL_S",
    "RECONNECT_POLICY",
    "DeviceStatus",
    "DeviceTopics",
    "LinkOutcome",
    "MqttLink",
    "StopSignal",
    "Telemetry",
    "connect_broker",
    "encode_telemetry",
    "require_mqtt_key_store",
]

DEFAULT_TELEMETRY_INTERVAL_S = 60.0

RECONNECT_POLICY = RenewalPolicy(backoff_initial_s=1.0, backoff_max_s=300.0)
"""Backoff between sessions: from 0.5-1 s, doubling to a cap of 5 minutes, so that a fleet cut off by
a broker restart does not reconnect in one second, and a device is never out of reach for long."""

_STABLE_SESSION_S = 60.0  # a session that lasted this long resets the backoff; a shorter one grows it
_POLL_S = 1.0  # how often the link looks at the stop event and the certificate file
_PKCS11_REFUSAL = (
    "a PKCS#11 key cannot authenticate to the MQTT broker: only curl's OpenSSL engine reaches it, "
    "and the MQTT client runs on Python's ssl"
)
_log = logging.getLogger(__name__)


class StopSignal(Protocol):
    """What tells the link to stop: a ``threading.Event`` (set on SIGTERM)."""

    def is_set(self) -> bool:
        """Return whether the link should stop."""
        ...

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds; return ``True`` if the link should stop."""
        ...


class DeviceStatus(enum.StrEnum):
    """The retained payloads of ``devices/<id>/status``."""

    ONLINE = "online"
    OFFLINE = "offline"


class LinkOutcome(enum.StrEnum):
    """Why :meth:`MqttLink.run` returned."""

    STOPPED = "stopped"
    WIPED = "wiped"


class _End(enum.Enum):
    LOST = enum.auto()
    RENEWED = enum.auto()
    STOPPED = enum.auto()
    WIPED = enum.auto()


@dataclass(frozen=True, slots=True)
class DeviceTopics:
    """The topics of one device, all under ``devices/<id>/``."""

    telemetry: str
    status: str
    commands: str
    acks: str

    @classmethod
    def for_device(cls, device_id: str) -> DeviceTopics:
        """Return the topics of ``device_id``; raise ``AgentConfigInvalid`` if it is not one topic level."""
        # MQTT 5.0 4.7.1: "/" separates levels and "+", "#" are wildcards; 1.5.4: no U+0000 or controls.
        if not device_id or any(c in "/+#" or not c.isprintable() for c in device_id):
            raise AgentConfigInvalid(f"device id {device_id[:80]!r} cannot be an MQTT topic level")
        root = f"devices/{device_id}"
        return cls(f"{root}/telemetry", f"{root}/status", f"{root}/commands", f"{root}/commands/ack")


@dataclass(frozen=True, slots=True)
class Telemetry:
    """One telemetry report."""

    time: dt.datetime
    uptime_s: float
    certificate_serial: str | None
    certificate_not_after: dt.datetime | None
    agent_version: str = __version__


def encode_telemetry(report: Telemetry) -> bytes:
    """Return ``report`` as a JSON object; times are RFC 3339 UTC."""
    not_after = report.certificate_not_after
    return json.dumps(
        {
            "time": report.time.astimezone(dt.UTC).isoformat(),
            "uptime_s": round(report.uptime_s, 3),
            "certificate_serial": report.certificate_serial,
            "certificate_not_after": None if not_after is None else not_after.astimezone(dt.UTC).isoformat(),
            "agent_version": report.agent_version,
        },
        sort_keys=True,
    ).encode()


def require_mqtt_key_store(kind: KeyStoreKind) -> None:
    """Raise ``AgentConfigInvalid`` for a key store whose key cannot authenticate MQTT (PKCS#11)."""
    match kind:
        case KeyStoreKind.FILE | KeyStoreKind.TPM:
            return
        case KeyStoreKind.PKCS11:
            raise AgentConfigInvalid(_PKCS11_REFUSAL, hint="EST enrollment and renewal work; drop --mqtt")
        case _:
            assert_never(kind)


def connect_broker(settings: BrokerSettings) -> BrokerSession:
    """Open a session where the client key is usable: this process for a file, a child for the TPM."""
    match settings.key.kind:
        case TlsKeyKind.FILE:
            return PahoSession.open(settings)
        case TlsKeyKind.PROVIDER:
            return ChildSession.open(settings)
        case TlsKeyKind.ENGINE:
            raise AgentConfigInvalid(_PKCS11_REFUSAL, hint="EST enrollment and renewal work; drop --mqtt")
        case _:
            assert_never(settings.key.kind)


def _boot_uptime_s() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)  # Linux: since boot, suspend included


class MqttLink:
    """Keeps the device connected to the broker until stopped or wiped (see the module docstring)."""

    def __init__(
        self,
        identity: DeviceIdentity,
        state: AgentState,
        *,
        stop: StopSignal,
        connect: Callable[[BrokerSettings], BrokerSession] = connect_broker,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        uptime: Callable[[], float] = _boot_uptime_s,
        monotonic: Callable[[], float] = time.monotonic,
        telemetry_interval_s: float = DEFAULT_TELEMETRY_INTERVAL_S,
        policy: RenewalPolicy = RECONNECT_POLICY,
        rng: random.Random | None = None,
        poll_s: float = _POLL_S,
    ) -> None:
        config = identity.config
        if config.mqtt_url is None or config.device_id is None:
            raise AgentConfigInvalid("the agent has no MQTT broker URL or no device id")
        if telemetry_interval_s <= 0:
            raise AgentConfigInvalid("the telemetry interval must be positive")
        self._host, self._port = parse_broker_url(config.mqtt_url)
        self._device_id = config.device_id
        self.topics = DeviceTopics.for_device(config.device_id)
        self._identity, self._state, self._stop, self._connect = identity, state, stop, connect
        self._clock, self._uptime, self._monotonic = clock, uptime, monotonic
        self._interval_s, self._policy, self._poll_s = telemetry_interval_s, policy, poll_s
        self._rng = rng or random.Random()  # noqa: S311 - spreading reconnections, not secrecy
        self._acks = AckLog()

    def run(self) -> LinkOutcome:
        """Connect, serve, reconnect; return when stopped or wiped.

        Raises ``AgentConfigInvalid`` (unreadable trust anchors or certificate) and ``KeyStoreError``.
        """
        attempt = 0
        while not self._stop.is_set():
            started = self._monotonic()
            end = self._session()
            match end:
                case _End.STOPPED:
                    return LinkOutcome.STOPPED
                case _End.WIPED:
                    return LinkOutcome.WIPED
                case _End.RENEWED:
                    attempt = 0
                case _End.LOST:
                    if self._monotonic() - started >= _STABLE_SESSION_S:
                        attempt = 0
                    delay = retry_delay(attempt, retry_after_s=None, rng=self._rng, policy=self._policy)
                    attempt += 1
                    _log.info("reconnecting to the broker in %.1f s", delay)
                    self._stop.wait(delay)
                case _:
                    assert_never(end)
        return LinkOutcome.STOPPED

    def _session(self) -> _End:
        stamp = self._certificate_stamp()  # before connecting: a renewal from here on reconnects
        try:
            session = self._connect(self._settings())
        except (BrokerRefused, BrokerUnreachable) as exc:
            _log.warning("no MQTT session with %s:%d: %s", self._host, self._port, exc)
            return _End.LOST
        _log.info("connected to the MQTT broker %s:%d as %s", self._host, self._port, self._device_id)
        try:
            return self._serve(session, stamp)
        except BrokerUnreachable as exc:
            _log.warning("the MQTT session was lost: %s", exc)
            return _End.LOST
        finally:
            session.close()

    def _serve(self, session: BrokerSession, stamp: tuple[int, ...] | None) -> _End:
        session.publish(self.topics.status, DeviceStatus.ONLINE.encode(), retain=True)
        next_report = self._monotonic()
        while not self._stop.is_set():
            if self._certificate_stamp() != stamp:
                _log.info("the certificate changed; reconnecting with the new one")
                return _End.RENEWED
            now = self._monotonic()
            if now >= next_report:
                session.publish(self.topics.telemetry, encode_telemetry(self._telemetry()))
                next_report = now + self._interval_s
            event = session.next_event(min(self._poll_s, max(next_report - self._monotonic(), 0.0)))
            match event:
                case None:
                    pass
                case Lost():
                    _log.warning("the MQTT session was lost: %s", event.reason)
                    return _End.LOST
                case Received():
                    end = self._on_message(session, event)
                    if end is not None:
                        return end
                case _:
                    assert_never(event)
        session.publish(self.topics.status, DeviceStatus.OFFLINE.encode(), retain=True)
        return _End.STOPPED

    def _on_message(self, session: BrokerSession, message: Received) -> _End | None:
        if message.topic != self.topics.commands:
            _log.warning("ignored a message on %s: not the command topic", message.topic)
            return None
        if message.retained:
            _log.warning("ignored a retained command: commands are events, never replayed")
            return None
        parsed = parse_command(message.payload)
        match parsed:
            case Ignored():
                _log.warning("ignored a command: %s", parsed.reason)
                return None
            case Rejected():
                _log.warning("rejected command %s: %s", parsed.id, parsed.reason)
                session.publish(
                    self.topics.acks, encode_ack(Ack(parsed.id, AckResult.REJECTED, parsed.reason))
                )
                return None
            case Command():
                return self._on_command(session, parsed)
            case _:
                assert_never(parsed)

    def _on_command(self, session: BrokerSession, command: Command) -> _End | None:
        previous = self._acks.get(command.id)
        if previous is not None:  # delivered again (QoS 1): answer again, do not run again
            _log.info("command %s was run already; acknowledging it again", command.id)
            session.publish(self.topics.acks, encode_ack(previous))
            return None
        ack, end = self._execute(command)
        self._acks.record(ack)
        try:
            session.publish(self.topics.acks, encode_ack(ack))
            if end is _End.WIPED:
                session.publish(self.topics.status, DeviceStatus.OFFLINE.encode(), retain=True)
        except BrokerUnreachable:
            if end is not _End.WIPED:
                raise
            _log.warning("the device is wiped, but the broker did not take the acknowledgement")
        return end

    def _execute(self, command: Command) -> tuple[Ack, _End | None]:
        """Run ``command``; return its acknowledgement and how the session ends (``None``: it goes on)."""
        _log.info("running command %s: %s", command.id, command.kind.value)
        match command.kind:
            case CommandKind.REENROLL:
                try:
                    certificate = self._identity.renew()
                except FleetguardError as exc:
                    _log.warning("command %s: renewal failed: %s", command.id, exc)
                    return Ack(command.id, AckResult.FAILED, str(exc)), None
                serial = f"{certificate.serial_number:x}"
                _log.info("command %s: renewed, serial %s; reconnecting", command.id, serial)
                return Ack(command.id, AckResult.OK, serial=serial), _End.RENEWED
            case CommandKind.WIPE:
                try:
                    self._identity.wipe()
                except FleetguardError as exc:
                    _log.error("command %s: wipe failed: %s", command.id, exc)
                    return Ack(command.id, AckResult.FAILED, str(exc)), None
                _log.warning("command %s: wiped: key, certificate and configuration are deleted", command.id)
                return Ack(command.id, AckResult.OK), _End.WIPED
            case _:
                assert_never(command.kind)

    def _settings(self) -> BrokerSettings:
        return BrokerSettings(
            host=self._host,
            port=self._port,
            client_id=self._device_id,
            trust_anchors=self._state.trust_anchors,
            certificate=self._state.certificate_path,
            key=self._identity.tls_key(),
            will=Will(self.topics.status, DeviceStatus.OFFLINE.encode()),
            subscriptions=(self.topics.commands,),
            timeout_s=self._identity.config.timeout_s,
        )

    def _telemetry(self) -> Telemetry:
        now = self._clock()
        status = self._identity.status(now)
        return Telemetry(now, self._uptime(), status.serial, status.not_after)

    def _certificate_stamp(self) -> tuple[int, ...] | None:
        """Return what changes when the certificate file is replaced (atomically: a new inode)."""
        try:
            info = os.stat(self._state.certificate_path)
        except FileNotFoundError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size)
