"""Fakes for the agent's unit tests: a tiny CA made in memory, a key store in memory, and an EST
server behind the :class:`~fleetguard.agent.transport.EstTransport` interface.

:class:`FakeEst` is a transport factory (what ``DeviceIdentity`` takes): it records the TLS settings
of every transport it makes and each request sent, and answers ``cacerts``, ``simpleenroll`` and
``simplereenroll`` as an EST server would, unless a test replaces an operation's handler.
"""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from fleetguard.agent.errors import KeyStoreError
from fleetguard.agent.keystore import KeyStoreKind
from fleetguard.agent.state import AgentConfig, AgentState, KeyStoreConfig
from fleetguard.agent.transport import MAX_REPLY_BYTES, EstReply, TlsClientKey, TlsKeyKind, TlsSettings
from fleetguard.enroll import est
from fleetguard.pki.keys import Curve, SigningKey, SoftwareKey, generate_software_key

PEM = serialization.Encoding.PEM
NOW = dt.datetime(2026, 3, 14, 15, 9, 26, tzinfo=dt.UTC)
SERVER_URL = "https://est.example.org:8443"
DEVICE_ID = "dev-1"
TOKEN = "tok-3f9a"


def device_name(device_id: str) -> x509.Name:
    """Return the subject the fake server issues: more than a CN, so that re-encoding would show."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleet.example.org"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN-0001"),
            x509.NameAttribute(NameOID.COMMON_NAME, device_id),
        ]
    )


def _ca_name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class TinyCa:
    """A root and an issuing CA with their keys in memory."""

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    issuing_key: ec.EllipticCurvePrivateKey
    issuing: x509.Certificate

    @classmethod
    def create(cls, label: str) -> TinyCa:
        root_key = ec.generate_private_key(ec.SECP256R1())
        root = _certificate(
            _ca_name(f"{label} root"), root_key.public_key(), _ca_name(f"{label} root"), root_key, ca=True
        )
        issuing_key = ec.generate_private_key(ec.SECP256R1())
        issuing = _certificate(
            _ca_name(f"{label} issuing"), issuing_key.public_key(), root.subject, root_key, ca=True
        )
        return cls(root_key, root, issuing_key, issuing)

    @property
    def cacerts(self) -> tuple[x509.Certificate, ...]:
        return (self.root, self.issuing)

    def issue(
        self,
        public_key: CertificatePublicKeyTypes,
        subject: x509.Name,
        *,
        not_before: dt.datetime = NOW,
        lifetime: dt.timedelta = dt.timedelta(days=30),
        san: list[x509.GeneralName] | None = None,
    ) -> x509.Certificate:
        """Return an end-entity certificate for ``public_key`` signed by the issuing CA."""
        return _certificate(
            subject, public_key, self.issuing.subject, self.issuing_key,
            not_before=not_before, lifetime=lifetime, san=san,
        )  # fmt: skip


def _certificate(
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    not_before: dt.datetime = NOW - dt.timedelta(days=1),
    lifetime: dt.timedelta = dt.timedelta(days=3650),
    san: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    usage = dict.fromkeys(_KEY_USAGES, False)
    usage.update({"key_cert_sign": ca, "crl_sign": ca, "digital_signature": not ca})
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + lifetime)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(**usage), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(signer, hashes.SHA256())


_KEY_USAGES = (
    "digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
    "key_cert_sign", "crl_sign", "encipher_only", "decipher_only",
)  # fmt: skip


@pytest.fixture(scope="session")
def tiny_ca() -> TinyCa:
    """The fleet's CA: what the fake EST server issues with and distributes from ``cacerts``."""
    return TinyCa.create("fleet")


@pytest.fixture(scope="session")
def foreign_ca() -> TinyCa:
    """A CA the fleet does not know."""
    return TinyCa.create("foreign")


# -- a key store in memory ------------------------------------------------------------------------


class MemoryKeyStore:
    """A :class:`~fleetguard.agent.keystore.KeyStore` holding one P-256 key in memory."""

    def __init__(self) -> None:
        self.key: SoftwareKey | None = None
        self.created = 0
        self.destroyed = 0
        self.broken: str | None = None

    @property
    def kind(self) -> KeyStoreKind:
        return KeyStoreKind.FILE

    def describe(self) -> str:
        return "memory"

    def exists(self) -> bool:
        return self.key is not None

    def create(self) -> None:
        if self.key is not None:
            raise KeyStoreError("the key exists")
        self.key = generate_software_key(Curve.P256)
        self.created += 1

    def signing_key(self) -> SigningKey:
        if self.broken is not None:
            raise KeyStoreError(self.broken)
        if self.key is None:
            raise KeyStoreError("no key")
        return self.key

    def tls_key(self) -> TlsClientKey:
        return TlsClientKey(TlsKeyKind.FILE, "/memory/device-key.pem")

    def destroy(self) -> None:
        if self.broken is not None:
            raise KeyStoreError(self.broken)
        self.key = None
        self.destroyed += 1

    def close(self) -> None:
        pass


# -- an EST server behind the transport interface -------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """One request the agent sent."""

    settings: TlsSettings
    method: str
    operation: str
    body: bytes | None
    headers: dict[str, str]

    @property
    def csr(self) -> x509.CertificateSigningRequest:
        assert self.body is not None
        return x509.load_der_x509_csr(est.decode_pkcs10_body(self.body, self.headers.get("Content-Type")))


Handler = Callable[[Sent], EstReply]


def certs_only(*certificates: x509.Certificate) -> EstReply:
    """Return a 200 with a certs-only PKCS#7 of ``certificates`` (RFC 7030 4.1.3)."""
    return EstReply(200, est.CERTS_ONLY, None, est.encode_certs_only(certificates))


def text(status: int, message: str, *, retry_after: str | None = None) -> EstReply:
    """Return a plain-text answer."""
    return EstReply(status, est.TEXT, retry_after, message.encode())


@dataclass
class FakeEst:
    """An EST server and the transport factory that reaches it; ``clock`` dates what it issues."""

    ca: TinyCa
    clock: Callable[[], dt.datetime] = lambda: NOW
    lifetime: dt.timedelta = dt.timedelta(days=30)
    handlers: dict[str, Handler] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)

    def __call__(self, settings: TlsSettings) -> _FakeTransport:
        return _FakeTransport(self, settings)

    def answer(self, sent: Sent) -> EstReply:
        self.sent.append(sent)
        handler = self.handlers.get(sent.operation)
        if handler is not None:
            return handler(sent)
        if sent.operation == "cacerts":
            return certs_only(*self.ca.cacerts)
        return certs_only(self.issue_for(sent))

    def issue_for(
        self, sent: Sent, *, public_key: CertificatePublicKeyTypes | None = None
    ) -> x509.Certificate:
        """Issue as the server does: the token's device id on enrollment, the CSR's subject on renewal."""
        csr = sent.csr
        subject = device_name(_basic_user(sent.headers) or "dev-factory")
        if sent.operation == "simplereenroll":
            subject = csr.subject
        return self.ca.issue(
            public_key or csr.public_key(), subject, not_before=self.clock(), lifetime=self.lifetime
        )

    def operations(self) -> list[str]:
        return [sent.operation for sent in self.sent]


@dataclass
class _FakeTransport:
    server: FakeEst
    settings: TlsSettings

    def request(
        self, method: str, operation: str, body: bytes | None, headers: Mapping[str, str]
    ) -> EstReply:
        return self.server.answer(Sent(self.settings, method, operation, body, dict(headers)))


def _basic_user(headers: Mapping[str, str]) -> str | None:
    credentials = est.parse_basic_authorization(headers.get("Authorization"))
    return None if credentials is None else credentials.username


# -- a TLS EST server on the loopback ------------------------------------------------------------


def write_pem(path: Path, *certificates: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(PEM) for c in certificates))
    return path


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class _EstHandler(http.server.BaseHTTPRequestHandler):
    """Answers like an EST server, and tells the test what it received."""

    cacerts_body = b""

    def do_GET(self) -> None:
        if self.path == "/.well-known/est/cacerts":
            self._send(200, {"Content-Type": est.CERTS_ONLY}, self.cacerts_body)
        elif self.path == "/.well-known/est/big":
            self._send(200, {"Content-Type": est.TEXT}, b"x" * (MAX_REPLY_BYTES + 1))
        else:
            self._send(404, {"Content-Type": est.TEXT}, b"no such EST operation\n")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        peer = self.connection.getpeercert()
        seen = {
            "path": self.path,
            "body": body.decode(),
            "content_type": self.headers["Content-Type"],
            "authorization": self.headers["Authorization"],
            "client": None if not peer else dict(pair[0] for pair in peer["subject"])["commonName"],
        }
        self._send(202, {"Content-Type": est.TEXT, "Retry-After": "42"}, json.dumps(seen).encode())

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass(frozen=True)
class Loopback:
    """A TLS EST server on 127.0.0.1, the fleet root as trust anchor, and a device credential."""

    url: str
    anchors: Path
    device_certificate: Path
    device_key: Path


@pytest.fixture
def loopback(tmp_path: Path, tiny_ca: TinyCa) -> Iterator[Loopback]:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = tiny_ca.issue(
        server_key.public_key(),
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "est")]),
        not_before=now,
        san=[x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))],
    )
    device_key = ec.generate_private_key(ec.SECP256R1())
    device = tiny_ca.issue(device_key.public_key(), device_name("dev-1"), not_before=now)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(
        write_pem(tmp_path / "server.pem", server, tiny_ca.issuing),
        write_key(tmp_path / "server.key", server_key),
    )
    context.load_verify_locations(cafile=write_pem(tmp_path / "root.pem", tiny_ca.root))
    context.verify_mode = ssl.CERT_OPTIONAL

    handler = type("Handler", (_EstHandler,), {"cacerts_body": est.encode_certs_only(list(tiny_ca.cacerts))})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield Loopback(
            f"https://127.0.0.1:{httpd.server_address[1]}",
            tmp_path / "root.pem",
            write_pem(tmp_path / "device.pem", device, tiny_ca.issuing),
            write_key(tmp_path / "device.key", device_key),
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


# -- agent state ----------------------------------------------------------------------------------


def file_config(device_id: str | None = DEVICE_ID) -> AgentConfig:
    return AgentConfig(server_url=SERVER_URL, key_store=KeyStoreConfig(), device_id=device_id)


@pytest.fixture
def state(tmp_path: Path, tiny_ca: TinyCa) -> AgentState:
    """A prepared state directory whose trust anchors are the fleet's root, as given at enrollment."""
    agent_state = AgentState(tmp_path / "agent")
    agent_state.prepare()
    agent_state.save_trust_anchors([tiny_ca.root])
    return agent_state


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the caller's FLEETGUARD_* variables from changing what the tests see."""
    for name in list(os.environ):
        if name.startswith("FLEETGUARD_"):
            monkeypatch.delenv(name)
