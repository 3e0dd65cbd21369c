"""``fleetguard-agent run`` against a real Mosquitto over mutual TLS, enrolled through a real EST server.

The broker trusts the fleet's CA chain, requires a client certificate and takes its identity (the CN,
the device id) as the username; its ACL lets each device use ``devices/<its id>/#`` and user ``ops``
(an operator's certificate) read and write ``devices/#``. The agent runs as its own program, as on a
device: telemetry reaches ``ops`` but not another device, a ``reenroll`` command renews the
certificate and the agent reconnects with it, a ``wipe`` command deletes the key, the certificate and
the configuration and the program exits 0. Skipped when a tool is missing, except under CI.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from prerequisites import free_port, require

from fleetguard.config import Settings
from fleetguard.enroll.est_server import EstServer
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.model import DeviceSpec
from fleetguard.pki.ca import ChainFormat
from fleetguard.types import utc_now

PEM = serialization.Encoding.PEM
DEVICE_ID = "dev-1"
AGENT = str(Path(sys.executable).with_name("fleetguard-agent"))
MOSQUITTO = Path("/usr/sbin/mosquitto")
TPM_TOOLS = ("swtpm", "tpm2-abrmd", "dbus-daemon")
TPM2_PROVIDER = Path("/usr/lib/x86_64-linux-gnu/ossl-modules/tpm2.so")
WAIT_S = 20.0


@dataclass
class Fleet:
    """A running installation with EST and Mosquitto, and what an agent needs to reach them."""

    url: str
    mqtt_url: str
    mqtt_port: int
    runtime: Runtime
    root: Path
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)

    def agent(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [AGENT, *args], capture_output=True, text=True, env={**os.environ, **self.env}, timeout=60,
            check=False,
        )  # fmt: skip
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    def enroll(self, state: Path, *store: str) -> None:
        _, token = self.runtime.enroll.create_token(DEVICE_ID, ttl=dt.timedelta(hours=1), actor="test")
        token_file = self.tmp / "token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        self.agent(
            "enroll", "--server", self.url, "--trust-anchors", str(self.root), "--state-dir", str(state),
            "--device-id", DEVICE_ID, "--token-file", str(token_file), "--mqtt", self.mqtt_url, *store,
        )  # fmt: skip

    def run(self, state: Path) -> Agent:
        log = self.tmp / "agent.log"
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [AGENT, "run", "--state-dir", str(state), "--telemetry-interval", "1"],
                stderr=stderr, env={**os.environ, **self.env},
            )  # fmt: skip
        return Agent(process, log)

    def credential(self, name: str) -> tuple[Path, Path]:
        """Register ``name`` and return a certificate (CN = name) and its key, as files."""
        self.runtime.inventory.register(
            DeviceSpec(serial=f"SN-{name}", manufacturer="acme", id=name), actor="test"
        )
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.DER)
        )
        record = self.runtime.pki.issue_device(name, csr, actor="test")
        certificate, key_file = self.tmp / f"{name}.pem", self.tmp / f"{name}.key"
        certificate.write_bytes(record.pem() + self.runtime.pki.trust_bundle(ChainFormat.PEM))
        key_file.write_bytes(
            key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        key_file.chmod(0o600)
        return certificate, key_file

    def watcher(self, name: str, topic: str) -> Watcher:
        """Return an MQTT client authenticated as ``name`` subscribed to ``topic``."""
        certificate, key = self.credential(name)
        return Watcher.open(self.mqtt_port, self.root, certificate, key, topic)


@dataclass
class Agent:
    """A running ``fleetguard-agent run`` and its log."""

    process: subprocess.Popen[bytes]
    log: Path

    def exited(self, timeout: float = WAIT_S) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"the agent did not exit:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class Watcher:
    """A paho client that collects the messages of one subscription."""

    client: Client
    messages: queue.Queue[MQTTMessage]

    @classmethod
    def open(cls, port: int, root: Path, certificate: Path, key: Path, topic: str) -> Watcher:
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"watch-{certificate.stem}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        watcher = cls(client, queue.Queue())
        client.tls_set(ca_certs=str(root), certfile=str(certificate), keyfile=str(key))
        client.on_message = lambda _client, _userdata, message: watcher.messages.put(message)
        client.connect("127.0.0.1", port)
        client.loop_start()
        client.subscribe(topic, qos=1)
        return watcher

    def next(self, topic: str, timeout: float = WAIT_S) -> bytes:
        """Return the payload of the next message on ``topic`` (skipping others)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self.messages.get(timeout=left)
            except queue.Empty:
                break
            if message.topic == topic:
                return bytes(message.payload)
        pytest.fail(f"nothing on {topic} within {timeout} s")

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(WAIT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            assert process.poll() is None, "mosquitto exited"
            assert time.monotonic() < deadline, "mosquitto does not listen"
            time.sleep(0.05)
        else:
            return


def _start_mosquitto(tmp: Path, servers: Path, ca_bundle: Path, port: int) -> subprocess.Popen[bytes]:
    acl = tmp / "mosquitto.acl"
    acl.write_text("user ops\ntopic readwrite devices/#\n\npattern readwrite devices/%u/#\n")
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        "per_listener_settings false\n"
        f"user {pwd.getpwuid(os.getuid()).pw_name}\n"  # as root, Mosquitto would switch to `mosquitto`
        "persistence false\nallow_anonymous false\n"
        "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
        f"acl_file {acl}\n"
        f"listener {port} 127.0.0.1\n"
        f"cafile {ca_bundle}\ncertfile {servers / 'est.chain.pem'}\nkeyfile {servers / 'est.key.pem'}\n"
        "require_certificate true\nuse_identity_as_username true\n"
    )
    with (tmp / "mosquitto.log").open("wb") as log:
        process = subprocess.Popen([str(MOSQUITTO), "-c", str(conf)], stderr=log)
    _wait_for_port(port, process)
    return process


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    """An installation with device ``dev-1`` registered, EST and Mosquitto on loopback ports."""
    require(Path(AGENT).exists(), "the fleetguard-agent program")
    require(MOSQUITTO.exists(), "mosquitto")
    monkeypatch.setenv("FLEETGUARD_CA_PASSPHRASE", "correct horse battery staple")
    settings = Settings(data_dir=tmp_path / "data", pki_base_url="http://127.0.0.1:1/pki")
    initialize(settings, "example.org", now=utc_now())
    runtime = Runtime(settings)
    runtime.pki.initialize(actor="test", now=utc_now() - dt.timedelta(days=60))
    runtime.pki.issue_server("est", ["localhost"], [ipaddress.IPv4Address("127.0.0.1")], actor="test")
    runtime.inventory.register(DeviceSpec(serial="SN-1", manufacturer="acme", id=DEVICE_ID), actor="test")
    servers = settings.data_dir / "pki" / "servers"
    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_bytes(runtime.pki.trust_bundle(ChainFormat.PEM))
    server = EstServer(
        runtime.enroll,
        lambda: runtime.pki.trust_bundle(ChainFormat.PEM),
        lambda: runtime.pki.trust_bundle(ChainFormat.PEM),
        servers / "est.chain.pem",
        servers / "est.key.pem",
    )
    server.start()
    port = free_port()
    broker = _start_mosquitto(tmp_path, servers, bundle, port)
    root = tmp_path / "root.pem"
    root.write_bytes(runtime.pki.authorities()[0].certificate.public_bytes(PEM))
    try:
        yield Fleet(
            f"https://127.0.0.1:{server.address[1]}",
            f"mqtts://127.0.0.1:{port}",
            port,
            runtime,
            root,
            tmp_path,
        )
    finally:
        broker.terminate()
        broker.wait(timeout=10)
        server.stop()
        runtime.close()


def _leaf(state: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates((state / "certificate.pem").read_bytes())[0]


def _topic(name: str) -> str:
    return f"devices/{DEVICE_ID}/{name}"


def _command(ops: Watcher, command_id: str, name: str) -> dict[str, str]:
    """Send a command as ``ops``; return the next acknowledgement, which must be this command's."""
    ops.publish(_topic("commands"), json.dumps({"id": command_id, "command": name}).encode())
    ack: dict[str, str] = json.loads(ops.next(_topic("commands/ack")))
    assert ack["id"] == command_id
    return ack


def _telemetry(ops: Watcher) -> dict[str, object]:
    report: dict[str, object] = json.loads(ops.next(_topic("telemetry")))
    return report


def test_telemetry_reenroll_and_wipe_over_mutual_tls(fleet: Fleet) -> None:
    state = fleet.tmp / "agent"
    fleet.enroll(state)
    assert json.loads((state / "agent.json").read_text())["mqtt_url"] == fleet.mqtt_url
    first = _leaf(state)
    ops = fleet.watcher("ops", f"devices/{DEVICE_ID}/#")
    other = fleet.watcher("dev-2", f"devices/{DEVICE_ID}/#")
    agent = fleet.run(state)
    try:
        assert ops.next(_topic("status")) == b"online"
        report = _telemetry(ops)
        assert report["certificate_serial"] == f"{first.serial_number:x}"
        assert report["certificate_not_after"] == first.not_valid_after_utc.isoformat()
        assert {"time", "uptime_s", "agent_version"} <= report.keys()
        _telemetry(ops)  # a second report: the other device had time to receive one too
        # Mosquitto 2.0.11 grants the subscription and checks read access per message, so: nothing.
        assert other.messages.empty()
        other.publish(_topic("commands"), json.dumps({"id": "x-1", "command": "wipe"}).encode())

        ack = _command(ops, "c-1", "reenroll")  # the first acknowledgement: dev-2's command never arrived
        second = _leaf(state)
        assert ack == {"id": "c-1", "result": "ok", "serial": f"{second.serial_number:x}"}
        assert second.serial_number != first.serial_number
        deadline = time.monotonic() + WAIT_S  # the agent reconnects with the new certificate
        while _telemetry(ops)["certificate_serial"] != ack["serial"]:
            assert time.monotonic() < deadline

        assert _command(ops, "c-2", "reboot")["result"] == "rejected"
        ops.publish(_topic("commands"), b"{not json")  # ignored, with a log line

        assert _command(ops, "c-3", "wipe") == {"id": "c-3", "result": "ok"}
        assert agent.exited() == 0
    finally:
        agent.stop()
        ops.close()
        other.close()
    log = agent.log.read_text()
    assert "ignored a command: not UTF-8 JSON" in log
    assert "the device was wiped" in log
    assert not (state / "device-key.pem").exists()
    assert not (state / "certificate.pem").exists()
    assert not (state / "agent.json").exists()


def test_a_broker_that_refuses_the_certificate_is_retried_with_backoff_until_sigterm(fleet: Fleet) -> None:
    state = fleet.tmp / "agent"
    fleet.enroll(state)
    other = fleet.tmp / "other-broker"  # trusts another CA only: the device certificate is refused
    other.mkdir()
    foreign_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "foreign root")])
    foreign = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(foreign_key.public_key())
        .serial_number(1).not_valid_before(utc_now() - dt.timedelta(days=1))
        .not_valid_after(utc_now() + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(foreign_key, hashes.SHA256())
    )  # fmt: skip
    (other / "foreign.pem").write_bytes(foreign.public_bytes(PEM))
    port = free_port()
    broker = _start_mosquitto(other, fleet.tmp / "data" / "pki" / "servers", other / "foreign.pem", port)
    config = json.loads((state / "agent.json").read_text())
    (state / "agent.json").write_text(json.dumps({**config, "mqtt_url": f"mqtts://127.0.0.1:{port}"}))
    agent = fleet.run(state)
    try:
        deadline = time.monotonic() + WAIT_S
        while agent.log.read_text().count("reconnecting to the broker in") < 3:
            assert time.monotonic() < deadline, agent.log.read_text()
            time.sleep(0.1)
        agent.process.send_signal(signal.SIGTERM)
        assert agent.exited() == 0
    finally:
        agent.stop()
        broker.terminate()
        broker.wait(timeout=10)
    log = agent.log.read_text()
    assert f"no MQTT session with 127.0.0.1:{port}" in log
    delays = [float(line.split(" in ")[1].split()[0]) for line in log.splitlines() if "reconnecting" in line]
    for delay, bound in zip(delays[:3], [1.0, 2.0, 4.0], strict=True):  # RECONNECT_POLICY, with jitter
        assert 0.5 <= delay <= bound


def test_sigterm_disconnects_and_leaves_the_status_offline(fleet: Fleet) -> None:
    state = fleet.tmp / "agent"
    fleet.enroll(state)
    ops = fleet.watcher("ops", _topic("status"))
    agent = fleet.run(state)
    try:
        assert ops.next(_topic("status")) == b"online"
        agent.process.send_signal(signal.SIGTERM)
        assert agent.exited() == 0
        assert ops.next(_topic("status")) == b"offline"
    finally:
        agent.stop()
        ops.close()
    assert (state / "certificate.pem").exists()


# -- TPM 2.0: the session runs in a child process with the tpm2 provider ------------------------------


@pytest.fixture
def tpm(tmp_path: Path) -> Iterator[dict[str, str]]:
    """swtpm behind a private tpm2-abrmd on a private D-Bus (as in test_agent.py); yields its environment."""
    for tool in TPM_TOOLS:
        require(shutil.which(tool) is not None or Path("/usr/sbin", tool).exists(), tool)
    require(TPM2_PROVIDER.exists(), "tpm2-openssl")
    (tmp_path / "swtpm").mkdir()
    server = free_port()
    while _port_in_use(server + 1):  # the swtpm TCTI finds the control channel on the next port
        server = free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(subprocess.Popen([
            "swtpm", "socket", "--tpm2", "--tpmstate", f"dir={tmp_path / 'swtpm'}",
            "--server", f"type=tcp,port={server},bindaddr=127.0.0.1",
            "--ctrl", f"type=tcp,port={server + 1},bindaddr=127.0.0.1",
            "--flags", "not-need-init,startup-clear",
        ]))  # fmt: skip
        bus = subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", "--print-address=1", "--nopidfile"],
            stdout=subprocess.PIPE,
        )
        processes.append(bus)
        assert bus.stdout is not None
        env = {"DBUS_SESSION_BUS_ADDRESS": bus.stdout.readline().decode().strip()}
        _wait_for_port(server, processes[0])
        name = f"com.intel.tss2.Tabrmd.fgmqtt{os.getpid()}"
        processes.append(subprocess.Popen(
            [shutil.which("tpm2-abrmd") or "/usr/sbin/tpm2-abrmd", "--session", "--allow-root",
             f"--dbus-name={name}", f"--tcti=swtpm:host=127.0.0.1,port={server}"],
            env={**os.environ, **env},
        ))  # fmt: skip
        tcti = f"tabrmd:bus_type=session,bus_name={name}"
        _wait_for_tpm({**os.environ, **env, "TPM2OPENSSL_TCTI": tcti})
        yield {**env, "TCTI": tcti}
    finally:
        for process in reversed(processes):
            if process.stdout is not None:
                process.stdout.close()
            process.terminate()
            process.wait(timeout=10)


def _port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _wait_for_tpm(env: dict[str, str]) -> None:
    """Return once the TPM answers through abrmd (it registers on the bus a moment after starting)."""
    deadline = time.monotonic() + 15
    while True:
        probe = subprocess.run(
            ["openssl", "rand", "-provider", "tpm2", "-hex", "4"], capture_output=True, env=env, check=False
        )
        if probe.returncode == 0:
            return
        assert time.monotonic() < deadline, probe.stderr.decode(errors="replace")
        time.sleep(0.1)


def test_a_tpm_key_authenticates_mqtt_renews_and_wipe_deletes_its_wrapping(
    fleet: Fleet, tpm: dict[str, str]
) -> None:
    fleet.env["DBUS_SESSION_BUS_ADDRESS"] = tpm["DBUS_SESSION_BUS_ADDRESS"]
    state = fleet.tmp / "agent"
    fleet.enroll(state, "--key-store", "tpm", "--tpm-tcti", tpm["TCTI"])
    ops = fleet.watcher("ops", f"devices/{DEVICE_ID}/#")
    agent = fleet.run(state)
    try:
        assert _telemetry(ops)["certificate_serial"] == f"{_leaf(state).serial_number:x}"
        ack = _command(ops, "c-1", "reenroll")  # EST through the provider child, then a new MQTT child
        assert ack["serial"] == f"{_leaf(state).serial_number:x}"
        deadline = time.monotonic() + WAIT_S
        while _telemetry(ops)["certificate_serial"] != ack["serial"]:
            assert time.monotonic() < deadline
        assert _command(ops, "c-2", "wipe") == {"id": "c-2", "result": "ok"}
        assert agent.exited() == 0
    finally:
        agent.stop()
        ops.close()
    assert not (state / "device-key.tss2.pem").exists()
    assert not (state / "agent.json").exists()
