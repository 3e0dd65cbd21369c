"""The MQTT session relayed by a child process (for a TPM key): the exchange, and children that misbehave.

Scripted children (small Python programs) stand in for the real one to show what the parent does with
each answer; the real child is run against a closed port and with missing credentials. The real
child with a TPM and a broker is in ``tests/integration/test_agent_mqtt.py``.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from fleetguard.agent.errors import AgentConfigInvalid, BrokerRefused, BrokerUnreachable
from fleetguard.agent.mqtt_child import ChildSession, settings_from_json, settings_to_json
from fleetguard.agent.mqtt_session import BrokerSettings, Lost, Received, Will
from fleetguard.agent.transport import TlsClientKey, TlsKeyKind

from .conftest import TinyCa, closed_port, device_name, write_key, write_pem

WILL = Will("devices/dev-1/status", b"offline")


def _settings(tmp_path: Path, *, port: int = 8883, timeout_s: float = 5.0) -> BrokerSettings:
    return BrokerSettings(
        host="127.0.0.1", port=port, client_id="dev-1", trust_anchors=tmp_path / "anchors.pem",
        certificate=tmp_path / "certificate.pem",
        key=TlsClientKey(TlsKeyKind.FILE, str(tmp_path / "key.pem")), will=WILL,
        subscriptions=("devices/dev-1/commands",), keepalive_s=30, timeout_s=timeout_s,
    )  # fmt: skip


def _child(body: str) -> tuple[str, ...]:
    """Return the command of a scripted child: ``body`` runs after the settings line is read."""
    prelude = "import json, sys\nsettings = json.loads(sys.stdin.readline())['settings']\n"
    prelude += "def say(**m):\n    print(json.dumps(m), flush=True)\n"
    return (sys.executable, "-c", prelude + textwrap.dedent(body))


def test_settings_survive_the_exchange(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    key = TlsClientKey(TlsKeyKind.PROVIDER, str(tmp_path / "key.tss2.pem"), openssl_conf=tmp_path / "c.cnf")
    settings = BrokerSettings(**{**{f: getattr(settings, f) for f in settings.__slots__}, "key": key})
    restored = settings_from_json(settings_to_json(settings))
    # The child reads the key as a file: its OPENSSL_CONF makes the provider decode it.
    assert restored.key == TlsClientKey(TlsKeyKind.FILE, key.reference)
    assert {f: getattr(restored, f) for f in settings.__slots__ if f != "key"} == {
        f: getattr(settings, f) for f in settings.__slots__ if f != "key"
    }


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("port", "8883"),
        ("port", True),
        ("timeout_s", "5"),
        ("subscriptions", "devices/#"),
        ("will_payload", "!"),
    ],
)
def test_settings_of_the_wrong_type_are_refused(tmp_path: Path, member: str, value: object) -> None:
    data = {**settings_to_json(_settings(tmp_path)), member: value}
    with pytest.raises((TypeError, ValueError)):
        settings_from_json(data)


def test_a_child_relays_the_session(tmp_path: Path) -> None:
    child = _child("""
        assert settings["client_id"] == "dev-1"
        say(event="open")
        say(event="message", topic="devices/dev-1/commands", payload="eyJpZCI6ICJjLTEifQ==", retained=False)
        for line in sys.stdin:
            request = json.loads(line)
            if request["op"] != "publish":
                break
            say(event="published")
        say(event="lost", reason="closing")
    """)
    session = ChildSession.open(_settings(tmp_path), command=child)
    try:
        assert session.next_event(5.0) == Received("devices/dev-1/commands", b'{"id": "c-1"}', False)
        session.publish("devices/dev-1/telemetry", b"{}")
        assert session.next_event(0.05) is None
    finally:
        session.close()
    assert session._process.returncode == 0


def test_a_refusal_in_the_child_is_a_refusal_here(tmp_path: Path) -> None:
    child = _child('say(event="failed", error="refused", message="Not authorized", reason_code=135)')
    with pytest.raises(BrokerRefused, match="Not authorized") as info:
        ChildSession.open(_settings(tmp_path), command=child)
    assert info.value.reason_code == 0x87


def test_a_configuration_error_in_the_child_is_one_here(tmp_path: Path) -> None:
    child = _child('say(event="failed", error="config", message="cannot load the TLS credentials")')
    with pytest.raises(AgentConfigInvalid, match="cannot load the TLS credentials"):
        ChildSession.open(_settings(tmp_path), command=child)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("pass", "the MQTT child process exited"),
        ("print('not json', flush=True)", "the MQTT child process answered garbage"),
        ("say(event='surprise')", "the MQTT child process answered garbage: unknown event 'surprise'"),
        ("say(event='message', topic='t', payload='***', retained=False)", "answered garbage"),
        (
            "sys.stdout.write('x' * 300000); sys.stdout.flush()",
            "the MQTT child process answered a line too long",
        ),
    ],
)
def test_a_child_that_makes_no_sense_is_ended_and_unreachable(
    tmp_path: Path, body: str, message: str
) -> None:
    with pytest.raises(BrokerUnreachable, match=message):
        ChildSession.open(_settings(tmp_path), command=_child(body))


def test_a_publish_the_child_cannot_make_fails(tmp_path: Path) -> None:
    child = _child("""
        say(event="open")
        sys.stdin.readline()
        say(event="unpublished", message="no PUBACK for devices/dev-1/telemetry within 5 s")
        sys.stdin.readline()
    """)
    session = ChildSession.open(_settings(tmp_path), command=child)
    try:
        with pytest.raises(BrokerUnreachable, match="no PUBACK"):
            session.publish("devices/dev-1/telemetry", b"{}")
    finally:
        session.close()


def test_a_child_that_dies_loses_the_session(tmp_path: Path) -> None:
    session = ChildSession.open(_settings(tmp_path), command=_child('say(event="open")'))
    try:
        assert session.next_event(5.0) == Lost("the MQTT child process exited")
        with pytest.raises(BrokerUnreachable):
            session.publish("devices/dev-1/telemetry", b"{}")
    finally:
        session.close()


# -- the real child --------------------------------------------------------------------------------


def test_the_real_child_reports_missing_credentials(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigInvalid, match="cannot load the TLS credentials for MQTT"):
        ChildSession.open(_settings(tmp_path))


def test_the_real_child_reports_a_broker_that_does_not_answer(tmp_path: Path, tiny_ca: TinyCa) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    write_key(tmp_path / "key.pem", key)
    write_pem(tmp_path / "certificate.pem", tiny_ca.issue(key.public_key(), device_name("dev-1")))
    write_pem(tmp_path / "anchors.pem", tiny_ca.root)
    with pytest.raises(BrokerUnreachable, match=r"cannot connect to mqtts://127\.0\.0\.1:"):
        ChildSession.open(_settings(tmp_path, port=closed_port()))
