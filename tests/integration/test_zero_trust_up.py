"""Zero trust end to end: ``fleetguard up`` decides with Cedar and enforces at the Mosquitto it supervises.

Real parts only: ``fleetguard up`` (API, event bus, trust evaluator, supervised Mosquitto 2 with its
dynamic-security plugin), device certificates from the installation's CA, paho-mqtt clients speaking
MQTT v5 over mutual TLS as the devices. Operators act through the HTTP API, as they would.

Covers issue 5's list: an active device publishes; it cannot publish on another device's topics;
after quarantine it is kicked and every publish after reconnect is denied (PUBACK 0x87); after
release it works again; after revocation it cannot reconnect; a decommissioned device cannot connect.
Skipped when mosquitto is missing, except under CI.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from prerequisites import free_port
from up_process import fleetguard_command, open_runtime
from waiting import eventually, healthy, wait_for

from fleetguard.config import Settings
from fleetguard.installation import Runtime
from fleetguard.inventory.lifecycle import Action as Lifecycle
from fleetguard.inventory.model import DeviceSpec
from fleetguard.pki.ca import ChainFormat

PEM = serialization.Encoding.PEM
NOT_AUTHORIZED = 0x87
ACCEPTED = {0x00, 0x10}  # MQTT 5 3.4.2.1: success, and "no matching subscribers" (also a success)
_WAIT_S = 15.0


def _require_mosquitto() -> None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        if os.environ.get("CI"):
            pytest.fail("mosquitto is missing under CI")
        pytest.skip("mosquitto is not installed")


@dataclass
class Fleet:
    api: str
    token: str
    mqtt_port: int
    files: Path
    settings: Settings

    def transition(self, device_id: str, action: str) -> None:
        response = httpx.post(
            f"{self.api}/v1/devices/{device_id}/transitions", json={"action": action, "reason": "test"},
            headers={"Authorization": f"Bearer {self.token}"}, timeout=10,
        )  # fmt: skip
        assert response.status_code == 200, response.text

    def enforced(self, device_id: str, connect: str) -> int:
        """Return how many verified enforcements of ``device_id`` with this connect outcome are logged."""
        with open_runtime(self.settings) as runtime:
            entries = runtime.log.entries(action="trust.enforced", limit=1000)
        return sum(
            1 for e in entries if e.subject == f"device:{device_id}" and e.details()["connect"] == connect
        )

    def trail(self, device_id: str) -> list[tuple[str, str, dict[str, object]]]:
        """Return the device's event trail (for failure messages)."""
        with open_runtime(self.settings) as runtime:
            entries = runtime.log.entries(limit=1000)
        return [(e.action, e.reason[:400]) for e in entries if e.subject == f"device:{device_id}"][-3:]

    def revoke(self, device_id: str) -> None:
        response = httpx.post(
            f"{self.api}/v1/devices/{device_id}/revocation", json={"reason": "keyCompromise"},
            headers={"Authorization": f"Bearer {self.token}"}, timeout=10,
        )  # fmt: skip
        assert response.status_code == 200, response.text


class Device:
    """One device's MQTT v5 connections over mutual TLS: a fresh paho client per connection."""

    def __init__(self, fleet: Fleet, device_id: str) -> None:
        self.device_id = device_id
        self.port = fleet.mqtt_port
        self.context = ssl.create_default_context(cafile=str(fleet.files / "ca.pem"))
        self.context.load_cert_chain(fleet.files / f"{device_id}.pem", fleet.files / f"{device_id}.key")
        self.closed = threading.Event()
        self.client: mqtt.Client | None = None
        self._acks: dict[int, int] = {}
        self._acked = threading.Condition()

    def connect(self) -> int:
        """Connect; return the CONNACK reason code value (raises on a refused TLS handshake)."""
        self.stop()
        self.closed.clear()
        with self._acked:
            self._acks = {}  # message ids start again at 1 on a new client
        connected = threading.Event()
        codes: list[int] = []

        def on_connect(_c: object, _u: object, _f: object, reason: mqtt.ReasonCode, _p: object) -> None:
            codes.append(reason.value)
            connected.set()

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.device_id, protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )  # fmt: skip
        client.tls_set_context(self.context)
        client.on_connect = on_connect
        client.on_publish = self._on_publish
        client.on_disconnect = lambda *_: self.closed.set()
        self.client = client
        client.connect("127.0.0.1", self.port, keepalive=30)
        client.loop_start()
        assert connected.wait(_WAIT_S), "no CONNACK"
        return codes[0]

    def publish(self, topic: str) -> int:
        """Publish QoS 1; return the PUBACK reason code."""
        assert self.client is not None
        info = self.client.publish(topic, b"reading", qos=1)
        with self._acked:
            assert self._acked.wait_for(lambda: info.mid in self._acks, _WAIT_S), "no PUBACK"
            return self._acks[info.mid]

    def stop(self) -> None:
        """Close the current connection, if any."""
        client, self.client = self.client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def _on_publish(self, _c: object, _u: object, mid: int, reason: mqtt.ReasonCode, _p: Properties) -> None:
        with self._acked:
            self._acks[mid] = reason.value
            self._acked.notify_all()


def _issue(runtime: Runtime, files: Path, device_id: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    record = runtime.pki.issue_device(
        device_id, csr.public_bytes(serialization.Encoding.DER), actor="factory"
    )
    (files / f"{device_id}.pem").write_bytes(record.pem() + runtime.pki.trust_bundle(ChainFormat.PEM))
    (files / f"{device_id}.key").write_bytes(
        key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    _require_mosquitto()
    data = tmp_path / "data"
    api_port, mqtt_port, control_port = free_port(), free_port(), free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("FLEETGUARD_")}
    env.update(
        FLEETGUARD_DATA_DIR=str(data), FLEETGUARD_CA_PASSPHRASE="zero trust test", FLEETGUARD_EST_PORT="0",
        FLEETGUARD_MQTT_HOST="127.0.0.1", FLEETGUARD_MQTT_PORT=str(mqtt_port),
        FLEETGUARD_MQTT_CONTROL_PORT=str(control_port),
    )  # fmt: skip
    init = subprocess.run(
        [*fleetguard_command(), "init", "--trust-domain", "example.org", "--json"],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    token = json.loads(init.stdout)["admin_token"]
    subprocess.run(
        [*fleetguard_command(), "ca", "init"], env=env, capture_output=True, check=True, timeout=60
    )
    files = tmp_path / "devices"
    files.mkdir()
    os.environ["FLEETGUARD_CA_PASSPHRASE"] = "zero trust test"
    settings = Settings(data_dir=data)
    with open_runtime(settings) as runtime:
        (files / "ca.pem").write_bytes(runtime.pki.trust_bundle(ChainFormat.PEM))
        for device_id in ("dev-1", "dev-2"):
            runtime.inventory.register(
                DeviceSpec(id=device_id, serial=device_id, manufacturer="Acme"), actor="t"
            )
            _issue(runtime, files, device_id)
            runtime.inventory.transition(device_id, Lifecycle.PROVISION, actor="t")
            runtime.inventory.transition(device_id, Lifecycle.ACTIVATE, actor="t")
    server = subprocess.Popen(
        [*fleetguard_command(), "up", "--port", str(api_port)], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    api = f"http://127.0.0.1:{api_port}"
    try:
        wait_for(lambda: healthy(api), "fleetguard up /healthz", server)
        wait_for(lambda: _listening(mqtt_port), "the MQTT broker", server)
        fleet = Fleet(api, token, mqtt_port, files, settings)
        for device_id in ("dev-1", "dev-2"):  # the start-up reconciliation has enforced both
            wait_for(lambda d=device_id: fleet.enforced(d, "allow") > 0, f"{device_id} enforced", server)
        yield fleet
    finally:
        server.terminate()
        try:
            server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()
        os.environ.pop("FLEETGUARD_CA_PASSPHRASE", None)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_decisions_are_enforced_at_the_broker_through_the_lifecycle(fleet: Fleet) -> None:
    device = Device(fleet, "dev-1")
    assert device.connect() == 0
    try:
        assert device.publish("devices/dev-1/telemetry") in ACCEPTED
        assert device.publish("devices/dev-2/telemetry") == NOT_AUTHORIZED  # another device's topic

        fleet.transition("dev-1", "quarantine")
        eventually(lambda: fleet.enforced("dev-1", "deny") == 1, "the quarantine is verified")
        assert device.closed.wait(_WAIT_S), "the quarantined device was not kicked"
        assert device.connect() == 0  # certificate clients are let in, and then denied everything
        codes = [device.publish("devices/dev-1/telemetry"), device.publish("devices/dev-1/status")]
        assert codes == [NOT_AUTHORIZED] * 2, (codes, fleet.trail("dev-1"))

        fleet.transition("dev-1", "release")
        eventually(lambda: fleet.enforced("dev-1", "allow") == 2, "the release is verified")
        eventually(device.closed.is_set, "the released device is kicked to pick up its rights")
        assert device.connect() == 0
        assert device.publish("devices/dev-1/telemetry") in ACCEPTED
    finally:
        device.stop()


def test_a_revoked_device_cannot_reconnect_and_a_decommissioned_one_cannot_connect(fleet: Fleet) -> None:
    device = Device(fleet, "dev-1")
    assert device.connect() == 0
    fleet.revoke("dev-1")
    assert device.closed.wait(_WAIT_S), "the revoked device was not kicked"
    eventually(lambda: _refused(device), "the revoked certificate is refused at the handshake")

    other = Device(fleet, "dev-2")
    fleet.transition("dev-2", "decommission")
    eventually(lambda: _denied(other), "the decommissioned device is denied")


def _refused(device: Device) -> bool:
    try:
        device.connect()
    except (ssl.SSLError, OSError, AssertionError):
        return True
    finally:
        device.stop()
    return False


def _denied(device: Device) -> bool:
    try:
        if device.connect() != 0:
            return True
        code = device.publish("devices/dev-2/telemetry")
    except (ssl.SSLError, OSError, AssertionError):
        return True
    finally:
        device.stop()
    return code == NOT_AUTHORIZED
