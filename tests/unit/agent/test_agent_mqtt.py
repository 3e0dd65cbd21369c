"""The MQTT link over a scripted broker: topics, telemetry, commands, reconnection with backoff.

The broker is a fake :class:`~fleetguard.agent.mqtt_session.BrokerSession` factory: each connection
attempt takes the next *plan*, an error to raise or a list of events to deliver. Time is fake: the
link's waits and polls advance it. A session whose events are used up sets the stop signal, so every
test ends with the link's own shutdown (``offline``, DISCONNECT).
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509

from fleetguard.agent.errors import AgentConfigInvalid, BrokerRefused, BrokerUnreachable, EstServerBusy
from fleetguard.agent.identity import DeviceIdentity
from fleetguard.agent.keystore import KeyStoreKind
from fleetguard.agent.mqtt import (
    RECONNECT_POLICY,
    DeviceTopics,
    LinkOutcome,
    MqttLink,
    Telemetry,
    connect_broker,
    encode_telemetry,
    require_mqtt_key_store,
)
from fleetguard.agent.mqtt_session import BrokerSettings, Lost, Received, SessionEvent, parse_broker_url
from fleetguard.agent.state import AgentConfig, AgentState, KeyStoreConfig
from fleetguard.agent.transport import TlsClientKey, TlsKeyKind

from .conftest import DEVICE_ID, NOW, SERVER_URL, TOKEN, FakeEst, MemoryKeyStore, TinyCa, text

BROKER = "mqtts://broker.example.org:8883"
TOPICS = DeviceTopics.for_device(DEVICE_ID)

# -- broker URL and topics ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtts://broker.example.org", ("broker.example.org", 8883)),
        ("mqtts://broker.example.org:8884", ("broker.example.org", 8884)),
        ("mqtts://broker.example.org:8884/", ("broker.example.org", 8884)),
        ("mqtts://[2001:db8::1]:8883", ("2001:db8::1", 8883)),
        ("mqtts://127.0.0.1:1883", ("127.0.0.1", 1883)),
    ],
)
def test_a_broker_url_is_mqtts_host_and_port(url: str, expected: tuple[str, int]) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "mqtt://broker.example.org",  # no TLS, so no client certificate
        "https://broker.example.org",
        "mqtts://",
        "mqtts://broker.example.org:0",
        "mqtts://broker.example.org:99999",
        "mqtts://broker.example.org:x",
        "mqtts://broker.example.org/devices",
        "mqtts://broker.example.org?x=1",
        "mqtts://user@broker.example.org",
        "mqtts://broker.example.org#x",
        "mqtts://broker.example.org :8883",
        "mqtts://[2001:db8::1",
    ],
)
def test_anything_else_is_refused(url: str) -> None:
    with pytest.raises(AgentConfigInvalid, match=r"the MQTT broker URL must be mqtts://host\[:port\]"):
        parse_broker_url(url)


def test_topics_are_under_the_device_id() -> None:
    assert (
        DeviceTopics(
            "devices/dev-1/telemetry",
            "devices/dev-1/status",
            "devices/dev-1/commands",
            "devices/dev-1/commands/ack",
        )
        == TOPICS
    )


@pytest.mark.parametrize("device_id", ["", "a/b", "+", "dev-#", "dev\x00", "dev\n1"])
def test_a_device_id_that_is_not_one_topic_level_is_refused(device_id: str) -> None:
    with pytest.raises(AgentConfigInvalid, match="cannot be an MQTT topic level"):
        DeviceTopics.for_device(device_id)


def test_telemetry_is_json_with_utc_times() -> None:
    report = Telemetry(
        NOW.astimezone(dt.timezone(dt.timedelta(hours=2))), 12.34567, "1f", NOW + dt.timedelta(days=30), "9.9"
    )
    assert json.loads(encode_telemetry(report)) == {
        "time": "2026-03-14T15:09:26+00:00",
        "uptime_s": 12.346,
        "certificate_serial": "1f",
        "certificate_not_after": "2026-04-13T15:09:26+00:00",
        "agent_version": "9.9",
    }


def test_telemetry_before_a_certificate_says_so() -> None:
    document = json.loads(encode_telemetry(Telemetry(NOW, 1.0, None, None)))
    assert document["certificate_serial"] is None
    assert document["certificate_not_after"] is None


# -- which key stores can authenticate MQTT ----------------------------------------------------------


@pytest.mark.parametrize("kind", [KeyStoreKind.FILE, KeyStoreKind.TPM])
def test_file_and_tpm_keys_authenticate_mqtt(kind: KeyStoreKind) -> None:
    require_mqtt_key_store(kind)


def test_a_pkcs11_key_cannot_authenticate_mqtt_but_est_still_works() -> None:
    with pytest.raises(
        AgentConfigInvalid, match="a PKCS#11 key cannot authenticate to the MQTT broker"
    ) as info:
        require_mqtt_key_store(KeyStoreKind.PKCS11)
    assert "EST enrollment and renewal work" in str(info.value)


def test_an_engine_key_is_refused_before_any_connection(tmp_path: Path) -> None:
    settings = _settings(tmp_path, TlsClientKey(TlsKeyKind.ENGINE, "pkcs11:token=t;object=k"))
    with pytest.raises(AgentConfigInvalid, match="a PKCS#11 key cannot authenticate"):
        connect_broker(settings)


def test_unreadable_credentials_are_a_configuration_error(tmp_path: Path) -> None:
    settings = _settings(tmp_path, TlsClientKey(TlsKeyKind.FILE, str(tmp_path / "missing.key")))
    with pytest.raises(AgentConfigInvalid, match="cannot load the TLS credentials for MQTT"):
        connect_broker(settings)


def _settings(tmp_path: Path, key: TlsClientKey) -> BrokerSettings:
    from fleetguard.agent.mqtt_session import Will

    return BrokerSettings(
        "127.0.0.1", 1, DEVICE_ID, tmp_path / "anchors.pem", tmp_path / "certificate.pem", key,
        Will(TOPICS.status, b"offline"), (TOPICS.commands,),
    )  # fmt: skip


# -- a scripted broker -----------------------------------------------------------------------------


class TopOfRange(random.Random):
    """Backoff at its ceiling, so that delays are exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


@dataclass
class FakeTime:
    """A monotonic clock and a stop signal; waiting advances the clock."""

    now: float = 1000.0
    stopped: bool = False
    waits: list[float] = field(default_factory=list)

    def monotonic(self) -> float:
        return self.now

    def is_set(self) -> bool:
        return self.stopped

    def set(self) -> None:
        self.stopped = True

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        self.now += timeout
        return self.stopped


@dataclass(frozen=True)
class Published:
    topic: str
    payload: bytes
    retain: bool


Step = SessionEvent | Callable[[], None] | None
"""An event to deliver, an action to take (as another thread would), or ``None``: a quiet poll."""

Plan = BrokerUnreachable | BrokerRefused | list[Step]


@dataclass
class FakeBroker:
    """Answers connection attempts from ``plans`` in order; records what the link published."""

    time: FakeTime
    plans: list[Plan]
    published: list[Published] = field(default_factory=list)
    connected: list[BrokerSettings] = field(default_factory=list)
    sessions: list[FakeSession] = field(default_factory=list)
    fail_publish_on: str | None = None

    def __call__(self, settings: BrokerSettings) -> FakeSession:
        if not self.plans:  # the script is over
            self.time.set()
            raise BrokerUnreachable("the script is over")
        plan = self.plans.pop(0)
        if isinstance(plan, BrokerUnreachable | BrokerRefused):
            raise plan
        self.connected.append(settings)
        session = FakeSession(self, list(plan))
        self.sessions.append(session)
        return session

    def on(self, topic: str) -> list[bytes]:
        return [message.payload for message in self.published if message.topic == topic]

    def acks(self) -> list[dict[str, str]]:
        return [json.loads(payload) for payload in self.on(TOPICS.acks)]


@dataclass
class FakeSession:
    broker: FakeBroker
    steps: list[Step]
    closed: bool = False

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        assert not self.closed
        if topic == self.broker.fail_publish_on:
            raise BrokerUnreachable(f"no PUBACK for {topic}")
        self.broker.published.append(Published(topic, payload, retain))

    def next_event(self, timeout_s: float) -> SessionEvent | None:
        assert not self.closed
        self.broker.time.now += timeout_s
        if not self.steps:
            self.broker.time.set()
            return None
        step = self.steps.pop(0)
        if step is None or isinstance(step, Received | Lost):
            return step
        step()
        return None

    def close(self) -> None:
        self.closed = True


@dataclass
class Device:
    """An enrolled identity over a fake EST server, and its link to a fake broker."""

    state: AgentState
    keys: MemoryKeyStore
    server: FakeEst
    identity: DeviceIdentity
    time: FakeTime = field(default_factory=FakeTime)

    def link(self, *plans: Plan, interval_s: float = 60.0) -> tuple[MqttLink, FakeBroker]:
        broker = FakeBroker(self.time, list(plans))
        link = MqttLink(
            self.identity, self.state, stop=self.time, connect=broker, clock=lambda: NOW,
            uptime=lambda: 42.0, monotonic=self.time.monotonic, telemetry_interval_s=interval_s,
            rng=TopOfRange(),
        )  # fmt: skip
        return link, broker

    def leaf(self) -> x509.Certificate:
        chain = self.state.certificate_chain()
        assert chain is not None
        return chain[0]


@pytest.fixture
def device(state: AgentState, tiny_ca: TinyCa) -> Device:
    config = AgentConfig(
        server_url=SERVER_URL, key_store=KeyStoreConfig(), device_id=DEVICE_ID, mqtt_url=BROKER
    )
    state.save_config(config)
    keys = MemoryKeyStore()
    server = FakeEst(tiny_ca)
    identity = DeviceIdentity(state, config, keys, transport_factory=server)
    identity.enroll(device_id=DEVICE_ID, token=TOKEN)
    return Device(state, keys, server, identity)


def command(command_id: str, name: str, *, retained: bool = False, topic: str = TOPICS.commands) -> Received:
    return Received(topic, json.dumps({"id": command_id, "command": name}).encode(), retained)


# -- a session ------------------------------------------------------------------------------------


def test_the_session_uses_the_device_certificate_and_its_topics(device: Device) -> None:
    link, broker = device.link([])
    assert link.run() is LinkOutcome.STOPPED
    [settings] = broker.connected
    assert (settings.host, settings.port, settings.client_id) == ("broker.example.org", 8883, DEVICE_ID)
    assert settings.certificate == device.state.certificate_path
    assert settings.trust_anchors == device.state.trust_anchors
    assert settings.key == device.keys.tls_key()
    assert (settings.will.topic, settings.will.payload) == (TOPICS.status, b"offline")
    assert settings.subscriptions == (TOPICS.commands,)


def test_online_then_telemetry_then_offline_on_stop(device: Device) -> None:
    link, broker = device.link([])
    assert link.run() is LinkOutcome.STOPPED
    leaf = device.leaf()
    assert [(m.topic, m.retain) for m in broker.published] == [
        (TOPICS.status, True), (TOPICS.telemetry, False), (TOPICS.status, True),
    ]  # fmt: skip
    assert broker.on(TOPICS.status) == [b"online", b"offline"]
    assert json.loads(broker.on(TOPICS.telemetry)[0]) == {
        "time": NOW.isoformat(),
        "uptime_s": 42.0,
        "certificate_serial": f"{leaf.serial_number:x}",
        "certificate_not_after": leaf.not_valid_after_utc.isoformat(),
        "agent_version": "0.1.0",
    }
    assert broker.sessions[0].closed


def test_telemetry_goes_out_every_interval(device: Device) -> None:
    link, broker = device.link([None] * 125, interval_s=60.0)
    link.run()
    assert len(broker.on(TOPICS.telemetry)) == 3  # at 0, 60 and 120 s


def test_the_link_polls_no_longer_than_a_second(device: Device) -> None:
    link, _ = device.link([None] * 5)
    start = device.time.now
    link.run()
    assert device.time.now - start == pytest.approx(6.0)


def test_a_link_needs_a_broker_url(state: AgentState, tiny_ca: TinyCa) -> None:
    config = AgentConfig(server_url=SERVER_URL, key_store=KeyStoreConfig(), device_id=DEVICE_ID)
    identity = DeviceIdentity(state, config, MemoryKeyStore(), transport_factory=FakeEst(tiny_ca))
    with pytest.raises(AgentConfigInvalid, match="no MQTT broker URL"):
        MqttLink(identity, state, stop=FakeTime())


def test_the_telemetry_interval_must_be_positive(device: Device) -> None:
    with pytest.raises(AgentConfigInvalid, match="must be positive"):
        MqttLink(device.identity, device.state, stop=device.time, telemetry_interval_s=0)


# -- commands ---------------------------------------------------------------------------------------


def test_reenroll_renews_acknowledges_with_the_serial_and_reconnects(device: Device) -> None:
    old = device.leaf().serial_number
    link, broker = device.link([command("c-1", "reenroll")], [])
    assert link.run() is LinkOutcome.STOPPED
    new = device.leaf().serial_number
    assert new != old
    assert broker.acks() == [{"id": "c-1", "result": "ok", "serial": f"{new:x}"}]
    assert len(broker.connected) == 2  # at once: no backoff wait
    assert device.time.waits == []
    assert broker.sessions[0].closed
    reports = [json.loads(payload) for payload in broker.on(TOPICS.telemetry)]
    assert [report["certificate_serial"] for report in reports] == [f"{old:x}", f"{new:x}"]
    assert broker.on(TOPICS.status) == [b"online", b"online", b"offline"]  # no offline in between


def test_a_failed_reenroll_is_acknowledged_as_failed_and_the_session_goes_on(device: Device) -> None:
    device.server.handlers["simplereenroll"] = lambda sent: text(500, "database down")
    old = device.leaf().serial_number
    link, broker = device.link([command("c-1", "reenroll"), None])
    link.run()
    [ack] = broker.acks()
    assert (ack["id"], ack["result"]) == ("c-1", "failed")
    assert "EST simplereenroll refused with HTTP 500: database down" in ack["reason"]
    assert device.leaf().serial_number == old
    assert len(broker.connected) == 1


def test_a_command_delivered_twice_runs_once_and_is_acknowledged_twice(device: Device) -> None:
    link, broker = device.link([command("c-1", "reenroll")], [command("c-1", "reenroll")])
    link.run()
    assert [sent.operation for sent in device.server.sent].count("simplereenroll") == 1
    assert broker.acks()[0] == broker.acks()[1]


def test_an_unknown_command_is_rejected(device: Device) -> None:
    link, broker = device.link([command("c-1", "reboot")])
    link.run()
    assert broker.acks() == [
        {
            "id": "c-1",
            "result": "rejected",
            "reason": "unknown command 'reboot'; this agent runs reenroll, wipe",
        }
    ]


def test_malformed_and_retained_commands_and_other_topics_are_ignored_with_a_log_line(
    device: Device, caplog: pytest.LogCaptureFixture
) -> None:
    link, broker = device.link([
        Received(TOPICS.commands, b"{not json", False),
        Received(TOPICS.commands, b"x" * 5000, False),
        command("c-1", "wipe", retained=True),
        command("c-2", "wipe", topic="devices/dev-1/other"),
    ])  # fmt: skip
    with caplog.at_level("WARNING", logger="fleetguard.agent.mqtt"):
        assert link.run() is LinkOutcome.STOPPED
    assert broker.acks() == []
    assert device.keys.destroyed == 0
    assert [record.getMessage().split(":")[0] for record in caplog.records] == [
        "ignored a command",
        "ignored a command",
        "ignored a retained command",
        "ignored a message on devices/dev-1/other",
    ]


def test_wipe_destroys_the_key_deletes_the_files_and_ends_the_link(device: Device) -> None:
    link, broker = device.link([command("c-1", "wipe"), None])
    assert link.run() is LinkOutcome.WIPED
    assert device.keys.destroyed == 1
    assert sorted(path.name for path in device.state.directory.iterdir()) == ["trust-anchors.pem"]
    assert broker.acks() == [{"id": "c-1", "result": "ok"}]
    assert broker.on(TOPICS.status) == [b"online", b"offline"]
    assert broker.sessions[0].closed
    assert broker.sessions[0].steps == [None]  # nothing after the wipe


def test_a_wipe_whose_key_cannot_be_destroyed_keeps_everything(device: Device) -> None:
    device.keys.broken = "the token is gone"
    files = sorted(path.name for path in device.state.directory.iterdir())
    link, broker = device.link([command("c-1", "wipe")])
    assert link.run() is LinkOutcome.STOPPED
    assert broker.acks() == [{"id": "c-1", "result": "failed", "reason": "the token is gone"}]
    assert sorted(path.name for path in device.state.directory.iterdir()) == files


def test_a_wipe_is_final_even_when_its_acknowledgement_is_lost(device: Device) -> None:
    link, broker = device.link([command("c-1", "wipe")])
    broker.fail_publish_on = TOPICS.acks
    assert link.run() is LinkOutcome.WIPED
    assert len(broker.connected) == 1


# -- reconnection -----------------------------------------------------------------------------------


def test_refused_and_failed_connections_back_off_exponentially(device: Device) -> None:
    refused = BrokerRefused("the broker refused the connection: Not authorized", reason_code=0x87)
    link, broker = device.link(
        refused, BrokerUnreachable("connection refused"), refused, refused, BrokerUnreachable("timed out")
    )
    assert link.run() is LinkOutcome.STOPPED
    assert device.time.waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]  # the last: after the script ended
    assert broker.connected == []


def test_backoff_is_capped(device: Device) -> None:
    link, _ = device.link(*[BrokerUnreachable("down")] * 12)
    link.run()
    assert max(device.time.waits) == RECONNECT_POLICY.backoff_max_s == 300.0


def test_backoff_has_jitter_within_its_bounds(device: Device) -> None:
    link, _ = device.link(*[BrokerUnreachable("down")] * 8)
    link._rng = random.Random(7)  # noqa: S311 - a reproducible draw
    link.run()
    bounds = [min(300.0, 2.0**attempt) for attempt in range(9)]
    assert all(0.5 <= waited <= bound for waited, bound in zip(device.time.waits, bounds, strict=True))
    assert device.time.waits != bounds


def test_a_lost_session_reconnects_after_a_backoff(device: Device) -> None:
    link, broker = device.link([Lost("keepalive timeout")], [Lost("broker restarting")], [])
    assert link.run() is LinkOutcome.STOPPED
    assert len(broker.connected) == 3
    assert device.time.waits == [1.0, 2.0]  # short sessions: the backoff grows


def test_a_session_that_lasted_resets_the_backoff(device: Device) -> None:
    link, broker = device.link(BrokerUnreachable("down"), [None] * 61 + [Lost("broker restarting")], [])
    link.run()
    assert device.time.waits == [1.0, 1.0]
    assert len(broker.connected) == 2


def test_a_publish_without_puback_loses_the_session(device: Device) -> None:
    link, broker = device.link([], [])
    broker.fail_publish_on = TOPICS.telemetry
    link.run()
    assert len(broker.connected) == 2
    assert device.time.waits[0] == 1.0


def test_stopping_during_a_backoff_ends_the_link(device: Device) -> None:
    link, _ = device.link(BrokerUnreachable("down"))
    assert link.run() is LinkOutcome.STOPPED
    assert len(device.time.waits) == 2


def test_a_renewal_by_another_thread_reconnects_with_the_new_certificate(device: Device) -> None:
    link, broker = device.link([None, device.identity.renew, None, None], [])
    link.run()
    assert len(broker.connected) == 2
    assert device.time.waits == []
    assert len(broker.sessions[0].steps) == 2  # it left at the first poll after the renewal


def test_a_failed_renewal_by_another_thread_leaves_the_session_alone(device: Device) -> None:
    device.server.handlers["simplereenroll"] = lambda sent: text(503, "busy")

    def renew_and_fail() -> None:
        with pytest.raises(EstServerBusy):
            device.identity.renew()

    link, broker = device.link([renew_and_fail, None, None])
    link.run()
    assert len(broker.connected) == 1
