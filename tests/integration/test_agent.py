"""``fleetguard-agent`` against a real EST server, with each key store: a file, SoftHSM2 over PKCS#11,
and a TPM 2.0 (swtpm behind tpm2-abrmd, reached through the tpm2-openssl provider).

The installation is real (database, event log, PKI, enrollment service, the EST server on a
loopback port); the agent runs as its own program, as on a device. Skipped when a tool is missing,
except under CI, where that is a failure.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import stat
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
from prerequisites import require

from fleetguard.config import Settings
from fleetguard.enroll.est_server import EstServer
from fleetguard.enroll.rules import RuleMode
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.model import DeviceSpec
from fleetguard.pki.ca import ChainFormat
from fleetguard.pki.keys_pkcs11 import SOFTHSM2_MODULE
from fleetguard.pki.revocation import RevocationReason
from fleetguard.types import utc_now

PEM = serialization.Encoding.PEM
DEVICE_ID = "dev-1"
AGENT = str(Path(sys.executable).with_name("fleetguard-agent"))
TPM_TOOLS = ("swtpm", "tpm2-abrmd", "dbus-daemon")
TPM2_PROVIDER = Path("/usr/lib/x86_64-linux-gnu/ossl-modules/tpm2.so")
LIBP11_ENGINE = Path("/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so")


@dataclass
class Fleet:
    """A running installation with EST, and what an agent needs to reach it."""

    url: str
    runtime: Runtime
    root: Path
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)

    def token(self) -> Path:
        _, text = self.runtime.enroll.create_token(DEVICE_ID, ttl=dt.timedelta(hours=1), actor="test")
        path = self.tmp / f"token-{time.monotonic_ns()}"
        path.write_text(text)
        path.chmod(0o600)
        return path

    def agent(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [AGENT, *args], capture_output=True, text=True, env={**os.environ, **self.env}, timeout=timeout,
            check=False,
        )  # fmt: skip
        if check:
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    def enroll(
        self, state: Path, *store: str, token: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.agent(
            "enroll", "--server", self.url, "--trust-anchors", str(self.root), "--state-dir", str(state),
            "--device-id", DEVICE_ID, "--token-file", str(token or self.token()), "--json", *store,
            check=check,
        )  # fmt: skip

    def certificates(self) -> list[int]:
        return sorted(record.serial for record in self.runtime.pki.certificates(device_id=DEVICE_ID))


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    """An installation whose CA began 60 days ago, device ``dev-1`` registered, EST on a loopback port."""
    require(Path(AGENT).exists(), "the fleetguard-agent program")
    monkeypatch.setenv("FLEETGUARD_CA_PASSPHRASE", "correct horse battery staple")
    settings = Settings(data_dir=tmp_path / "data", pki_base_url="http://127.0.0.1:1/pki")
    initialize(settings, "example.org", now=utc_now())
    runtime = Runtime(settings)
    runtime.pki.initialize(actor="test", now=utc_now() - dt.timedelta(days=60))
    runtime.pki.issue_server("est", ["localhost"], [ipaddress.IPv4Address("127.0.0.1")], actor="test")
    runtime.inventory.register(DeviceSpec(serial="SN-1", manufacturer="acme", id=DEVICE_ID), actor="test")
    servers = settings.data_dir / "pki" / "servers"

    def client_trust_anchors() -> bytes:  # operational CAs and registered manufacturer CAs, as `up` uses
        manufacturers = b"".join(ca.certificate.public_bytes(PEM) for ca in runtime.enroll.manufacturer_cas())
        return runtime.pki.trust_bundle(ChainFormat.PEM) + manufacturers

    server = EstServer(
        runtime.enroll,
        client_trust_anchors,
        lambda: runtime.pki.trust_bundle(ChainFormat.PEM),
        servers / "est.chain.pem",
        servers / "est.key.pem",
        reload_interval_s=0.0,  # a manufacturer CA a test registers is trusted at once
    )
    server.start()
    root = tmp_path / "root.pem"  # what the device is provisioned with at the factory
    root.write_bytes(runtime.pki.authorities()[0].certificate.public_bytes(PEM))
    try:
        yield Fleet(f"https://127.0.0.1:{server.address[1]}", runtime, root, tmp_path)
    finally:
        server.stop()
        runtime.close()


def _leaf(state: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates((state / "certificate.pem").read_bytes())[0]


def _enroll_then_renew(fleet: Fleet, state: Path, *store: str) -> tuple[x509.Certificate, x509.Certificate]:
    enrolled = json.loads(fleet.enroll(state, *store).stdout)
    first = _leaf(state)
    assert enrolled["result"] == "enrolled"
    assert enrolled["device_id"] == DEVICE_ID
    assert int(enrolled["serial"], 16) == first.serial_number
    assert fleet.certificates() == [first.serial_number]
    renewed = json.loads(fleet.agent("renew", "--state-dir", str(state), "--json").stdout)
    second = _leaf(state)
    assert renewed["result"] == "renewed"
    assert int(renewed["serial"], 16) == second.serial_number != first.serial_number
    assert second.public_key() == first.public_key()  # re-enrollment renews the same key
    assert second.subject == first.subject
    assert fleet.certificates() == sorted([first.serial_number, second.serial_number])
    chain = x509.load_pem_x509_certificates((state / "certificate.pem").read_bytes())
    second.verify_directly_issued_by(chain[1])
    return first, second


# -- file key store --------------------------------------------------------------------------------


def test_file_key_store_enrolls_with_a_token_and_renews_the_same_key(fleet: Fleet) -> None:
    state = fleet.tmp / "agent"
    _enroll_then_renew(fleet, state)
    key_file = state / "device-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    status = json.loads(fleet.agent("status", "--state-dir", str(state), "--json").stdout)
    assert status["device_id"] == DEVICE_ID
    assert status["phase"] == "valid"
    assert status["key_store"] == f"file {key_file}"


def test_a_used_token_is_refused_and_nothing_is_saved(fleet: Fleet) -> None:
    token = fleet.token()
    fleet.enroll(fleet.tmp / "a", token=token)
    replay = fleet.enroll(fleet.tmp / "b", token=token, check=False)
    assert replay.returncode == 1
    assert "EST simpleenroll refused with HTTP 401" in replay.stderr
    assert not (fleet.tmp / "b" / "certificate.pem").exists()
    assert len(fleet.certificates()) == 1


def test_a_server_outside_the_trust_anchors_is_not_talked_to(fleet: Fleet) -> None:
    other = fleet.tmp / "other.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name.from_rfc4514_string("CN=someone else")
    now = utc_now()
    other.write_bytes(
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
        .public_bytes(PEM)
    )  # fmt: skip
    result = fleet.agent(
        "enroll", "--server", fleet.url, "--trust-anchors", str(other), "--state-dir", str(fleet.tmp / "a"),
        "--device-id", DEVICE_ID, "--token-file", str(fleet.token()), check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "certificate verify failed" in result.stderr
    assert fleet.certificates() == []


def test_a_certificate_that_expired_offline_renews_inside_the_grace_window(fleet: Fleet) -> None:
    state = fleet.tmp / "agent"
    fleet.enroll(state)
    days = fleet.runtime.settings.device_certificate_days
    _backdate(fleet, state, days=days + 5)
    assert _leaf(state).not_valid_after_utc < utc_now()
    assert json.loads(fleet.agent("status", "--state-dir", str(state), "--json").stdout)["phase"] == "expired"
    fleet.agent("renew", "--state-dir", str(state))
    assert _leaf(state).not_valid_after_utc > utc_now()


def test_a_revoked_certificate_cannot_renew_and_the_old_one_stays(fleet: Fleet) -> None:
    state = fleet.tmp / "agent"
    fleet.enroll(state)
    before = (state / "certificate.pem").read_bytes()
    fleet.runtime.pki.revoke(_leaf(state).serial_number, RevocationReason.KEY_COMPROMISE, actor="test")
    result = fleet.agent("renew", "--state-dir", str(state), check=False)
    assert result.returncode == 1
    assert "the server refuses to renew certificate" in result.stderr
    assert (state / "certificate.pem").read_bytes() == before


def test_run_renews_a_due_certificate_and_stops_on_sigterm(fleet: Fleet) -> None:
    state = fleet.tmp / "agent"
    fleet.enroll(state)
    days = fleet.runtime.settings.device_certificate_days
    _backdate(fleet, state, days=int(days * 0.8))  # past 2/3 of its life, not expired
    old = _leaf(state).serial_number
    process = subprocess.Popen(
        [AGENT, "run", "--state-dir", str(state)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **fleet.env},
    )
    try:
        deadline = time.monotonic() + 30
        while _leaf(state).serial_number == old and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _leaf(state).serial_number != old
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert "renewed: serial" in stderr


def _backdate(fleet: Fleet, state: Path, *, days: int) -> None:
    """Replace the agent's certificate with one for the same key issued ``days`` ago."""
    leaf = _leaf(state)
    csr = _csr_for_file_key(state, leaf)
    record = fleet.runtime.pki.issue_device(
        DEVICE_ID, csr, actor="test", now=utc_now() - dt.timedelta(days=days)
    )
    chain = x509.load_pem_x509_certificates((state / "certificate.pem").read_bytes())[1:]
    (state / "certificate.pem").write_bytes(record.pem() + b"".join(c.public_bytes(PEM) for c in chain))


def _csr_for_file_key(state: Path, leaf: x509.Certificate) -> bytes:
    key = serialization.load_pem_private_key((state / "device-key.pem").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    builder = x509.CertificateSigningRequestBuilder().subject_name(leaf.subject)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


# -- factory certificates (IDevID) -------------------------------------------------------------------


def _factory_identity(
    fleet: Fleet, serial: str, public_key: ec.EllipticCurvePublicKey | None = None
) -> tuple[Path, Path]:
    """Register manufacturer Acme's CA; return a factory certificate for ``serial`` (model Cam-X) and key.

    With ``public_key`` (a key the factory made in the device's TPM) only the certificate is written.
    """
    now = utc_now()
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name.from_rfc4514_string("CN=Acme IDevID Root,O=Acme")
    root = (
        x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
        .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )  # fmt: skip
    fleet.runtime.enroll.add_manufacturer_ca("Acme", root.public_bytes(PEM), actor="test")
    key = ec.generate_private_key(ec.SECP256R1())
    public_key = public_key or key.public_key()
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Cam-X"),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, serial),
    ])  # fmt: skip
    idevid = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(root_name).public_key(public_key)
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650)).sign(root_key, hashes.SHA256())
    )  # fmt: skip
    certificate, key_file = fleet.tmp / "idevid.pem", fleet.tmp / "idevid.key"
    certificate.write_bytes(idevid.public_bytes(PEM))
    key_file.write_bytes(
        key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    return certificate, key_file


def _enroll_with_factory_certificate(
    fleet: Fleet, state: Path, certificate: Path, key: Path
) -> subprocess.CompletedProcess[str]:
    return fleet.agent(
        "enroll", "--server", fleet.url, "--trust-anchors", str(fleet.root), "--state-dir", str(state),
        "--factory-cert", str(certificate), "--factory-key", str(key), "--json", check=False,
    )  # fmt: skip


def test_a_factory_certificate_enrolls_zero_touch_under_an_auto_rule(fleet: Fleet) -> None:
    certificate, key = _factory_identity(fleet, "ACME-9")
    fleet.runtime.enroll.set_rule("Acme", "Cam-X", RuleMode.AUTO, register_unknown=True, actor="test")
    state = fleet.tmp / "agent"

    result = _enroll_with_factory_certificate(fleet, state, certificate, key)

    assert result.returncode == 0, result.stderr
    device_id = json.loads(result.stdout)["device_id"]
    device = fleet.runtime.inventory.get(device_id)
    assert (device.manufacturer, device.serial, device.model) == ("Acme", "ACME-9", "Cam-X")
    assert json.loads((state / "agent.json").read_text())["device_id"] == device_id
    factory_key = x509.load_pem_x509_certificate(certificate.read_bytes()).public_key()
    assert _leaf(state).public_key() != factory_key
    fleet.agent("renew", "--state-dir", str(state))  # the operational certificate renews itself


def test_a_factory_certificate_waits_for_approval_then_the_same_request_collects_it(fleet: Fleet) -> None:
    certificate, key = _factory_identity(fleet, "ACME-10")
    fleet.runtime.enroll.set_rule("Acme", "Cam-X", RuleMode.APPROVE, actor="test")
    state = fleet.tmp / "agent"

    pending = _enroll_with_factory_certificate(fleet, state, certificate, key)
    assert pending.returncode == 1
    assert "pending approval" in pending.stderr
    assert not (state / "certificate.pem").exists()
    [request] = fleet.runtime.enroll.requests()
    fleet.runtime.enroll.approve(request.id, actor="ops")

    collected = _enroll_with_factory_certificate(fleet, state, certificate, key)
    assert collected.returncode == 0, collected.stderr
    assert _leaf(state).serial_number == int(json.loads(collected.stdout)["serial"], 16)


# -- PKCS#11 (SoftHSM2) ------------------------------------------------------------------------------


def test_pkcs11_key_store_keeps_the_key_on_the_token(fleet: Fleet) -> None:
    require(shutil.which("softhsm2-util") is not None and SOFTHSM2_MODULE.exists(), "SoftHSM2")
    require(LIBP11_ENGINE.exists(), "libengine-pkcs11-openssl")
    tokens = fleet.tmp / "tokens"
    tokens.mkdir()
    conf = fleet.tmp / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    fleet.env.update(SOFTHSM2_CONF=str(conf), FLEETGUARD_AGENT_PKCS11_PIN="4321")
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", "device", "--pin", "4321", "--so-pin", "8765"],
        check=True, capture_output=True, env={**os.environ, **fleet.env},
    )  # fmt: skip
    state = fleet.tmp / "agent"
    first, _ = _enroll_then_renew(fleet, state, "--key-store", "pkcs11", "--pkcs11-token", "device")
    assert not (state / "device-key.pem").exists()
    assert stat.S_IMODE((state / "pkcs11-engine.cnf").stat().st_mode) == 0o600
    # SoftHSM reads its configuration once per process: look at the token from a child process, so
    # that this process's later SoftHSM users (the PKI's HSM tests) keep their own configuration.
    check = (
        "import sys\n"
        "from pathlib import Path\n"
        "from cryptography.hazmat.primitives import serialization as s\n"
        "from fleetguard.pki.keys import Passphrase\n"
        "from fleetguard.pki.keys_pkcs11 import Pkcs11Token\n"
        "with Pkcs11Token.open(Path(sys.argv[1]), 'device', Passphrase(b'4321', source='test')) as token:\n"
        "    key = token.key('fleetguard-device')  # refuses a key that is extractable or not sensitive\n"
        "    pem = key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo)\n"
        "    sys.stdout.write(pem.decode())\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", check, str(SOFTHSM2_MODULE)], capture_output=True, text=True, check=False,
        env={**os.environ, "SOFTHSM2_CONF": str(conf)}, timeout=60,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    assert serialization.load_pem_public_key(child.stdout.encode()) == first.public_key()


# -- TPM 2.0 (swtpm + tpm2-abrmd + tpm2-openssl) -------------------------------------------------------


def _free_port_pair() -> int:
    """Return a loopback port p such that p and p + 1 are free."""
    for _ in range(100):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    pytest.fail("no two adjacent free loopback ports")


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        else:
            return


def _wait_for_tpm(env: dict[str, str]) -> None:
    """Return once the TPM answers through abrmd (it registers on the bus a moment after starting)."""
    deadline = time.monotonic() + 15
    while True:
        probe = subprocess.run(
            ["openssl", "rand", "-provider", "tpm2", "-hex", "4"],
            capture_output=True, env=env, check=False, timeout=10,
        )  # fmt: skip
        if probe.returncode == 0:
            return
        assert time.monotonic() < deadline, probe.stderr.decode(errors="replace")
        time.sleep(0.1)


@pytest.fixture
def tpm(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A software TPM behind a private tpm2-abrmd on a private D-Bus; yields the environment to reach it."""
    for tool in TPM_TOOLS:
        require(shutil.which(tool) is not None or Path("/usr/sbin", tool).exists(), tool)
    require(TPM2_PROVIDER.exists(), "tpm2-openssl")
    state = tmp_path / "swtpm"
    state.mkdir()
    server = _free_port_pair()
    control = server + 1  # the swtpm TCTI finds the control channel on the next port
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(subprocess.Popen([
            "swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
            "--server", f"type=tcp,port={server},bindaddr=127.0.0.1",
            "--ctrl", f"type=tcp,port={control},bindaddr=127.0.0.1", "--flags", "not-need-init,startup-clear",
        ]))  # fmt: skip
        bus = subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", "--print-address=1", "--nopidfile"],
            stdout=subprocess.PIPE,
        )
        processes.append(bus)
        assert bus.stdout is not None
        address = bus.stdout.readline().decode().strip()
        name = f"com.intel.tss2.Tabrmd.fg{os.getpid()}"
        env = {"DBUS_SESSION_BUS_ADDRESS": address}
        _wait_for_port(server)
        _wait_for_port(control)
        abrmd = shutil.which("tpm2-abrmd") or "/usr/sbin/tpm2-abrmd"
        processes.append(subprocess.Popen(
            [abrmd, "--session", "--allow-root", f"--dbus-name={name}",
             f"--tcti=swtpm:host=127.0.0.1,port={server}"],
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
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_tpm_key_store_key_never_leaves_the_tpm(fleet: Fleet, tpm: dict[str, str]) -> None:
    fleet.env["DBUS_SESSION_BUS_ADDRESS"] = tpm["DBUS_SESSION_BUS_ADDRESS"]
    state = fleet.tmp / "agent"
    _enroll_then_renew(fleet, state, "--key-store", "tpm", "--tpm-tcti", tpm["TCTI"])
    wrapped = (state / "device-key.tss2.pem").read_bytes()
    assert wrapped.startswith(b"-----BEGIN TSS2 PRIVATE KEY-----")
    with pytest.raises(ValueError, match="no BEGIN/END delimiters for a private key"):
        serialization.load_pem_private_key(wrapped, password=None)  # only the TPM can use it
    assert not (state / "device-key.pem").exists()


def test_a_tpm_held_factory_key_authenticates_the_first_enrollment(fleet: Fleet, tpm: dict[str, str]) -> None:
    fleet.env["DBUS_SESSION_BUS_ADDRESS"] = tpm["DBUS_SESSION_BUS_ADDRESS"]
    factory_key = fleet.tmp / "idevid.tss2.pem"  # made in the TPM at the factory; only its wrapping is here
    subprocess.run(
        ["openssl", "genpkey", "-provider", "tpm2", "-provider", "default", "-algorithm", "EC",
         "-pkeyopt", "group:P-256", "-out", str(factory_key)],
        check=True, capture_output=True, env={**os.environ, **fleet.env, "TPM2OPENSSL_TCTI": tpm["TCTI"]},
    )  # fmt: skip
    public = subprocess.run(
        ["openssl", "pkey", "-provider", "tpm2", "-provider", "default", "-in", str(factory_key), "-pubout"],
        check=True, capture_output=True, env={**os.environ, **fleet.env, "TPM2OPENSSL_TCTI": tpm["TCTI"]},
    ).stdout  # fmt: skip
    public_key = serialization.load_pem_public_key(public)
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    certificate, _ = _factory_identity(fleet, "ACME-11", public_key)
    fleet.runtime.enroll.set_rule("Acme", "Cam-X", RuleMode.AUTO, register_unknown=True, actor="test")
    state = fleet.tmp / "agent"

    result = fleet.agent(
        "enroll", "--server", fleet.url, "--trust-anchors", str(fleet.root), "--state-dir", str(state),
        "--factory-cert", str(certificate), "--factory-key", str(factory_key), "--key-store", "tpm",
        "--tpm-tcti", tpm["TCTI"], "--json", check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    device = fleet.runtime.inventory.get(json.loads(result.stdout)["device_id"])
    assert (device.serial, device.model) == ("ACME-11", "Cam-X")
    assert (state / "device-key.tss2.pem").read_bytes().startswith(b"-----BEGIN TSS2 PRIVATE KEY-----")
