"""The probe: connect as a device and read what the broker answers.

Enforcement is done only when the broker confirms it, so after every change the gateway connects *as
the device*: a certificate from the gateway CA with CN = device id (the broker's username for it), on
the loopback control listener, with its own client id (``fleetguard-probe-<random>``) so that it never
takes over the device's session. Over MQTT v5 it subscribes to a topic and publishes to it at QoS 1,
and reads the reason codes (MQTT 5 3.4.2.1, 3.9.3):

* PUBACK 0x00 (success) or 0x10 (no matching subscribers): publishing is allowed;
* PUBACK 0x87 (not authorized): publishing is denied. Mosquitto 2.0.11 answers a publish its ACLs
  deny with 0x87 over MQTT v5 (verified); over MQTT 3.1.1 it acknowledges the PUBACK as usual and
  drops the message, which is why the probe speaks v5;
* SUBACK 0x87 likewise for a denied subscription; a granted one returns the QoS.

Anything else (0x80, 0x97 quota exceeded, ...) raises :class:`ProbeInconclusive`. A probe that cannot
connect or gets no answer in time raises :class:`BrokerUnavailable`. Because both listeners share
one ACL file and one dynamic-security plugin (``per_listener_settings false``), what the broker lets
the probe do on the loopback listener is what it lets the device do on the device listener. The
probe's certificate is valid for minutes and its key never touches disk for longer than loading it.

The probe's publish is a real message on the device's topic: when publishing is allowed, the device
(if subscribed there) receives an empty message on ``.../fleetguard-probe``, which agents ignore.
"""

from __future__ import annotations

import datetime as dt
import enum
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from fleetguard.gateway.authority import GatewayAuthority
from fleetguard.gateway.errors import BrokerUnavailable, ProbeInconclusive
from fleetguard.types import utc_now

__all__ = ["MqttProbe", "Permission", "ProbeObservation", "Prober"]

_TIMEOUT_S = 3.0
_SUCCESS, _NO_SUBSCRIBERS, _NOT_AUTHORIZED = 0x00, 0x10, 0x87  # MQTT 5 2.4 reason codes
_GRANTED_QOS = frozenset({0, 1, 2})
_POLL_S = 0.005


class Permission(enum.StrEnum):
    """What the broker answered."""

    ALLOWED = "allowed"
    DENIED = "denied"


@dataclass(frozen=True, slots=True)
class ProbeObservation:
    """The broker's answers to the probe acting as ``device_id``."""

    device_id: str
    topic: str
    publish: Permission
    subscribe: Permission
    publish_reason: int
    subscribe_reason: int
    elapsed_s: float


class Prober(Protocol):
    """Something that can ask the broker what ``device_id`` may do on ``topic``."""

    def probe(self, device_id: str, topic: str) -> ProbeObservation:
        """Return the broker's answers; raise ``BrokerUnavailable`` or ``ProbeInconclusive``."""


class MqttProbe:
    """Probes over MQTT v5 on the loopback control listener, with gateway-CA certificates."""

    def __init__(
        self,
        host: str,
        port: int,
        authority: GatewayAuthority,
        scratch: Path,
        *,
        timeout_s: float = _TIMEOUT_S,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._address = (host, port)
        self._authority = authority
        self._scratch = scratch
        self._timeout_s = timeout_s
        self._clock = clock

    def probe(self, device_id: str, topic: str) -> ProbeObservation:
        """Connect as ``device_id``, subscribe to and publish on ``topic``; return the answers."""
        started = time.monotonic()
        deadline = started + self._timeout_s
        state = _State()
        client = self._client(device_id, state)
        try:
            self._connect(client, state, deadline)
            rc, sub_mid = client.subscribe(topic, qos=1)
            info = client.publish(topic, b"", qos=1)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or sub_mid is None:
                raise BrokerUnavailable(f"the probe could not subscribe: {mqtt.error_string(rc)}")
            _pump(client, lambda: info.mid in state.pubacks and sub_mid in state.subacks, deadline)
            publish_code, subscribe_code = state.pubacks[info.mid], state.subacks[sub_mid]
        finally:
            client.disconnect()
            client.loop(timeout=0)
        return ProbeObservation(
            device_id=device_id, topic=topic,
            publish=_publish_permission(publish_code), subscribe=_subscribe_permission(subscribe_code),
            publish_reason=publish_code, subscribe_reason=subscribe_code,
            elapsed_s=time.monotonic() - started,
        )  # fmt: skip

    def _client(self, device_id: str, state: _State) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"fleetguard-probe-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv5,
        )  # fmt: skip
        credential = self._authority.issue_client(device_id, now=self._clock())
        client.tls_set_context(self._authority.client_context(credential, scratch=self._scratch))
        client.connect_timeout = self._timeout_s
        client.on_connect = state.on_connect
        client.on_disconnect = state.on_disconnect
        client.on_publish = state.on_publish
        client.on_subscribe = state.on_subscribe
        return client

    def _connect(self, client: mqtt.Client, state: _State, deadline: float) -> None:
        where = f"{self._address[0]}:{self._address[1]}"
        try:
            client.connect(*self._address, keepalive=10, clean_start=True)
        except OSError as exc:
            raise BrokerUnavailable(f"the probe cannot connect to {where}: {exc}") from exc
        _pump(client, lambda: state.connack is not None, deadline)
        if state.connack is not None and state.connack.is_failure:
            raise BrokerUnavailable(f"the broker refused the probe at {where}: {state.connack}")


@dataclass
class _State:
    connack: ReasonCode | None = None
    lost: str | None = None
    pubacks: dict[int, int] = field(default_factory=dict)
    subacks: dict[int, int] = field(default_factory=dict)

    def on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, properties: object
    ) -> None:
        self.connack = reason

    def on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, properties: object
    ) -> None:
        self.lost = str(reason)

    def on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, reason: ReasonCode, properties: object
    ) -> None:
        self.pubacks[mid] = reason.value

    def on_subscribe(
        self, client: mqtt.Client, userdata: object, mid: int, reasons: list[ReasonCode], properties: object
    ) -> None:
        self.subacks[mid] = reasons[0].value if reasons else -1


def _pump(client: mqtt.Client, done: Callable[[], bool], deadline: float) -> None:
    """Run paho's network loop in this thread until ``done()`` or the deadline; raise if not done."""
    while not done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerUnavailable("the broker did not answer the probe in time")
        rc = client.loop(timeout=min(_POLL_S * 10, remaining))
        if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN) and not done():
            raise BrokerUnavailable(f"the probe's connection ended: {mqtt.error_string(rc)}")


def _publish_permission(code: int) -> Permission:
    if code in (_SUCCESS, _NO_SUBSCRIBERS):
        return Permission.ALLOWED
    if code == _NOT_AUTHORIZED:
        return Permission.DENIED
    raise ProbeInconclusive(f"the broker answered the probe's publish with reason code {code:#04x}")


def _subscribe_permission(code: int) -> Permission:
    if code in _GRANTED_QOS:
        return Permission.ALLOWED
    if code == _NOT_AUTHORIZED:
        return Permission.DENIED
    raise ProbeInconclusive(f"the broker answered the probe's subscribe with reason code {code:#04x}")
