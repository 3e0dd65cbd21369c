"""The MQTT gateway against a real Mosquitto 2 on loopback, with devices as paho-mqtt clients.

The PKI is the installation's own (``initialize`` + ``Runtime``): its CA issues the broker's
``mqtt`` server certificate and the device certificates, and its revocation publisher signs the
complete CRL that goes into the broker's ``crlfile``, so these tests also check that Mosquitto
(OpenSSL) accepts fleetguard's CRLs. Each test gets its own broker on fresh ports.

Every test runs twice: with fleetguard's auth plugin in front of dynamic security (``plugin``) and with
dynamic-security roles alone (``dynsec``). Skipped when mosquitto, its dynamic-security plugin or
(for ``plugin``) the headers to build the auth plugin are missing, except under CI, where that is a
failure.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
import signal
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from prerequisites import free_port

from fleetguard.config import Settings
from fleetguard.gateway import (
    Access,
    BrokerConfig,
    DeviceAccess,
    GatewayService,
    Outcome,
    TopicGrant,
    find_mosquitto,
)
from fleetguard.gateway.config import DYNSEC_PLUGIN
from fleetguard.gateway.errors import BrokerCommandFailed, BrokerReloadFailed, BrokerStartFailed
from fleetguard.gateway.plugin import (
    CONTROL_TOPIC,
    RESPONSE_TOPIC,
    Answer,
    DeviceState,
    PluginUnavailable,
    build_auth_plugin,
)
from fleetguard.gateway.roles import DEVICE_ROLE_PREFIX, AclType, RoleAcl
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.model import DeviceSpec
from fleetguard.pki.ca import ChainFormat
from fleetguard.pki.revocation import RevocationReason
from fleetguard.types import utc_now

PEM = serialization.Encoding.PEM
DEVICES = ("dev-1", "dev-2", "dev-3", "dev-4", "dev-5", "dev-6")
NOT_AUTHORIZED = 0x87
ACCEPTED = (0x00, 0x10)  # success, or no matching subscribers
SENSOR = TopicGrant(Access.BOTH, "types/sensor/#")
CAMERA = TopicGrant(Access.BOTH, "types/cam/#")
KICK_BOUND_S = 0.25  # measured: about 1-5 ms from the command to the device seeing the disconnect
WAIT_S = 3.0


def _require_mosquitto() -> Path:
    executable = find_mosquitto()
    missing = "mosquitto" if executable is None else None if DYNSEC_PLUGIN.is_file() else str(DYNSEC_PLUGIN)
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} is missing under CI")
        pytest.skip(f"{missing} is not installed")
    assert executable is not None
    return executable


@dataclass(frozen=True)
class Fleet:
    """An installation with a CA, the broker's server certificate and five enrolled devices."""

    runtime: Runtime
    workdir: Path
    bundle: Path
    serials: dict[str, int]

    def crl(self) -> bytes:
        """The complete CRL of the issuing CA, as the broker's crlfile takes it."""
        return self.runtime.revocation.crl(self.runtime.pki.active_issuer_id(), None).pem()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    _require_mosquitto()
    workdir = tmp_path_factory.mktemp("fleet")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLEETGUARD_CA_PASSPHRASE", "correct horse battery staple")
        runtime = _installation(workdir)
        try:
            bundle = workdir / "bundle.pem"
            bundle.write_bytes(runtime.pki.trust_bundle(ChainFormat.PEM))
            serials = {device_id: _enroll(runtime, workdir, device_id) for device_id in DEVICES}
            yield Fleet(runtime, workdir, bundle, serials)
        finally:
            runtime.close()


def _installation(workdir: Path) -> Runtime:
    """An installation with its CA (begun a day ago) and the broker's ``mqtt`` server certificate."""
    settings = Settings(data_dir=workdir / "data", pki_base_url="http://127.0.0.1:1/pki")
    initialize(settings, "example.org", now=utc_now())
    runtime = Runtime(settings)
    runtime.pki.initialize(actor="test", now=utc_now() - dt.timedelta(days=1))
    runtime.pki.issue_server("mqtt", ["localhost"], [ipaddress.IPv4Address("127.0.0.1")], actor="test")
    return runtime


def _enroll(runtime: Runtime, workdir: Path, device_id: str) -> int:
    """Register the device, issue its certificate for a new key; write both; return the serial."""
    spec = DeviceSpec(serial=f"SN-{device_id}", manufacturer="acme", id=device_id)
    runtime.inventory.register(spec, actor="test")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    record = runtime.pki.issue_device(device_id, csr.public_bytes(PEM), actor="test")
    (workdir / f"{device_id}.pem").write_bytes(record.pem())
    key_pem = key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (workdir / f"{device_id}.key").write_bytes(key_pem)
    return record.serial


@pytest.fixture(scope="module")
def auth_plugin(fleet: Fleet) -> Path:
    try:
        return build_auth_plugin(fleet.workdir / "plugin")
    except PluginUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the auth plugin does not build under CI: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(params=["plugin", "dynsec"])
def gateway(request: pytest.FixtureRequest, fleet: Fleet, tmp_path: Path) -> Iterator[GatewayService]:
    servers = fleet.runtime.settings.data_dir / "pki" / "servers"
    plugin = request.getfixturevalue("auth_plugin") if request.param == "plugin" else None
    config = BrokerConfig(
        directory=tmp_path / "gateway", ca_bundle=fleet.bundle,
        server_certificate=servers / "mqtt.chain.pem", server_key=servers / "mqtt.key.pem",
        listen_host="127.0.0.1", listen_port=free_port(), control_port=free_port(), auth_plugin=plugin,
    )  # fmt: skip
    service = GatewayService(config, executable=_require_mosquitto(), ready_timeout_s=1.5)
    service.start(fleet.crl())
    yield service
    service.stop()


class Device:
    """An MQTT client and what it has seen (acknowledgements, messages, its disconnection)."""

    def __init__(self, client: mqtt.Client, port: int) -> None:
        self.client = client
        self.port = port
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.disconnected_at = 0.0
        self.pubacks: dict[int, int] = {}
        self.subacks: dict[int, int] = {}
        self.messages: list[str] = []
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = lambda c, u, mid, reason, p: self.pubacks.__setitem__(mid, reason.value)
        client.on_subscribe = lambda c, u, mid, reasons, p: self.subacks.__setitem__(mid, reasons[0].value)
        client.on_message = lambda c, u, message: self.messages.append(message.topic)

    @classmethod
    def of(cls, fleet: Fleet, gateway: GatewayService, device_id: str, *, v5: bool = True) -> Device:
        """The device's own client: its certificate, on the device listener."""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{device_id}-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, reconnect_on_failure=False,
        )  # fmt: skip
        client.tls_set(
            ca_certs=str(fleet.bundle), certfile=str(fleet.workdir / f"{device_id}.pem"),
            keyfile=str(fleet.workdir / f"{device_id}.key"),
        )  # fmt: skip
        return cls(client, gateway.config.listen_port)

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, p: object
    ) -> None:
        if not reason.is_failure:
            self.connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, p: object
    ) -> None:
        self.disconnected_at = time.monotonic()
        self.disconnected.set()

    def connect(self) -> bool:
        """Connect; return whether the broker accepted (False when the TLS handshake is refused)."""
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=30)
        except OSError:
            return False
        self.client.loop_start()
        _until(lambda: self.connected.is_set() or self.disconnected.is_set())
        return self.connected.is_set()

    def publish(self, topic: str) -> int:
        """Publish at QoS 1; return the PUBACK reason code (0 for MQTT 3.1.1's plain PUBACK)."""
        info = self.client.publish(topic, b"reading", qos=1)
        _until(lambda: info.mid in self.pubacks)
        return self.pubacks[info.mid]

    def subscribe(self, topic: str) -> int:
        """Subscribe at QoS 1; return the SUBACK code (granted QoS, or a failure code)."""
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        _until(lambda: mid in self.subacks)
        return self.subacks[mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _until(condition: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.fixture
def devices() -> Iterator[list[Device]]:
    """The clients a test opened, closed after it."""
    opened: list[Device] = []
    yield opened
    for device in opened:
        device.close()


def _device(
    fleet: Fleet, gateway: GatewayService, opened: list[Device], device_id: str, *, v5: bool = True
) -> Device:
    device = Device.of(fleet, gateway, device_id, v5=v5)
    opened.append(device)
    assert device.connect(), f"{device_id} could not connect"
    return device


def _observer(gateway: GatewayService, opened: list[Device]) -> Device:
    """A client on the control listener that may read every device topic: what a subscriber sees."""
    gateway.control.ensure_client("observer")
    gateway.control.ensure_role(
        "observer",
        [
            RoleAcl(AclType.SUBSCRIBE_PATTERN, "devices/#", allow=True),
            RoleAcl(AclType.PUBLISH_CLIENT_RECEIVE, "devices/#", allow=True),
        ],
    )
    gateway.control.add_client_role("observer", "observer", 1)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="observer", protocol=mqtt.MQTTv5, reconnect_on_failure=False
    )
    credential = gateway.authority.issue_client("observer", now=utc_now())
    client.tls_set_context(gateway.authority.client_context(credential, scratch=gateway.config.directory))
    observer = Device(client, gateway.config.control_port)
    opened.append(observer)
    assert observer.connect()
    assert observer.subscribe("devices/#") == 1
    return observer


def test_an_active_device_publishes_and_subscribes_under_its_own_topics(
    fleet: Fleet, gateway: GatewayService, devices: list[Device]
) -> None:
    device = _device(fleet, gateway, devices, "dev-1")
    assert device.subscribe("devices/dev-1/#") == 1
    assert device.publish("devices/dev-1/telemetry") == 0
    _until(lambda: "devices/dev-1/telemetry" in device.messages)


def test_a_device_cannot_use_another_devices_topics_or_the_control_topic(
    fleet: Fleet, gateway: GatewayService, devices: list[Device]
) -> None:
    one = _device(fleet, gateway, devices, "dev-1")
    two = _device(fleet, gateway, devices, "dev-2")
    assert two.subscribe("devices/dev-2/#") == 1
    assert one.publish("devices/dev-2/commands") == NOT_AUTHORIZED
    assert one.publish("$CONTROL/dynamic-security/v1") == NOT_AUTHORIZED
    assert one.publish(CONTROL_TOPIC) == NOT_AUTHORIZED
    # Mosquitto 2.0.11's ACL file grants any SUBSCRIBE and checks each delivery instead.
    assert one.subscribe("#") == 1
    assert two.publish("devices/dev-2/secret") in (0, 0x10)
    _until(lambda: "devices/dev-2/secret" in two.messages)
    time.sleep(0.1)
    assert one.messages == []


def test_quarantine_kicks_at_once_and_denies_everything_after_reconnect(
    fleet: Fleet, gateway: GatewayService, devices: list[Device]
) -> None:
    observer = _observer(gateway, devices)
    v5 = _device(fleet, gateway, devices, "dev-1")
    v311 = _device(fleet, gateway, devices, "dev-3", v5=False)
    started = time.monotonic()
    result = gateway.enforcer.quarantine("dev-1")
    assert result.outcome is Outcome.ENFORCED, result.detail
    assert v5.disconnected.wait(WAIT_S)
    kicked_after = v5.disconnected_at - started
    assert kicked_after < KICK_BOUND_S, f"kicked after {kicked_after * 1000:.1f} ms"
    assert gateway.enforcer.quarantine("dev-3").outcome is Outcome.ENFORCED
    assert v311.disconnected.wait(WAIT_S)

    again = _device(fleet, gateway, devices, "dev-1")
    assert again.publish("devices/dev-1/telemetry") == NOT_AUTHORIZED
    assert again.subscribe("devices/dev-1/#") == NOT_AUTHORIZED
    old = _device(fleet, gateway, devices, "dev-3", v5=False)
    assert old.publish("devices/dev-3/telemetry") == 0  # MQTT 3.1.1 has no reason code ...
    assert old.subscribe("devices/dev-3/#") == 0x80  # ... but a SUBACK failure
    time.sleep(0.2)
    assert observer.messages == []  # ... and nothing was delivered


def test_the_probe_sees_what_the_device_sees(gateway: GatewayService) -> None:
    before = gateway.probe.probe("dev-2", "devices/dev-2/fleetguard-probe")
    assert (before.publish, before.publish_reason) == ("allowed", 0)
    assert gateway.enforcer.quarantine("dev-2").outcome is Outcome.ENFORCED
    after = gateway.probe.probe("dev-2", "devices/dev-2/fleetguard-probe")
    assert (after.publish_reason, after.subscribe_reason) == (NOT_AUTHORIZED, NOT_AUTHORIZED)


def test_release_restores_the_device(fleet: Fleet, gateway: GatewayService, devices: list[Device]) -> None:
    assert gateway.enforcer.quarantine("dev-1").outcome is Outcome.ENFORCED
    quarantined = _device(fleet, gateway, devices, "dev-1")
    result = gateway.enforcer.release("dev-1")
    assert result.outcome is Outcome.ENFORCED, result.detail
    assert quarantined.disconnected.wait(WAIT_S)
    device = _device(fleet, gateway, devices, "dev-1")
    assert device.publish("devices/dev-1/telemetry") == 0x10  # no matching subscribers: accepted
    assert device.subscribe("devices/dev-1/#") == 1


def test_a_revoked_device_is_kicked_and_cannot_reconnect(
    fleet: Fleet, gateway: GatewayService, devices: list[Device]
) -> None:
    revoked = "dev-4" if gateway.plugin is not None else "dev-6"  # the fleet outlives each mode's broker
    live = _device(fleet, gateway, devices, revoked)
    fleet.runtime.pki.revoke(fleet.serials[revoked], RevocationReason.KEY_COMPROMISE, actor="test")
    result = gateway.enforcer.revoke(revoked, fleet.crl())
    assert result.outcome is Outcome.ENFORCED, result.detail
    assert "reload confirmed" in result.detail
    assert live.disconnected.wait(WAIT_S)
    assert not Device.of(fleet, gateway, revoked).connect()
    assert _device(fleet, gateway, devices, "dev-1").publish("devices/dev-1/x") == 0x10


def _device_role(gateway: GatewayService, device_id: str) -> str | None:
    current = gateway.control.client_roles(device_id)
    roles = [name for name in (current.roles if current else {}) if name.startswith(DEVICE_ROLE_PREFIX)]
    assert len(roles) <= 1, roles
    return roles[0] if roles else None


def test_a_device_gets_its_type_topics_and_loses_them_when_its_type_or_plan_changes(
    fleet: Fleet, gateway: GatewayService, devices: list[Device]
) -> None:
    assert gateway.enforcer.apply(DeviceAccess("dev-1", (SENSOR,))).outcome is Outcome.ENFORCED
    sensor_role = _device_role(gateway, "dev-1")
    assert (sensor_role is None) is (gateway.plugin is not None)
    device = _device(fleet, gateway, devices, "dev-1")
    other = _device(fleet, gateway, devices, "dev-2")
    assert device.subscribe("types/sensor/#") == 1
    assert device.publish("types/sensor/reading") in ACCEPTED
    _until(lambda: "types/sensor/reading" in device.messages)
    assert device.publish("devices/dev-1/telemetry") in ACCEPTED  # its role carries its own subtree
    assert device.publish("types/cam/reading") == NOT_AUTHORIZED
    assert device.publish("devices/dev-2/commands") == NOT_AUTHORIZED
    assert other.publish("types/sensor/reading") == NOT_AUTHORIZED  # dev-2 has no type grant
    assert device.subscribe("#") == 1  # granted by the ACL file; every delivery is checked
    assert other.publish("devices/dev-2/secret") in ACCEPTED
    time.sleep(0.1)
    assert "devices/dev-2/secret" not in device.messages

    assert gateway.enforcer.apply(DeviceAccess("dev-1", (CAMERA,))).outcome is Outcome.ENFORCED
    assert device.disconnected.wait(WAIT_S)  # a changed role kicks the device
    if sensor_role is not None:
        assert gateway.control.role_acls(sensor_role) is None  # the old role is deleted
    moved = _device(fleet, gateway, devices, "dev-1")
    assert moved.publish("types/sensor/reading") == NOT_AUTHORIZED
    assert moved.publish("types/cam/reading") in ACCEPTED
    assert moved.publish("devices/dev-1/telemetry") in ACCEPTED

    camera_role = _device_role(gateway, "dev-1")
    assert (camera_role is None) is (gateway.plugin is not None)
    own = (TopicGrant(Access.BOTH, "devices/%u/#"),)
    assert gateway.enforcer.apply(DeviceAccess("dev-1", own)).outcome is Outcome.ENFORCED
    assert moved.disconnected.wait(WAIT_S)
    assert _device_role(gateway, "dev-1") is None
    if camera_role is not None:
        assert gateway.control.role_acls(camera_role) is None
    plain = _device(fleet, gateway, devices, "dev-1")
    assert plain.publish("types/cam/reading") == NOT_AUTHORIZED
    assert plain.publish("devices/dev-1/telemetry") in ACCEPTED  # the ACL file's pattern


def test_a_quarantined_device_cannot_use_its_type_topics(
    fleet: Fleet, gateway: GatewayService, devices: list[Device]
) -> None:
    assert gateway.enforcer.apply(DeviceAccess("dev-2", (SENSOR,))).outcome is Outcome.ENFORCED
    assert gateway.enforcer.quarantine("dev-2").outcome is Outcome.ENFORCED
    if gateway.plugin is None:
        assert _device_role(gateway, "dev-2") is not None  # the grant is held, the quarantine beats it
    else:
        assert gateway.plugin.state("dev-2") == DeviceState(True, "sensor", Access.BOTH)
    device = _device(fleet, gateway, devices, "dev-2")
    assert device.publish("types/sensor/reading") == NOT_AUTHORIZED
    assert device.subscribe("types/sensor/#") == NOT_AUTHORIZED
    assert device.publish("devices/dev-2/telemetry") == NOT_AUTHORIZED

    both = DeviceAccess("dev-3", (SENSOR,), quarantined=True)
    assert gateway.enforcer.apply(both).outcome is Outcome.ENFORCED
    assert _device(fleet, gateway, devices, "dev-3").publish("types/sensor/x") == NOT_AUTHORIZED


def test_deleting_a_missing_role_is_answered_role_not_found(gateway: GatewayService) -> None:
    with pytest.raises(BrokerCommandFailed, match="Role not found"):
        gateway.control.call({"command": "deleteRole", "rolename": f"{DEVICE_ROLE_PREFIX}missing"})
    gateway.control.delete_role(f"{DEVICE_ROLE_PREFIX}missing")  # gone already: not an error


def test_a_broker_that_is_down_is_reported_not_enforced(gateway: GatewayService) -> None:
    gateway.broker.stop()
    gateway.control.close()
    result = gateway.enforcer.quarantine("dev-1")
    assert result.outcome is Outcome.NOT_ENFORCED
    assert not result.verified
    assert result.retryable
    assert "BrokerUnavailable" in result.detail
    assert result.elapsed_s < WAIT_S


def test_a_killed_broker_is_restarted_and_keeps_its_quarantines(
    fleet: Fleet, gateway: GatewayService, devices: list[Device]
) -> None:
    assert gateway.enforcer.quarantine("dev-5").outcome is Outcome.ENFORCED
    pid = gateway.broker.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    _until(lambda: gateway.broker.restarts == 1, timeout=5.0)
    assert gateway.broker.pid not in (None, pid)
    device = _device(fleet, gateway, devices, "dev-5")
    assert device.publish("devices/dev-5/x") == NOT_AUTHORIZED
    assert gateway.enforcer.release("dev-5").outcome is Outcome.ENFORCED


def test_a_reload_that_fails_restarts_the_broker_which_then_fails_closed(
    fleet: Fleet, gateway: GatewayService, devices: list[Device]
) -> None:
    # What Mosquitto 2.0.11 does with an unreadable crlfile at SIGHUP is accept revoked devices.
    gateway.config.crl_file.write_bytes(b"not a CRL\n")
    with pytest.raises(BrokerReloadFailed, match="Unable to load certificate revocation file"):
        gateway.broker.reload()
    assert not Device.of(fleet, gateway, "dev-1").connect()
    gateway.broker.install_crl(fleet.crl())
    _until(lambda: gateway.broker.running and gateway.broker.restarts >= 1, timeout=10.0)
    assert _device(fleet, gateway, devices, "dev-1").publish("devices/dev-1/x") == 0x10


def test_the_gateway_files_are_private(gateway: GatewayService) -> None:
    gateway.enforcer.quarantine("dev-2")  # the plugin rewrites dynsec.json
    directory = gateway.config.directory
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


# -- the auth plugin -----------------------------------------------------------------------------


@pytest.fixture
def plugged(gateway: GatewayService) -> GatewayService:
    if gateway.plugin is None:
        pytest.skip("dynamic-security mode has no auth plugin")
    return gateway


def _send(gateway: GatewayService, payload: bytes, correlation: str = "test-1") -> Answer:
    answer = gateway.control.exchange(CONTROL_TOPIC, payload, correlation, "raw")
    assert isinstance(answer, Answer)
    return answer


def test_a_device_cannot_command_the_plugin_or_read_its_answers(
    fleet: Fleet, plugged: GatewayService, devices: list[Device]
) -> None:
    device = _device(fleet, plugged, devices, "dev-1")
    assert device.subscribe(RESPONSE_TOPIC) == NOT_AUTHORIZED
    assert device.subscribe("$CONTROL/fleetguard/#") == NOT_AUTHORIZED
    assert device.publish(f"{CONTROL_TOPIC}") == NOT_AUTHORIZED
    info = device.client.publish(CONTROL_TOPIC, b"id x\nquarantine dev-2", qos=1)
    _until(lambda: info.mid in device.pubacks)
    assert device.pubacks[info.mid] == NOT_AUTHORIZED
    assert plugged.plugin is not None
    assert plugged.plugin.state("dev-2") == DeviceState()


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"id test-1\nquarantine dev-1\nbogus dev-2", "3 unknown command"),
        (b"id test-1\nquarantine dev-1\ntype dev-1 sensor rwx", "3 invalid access"),
        (b"id test-1\nquarantine dev-1\nquarantine devices/#", "3 invalid username"),
        (b"id test-1\nquarantine dev-1\nquarantine  dev-1", "3 malformed line"),
        (b"id test-1\nquarantine dev-1\nquarantine dev-1\x00", "3 line too long or with NUL or CR"),
        (b"id test-1\nquarantine dev-1\nget " + b"d" * 600, "3 line too long or with NUL or CR"),
        (b"id test-1\nquarantine dev-1\n" + b"get dev-1\n" * 10_000, "10002 too many commands"),
        (b"id test-1\n", "1 no command"),
    ],
)
def test_a_malformed_command_is_answered_with_an_error_and_changes_nothing(
    plugged: GatewayService, payload: bytes, error: str
) -> None:
    assert plugged.plugin is not None
    answer = _send(plugged, payload)
    assert answer.error is not None
    assert answer.error.startswith(error.split(" ", 1)[0])
    assert error.split(" ", 1)[1] in answer.error
    assert plugged.plugin.state("dev-1") == DeviceState()


def test_a_payload_without_an_id_is_answered_without_one(plugged: GatewayService) -> None:
    answer = _send(plugged, b"quarantine dev-1", correlation="-")
    assert answer.error is not None
    assert "first line must be id" in answer.error


def test_random_payloads_do_not_crash_the_broker_or_change_anything(plugged: GatewayService) -> None:
    assert plugged.plugin is not None
    rng = __import__("random").Random(5)
    words = [b"quarantine", b"release", b"type", b"untype", b"get", b"dev-1", b"sensor", b"rw", b" ", b"\n"]
    for _ in range(300):
        body = b"".join(rng.choice([*words, bytes([rng.randrange(256)])]) for _ in range(rng.randrange(12)))
        body = body.replace(b"dev-1", b"dev-9")  # dev-1 must stay untouched
        _send(plugged, b"id fuzz\n" + body, correlation="fuzz")  # answered: the broker is alive
    assert plugged.broker.restarts == 0
    assert plugged.plugin.state("dev-1") == DeviceState()


def test_a_bulk_message_sets_many_devices_at_once(plugged: GatewayService) -> None:
    lines = b"".join(b"type bulk-%d sensor r\n" % i for i in range(5000))
    answer = _send(plugged, b"id bulk\n" + lines + b"get bulk-4999", correlation="bulk")
    assert answer.states == {"bulk-4999": DeviceState(False, "sensor", Access.SUBSCRIBE)}


def test_a_malformed_state_file_keeps_the_broker_from_starting(plugged: GatewayService) -> None:
    plugged.broker.stop()
    plugged.config.plugin_state_file.write_bytes(b"fleetguard-auth-state 1\ndevice dev-1 2 - -\n")
    with pytest.raises(BrokerStartFailed, match="line 2 is malformed"):
        plugged.broker.start()


def test_switching_from_the_plugin_back_to_dynamic_security_keeps_quarantines(
    fleet: Fleet, plugged: GatewayService, devices: list[Device]
) -> None:
    assert plugged.enforcer.quarantine("dev-1").outcome is Outcome.ENFORCED
    plugged.stop()
    config = dataclasses.replace(plugged.config, auth_plugin=None)  # FLEETGUARD_MQTT_PLUGIN=off
    fallback = GatewayService(config, executable=_require_mosquitto(), ready_timeout_s=1.5)
    fallback.start(fleet.crl())
    try:
        again = _device(fleet, fallback, devices, "dev-1")
        assert again.publish("devices/dev-1/telemetry") == NOT_AUTHORIZED  # from the first moment
        assert _device(fleet, fallback, devices, "dev-2").publish("devices/dev-2/telemetry") in (0, 0x10)
        assert fallback.enforcer.release("dev-1").outcome is Outcome.ENFORCED
    finally:
        fallback.stop()
