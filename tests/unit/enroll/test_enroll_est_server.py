"""The EST server over a real TLS socket, driven by Python's own client and a fake enrollment service.

The certificates are made here: a test CA, the server's certificate for localhost and 127.0.0.1, a
device certificate, the same device's certificate after it expired, and one from a CA nobody trusts.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetguard.enroll import est
from fleetguard.enroll.errors import EnrollmentThrottled, EnrollmentUnauthenticated, ReenrollRefused
from fleetguard.enroll.est_server import (
    NO_CHECK_TIME,
    EstServer,
    parse_client_chain,
    peer_chain,
    server_context,
)
from fleetguard.enroll.service import EnrollmentOutcome, EnrollmentRequest, Issued, Pending
from fleetguard.pki.service import CertificateRecord, CertificateStatus

PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER
NOW = dt.datetime.now(dt.UTC)
TOKEN = "fge_tok1_s3cr3t-never-logged"


# -- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issuer:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def pem(self) -> bytes:
        return self.certificate.public_bytes(PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


_CA_USAGE = x509.KeyUsage(
    digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
    key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
)  # fmt: skip


def _ca(common_name: str) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issuer(certificate, key)


def _leaf(
    issuer: Issuer,
    common_name: str,
    *,
    usage: x509.ObjectIdentifier,
    not_before: dt.datetime,
    not_after: dt.datetime,
    sans: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer.key, hashes.SHA256()), key


@dataclass(frozen=True)
class Material:
    ca: Issuer
    directory: Path
    server_chain: Path
    server_key: Path

    def client(self, name: str, issuer: Issuer | None = None, *, expired: bool = False) -> tuple[Path, Path]:
        """Write a client certificate and key for ``name``; return their paths."""
        if expired:
            window = (NOW - dt.timedelta(days=40), NOW - dt.timedelta(days=10))
        else:
            window = (NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=30))
        certificate, key = _leaf(
            issuer or self.ca, name, usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            not_before=window[0], not_after=window[1],
        )  # fmt: skip
        certificate_path = self.directory / f"{name}.pem"
        key_path = self.directory / f"{name}.key"
        certificate_path.write_bytes(certificate.public_bytes(PEM))
        key_path.write_bytes(_key_pem(key))
        return certificate_path, key_path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    directory = tmp_path_factory.mktemp("est-pki")
    ca = _ca("fleetguard test root")
    server, server_key = _leaf(
        ca, "est", usage=ExtendedKeyUsageOID.SERVER_AUTH,
        not_before=NOW - dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=30),
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))],
    )  # fmt: skip
    (directory / "ca.pem").write_bytes(ca.pem())
    (directory / "est.chain.pem").write_bytes(server.public_bytes(PEM) + ca.pem())
    (directory / "est.key.pem").write_bytes(_key_pem(server_key))
    return Material(ca, directory, directory / "est.chain.pem", directory / "est.key.pem")


# -- the fake service ---------------------------------------------------------------------------


def _record(der: bytes) -> CertificateRecord:
    certificate = x509.load_der_x509_certificate(der)
    return CertificateRecord(
        serial=certificate.serial_number, device_id="dev-1", profile="device", subject="CN=dev-1",
        issuer_id="issuing-1", crl_partition=0, not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc, sha256=b"\x00" * 32, status=CertificateStatus.VALID,
        revoked_at=None, reason=None, renewed_from=None, der=der,
    )  # fmt: skip


@dataclass
class FakeEnrollment:
    """Answers with ``answer`` and records each request it was given."""

    issued: CertificateRecord
    requests: list[tuple[str, EnrollmentRequest]] = field(default_factory=list)
    answer: Callable[[EnrollmentRequest], EnrollmentOutcome] | None = None

    def enroll(self, request: EnrollmentRequest, *, now: dt.datetime) -> EnrollmentOutcome:
        assert now.tzinfo is not None
        self.requests.append(("enroll", request))
        return self.answer(request) if self.answer else Issued(self.issued)

    def reenroll(self, request: EnrollmentRequest, *, now: dt.datetime) -> CertificateRecord:
        self.requests.append(("reenroll", request))
        if not request.client_chain:
            raise EnrollmentUnauthenticated("re-enrollment needs the current certificate")
        outcome = self.answer(request) if self.answer else Issued(self.issued)
        assert isinstance(outcome, Issued)
        return outcome.certificate


@dataclass
class Served:
    server: EstServer
    service: FakeEnrollment
    material: Material
    bundle: list[bytes]

    def connection(
        self, client: tuple[Path, Path] | None = None, *, host: str = "localhost"
    ) -> http.client.HTTPSConnection:
        context = ssl.create_default_context(cafile=str(self.material.directory / "ca.pem"))
        if client is not None:
            context.load_cert_chain(*client)
        return http.client.HTTPSConnection(host, self.server.address[1], context=context, timeout=10)


def _csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    request = x509.CertificateSigningRequestBuilder().subject_name(_name("dev-1")).sign(key, hashes.SHA256())
    return request.public_bytes(DER)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _start(material: Material, **options: float) -> Served:
    issued, _ = _leaf(
        material.ca, "dev-1", usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        not_before=NOW, not_after=NOW + dt.timedelta(days=30),
    )  # fmt: skip
    service = FakeEnrollment(_record(issued.public_bytes(DER)))
    bundle = [material.ca.pem()]
    server = EstServer(
        service,
        lambda: b"".join(bundle),
        material.ca.pem,
        material.server_chain,
        material.server_key,
        **options,  # type: ignore[arg-type]
    )
    server.start()
    return Served(server, service, material, bundle)


@pytest.fixture
def served(material: Material) -> Iterator[Served]:
    running = _start(material, reload_interval_s=0.0)
    yield running
    running.server.stop()


def _post(
    connection: http.client.HTTPSConnection,
    operation: str,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> http.client.HTTPResponse:
    connection.request(
        "POST",
        f"/.well-known/est/{operation}",
        body=body,
        headers={
            "Content-Type": "application/pkcs10",
            "Content-Transfer-Encoding": "base64",
            **(headers or {}),
        },
    )
    return connection.getresponse()


def _enroll(connection: http.client.HTTPSConnection, **headers: str) -> http.client.HTTPResponse:
    return _post(connection, "simpleenroll", est.encode_pkcs10_body(_csr()), headers)


# -- the resources ------------------------------------------------------------------------------


def test_cacerts_without_a_client_certificate_is_the_ca_as_base64_pkcs7(served: Served) -> None:
    connection = served.connection()
    try:
        connection.request("GET", "/.well-known/est/cacerts")
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/pkcs7-mime; smime-type=certs-only"
    assert est.decode_certs_only(body) == (served.material.ca.certificate,)


def test_csrattrs_is_served(served: Served) -> None:
    connection = served.connection()
    try:
        connection.request("GET", "/.well-known/est/csrattrs")
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert (response.status, response.getheader("Content-Type")) == (200, "application/csrattrs")
    assert base64.b64decode(body) == est.CSR_ATTRIBUTES_DER


def test_simpleenroll_with_a_token_passes_credentials_csr_and_source(served: Served) -> None:
    csr = _csr()
    connection = served.connection()
    try:
        response = _post(
            connection, "simpleenroll", est.encode_pkcs10_body(csr), {"Authorization": _basic("dev-1", TOKEN)}
        )
        body = response.read()
    finally:
        connection.close()
    assert response.status == 200, body
    assert est.decode_certs_only(body) == (x509.load_der_x509_certificate(served.service.issued.der),)
    [(operation, request)] = served.service.requests
    assert operation == "enroll"
    assert request == EnrollmentRequest(
        csr=csr, client_chain=(), token=TOKEN, claimed_device_id="dev-1", source="127.0.0.1"
    )


def test_simpleenroll_pending_is_202_with_retry_after(served: Served) -> None:
    served.service.answer = lambda _: Pending("req-1", 60)
    connection = served.connection()
    try:
        response = _enroll(connection, Authorization=_basic("dev-1", TOKEN))
        body = response.read()
    finally:
        connection.close()
    assert (response.status, response.getheader("Retry-After")) == (202, "60")
    assert b"req-1" in body


def _raise(error: Exception) -> Callable[[EnrollmentRequest], EnrollmentOutcome]:
    def answer(_: EnrollmentRequest) -> EnrollmentOutcome:
        raise error

    return answer


def test_unauthenticated_is_401_with_the_basic_challenge(served: Served) -> None:
    served.service.answer = _raise(EnrollmentUnauthenticated("no client certificate and no enrollment token"))
    connection = served.connection()
    try:
        response = _enroll(connection)
        body = response.read()
    finally:
        connection.close()
    assert response.status == 401
    assert response.getheader("WWW-Authenticate", "").startswith('Basic realm="fleetguard EST"')
    assert body.startswith(b"no client certificate and no enrollment token")


def test_throttled_is_503_with_retry_after(served: Served) -> None:
    served.service.answer = _raise(EnrollmentThrottled("too many requests", retry_after_s=4.5))
    connection = served.connection()
    try:
        response = _enroll(connection)
        response.read()
    finally:
        connection.close()
    assert (response.status, response.getheader("Retry-After")) == (503, "5")


def test_simplereenroll_passes_the_client_certificate(served: Served, material: Material) -> None:
    client = material.client("dev-1")
    connection = served.connection(client)
    try:
        response = _post(connection, "simplereenroll", est.encode_pkcs10_body(_csr()))
        body = response.read()
    finally:
        connection.close()
    assert response.status == 200, body
    [(operation, request)] = served.service.requests
    assert operation == "reenroll"
    assert request.client_chain == (x509.load_pem_x509_certificate(client[0].read_bytes()),)
    assert (request.token, request.claimed_device_id) == (None, None)


def test_an_expired_client_certificate_completes_the_handshake_and_the_service_decides(
    served: Served, material: Material
) -> None:
    client = material.client("dev-offline", expired=True)
    served.service.answer = _raise(ReenrollRefused("certificate expired beyond the grace window"))
    connection = served.connection(client)
    try:
        response = _post(connection, "simplereenroll", est.encode_pkcs10_body(_csr()))
        body = response.read()
    finally:
        connection.close()
    assert response.status == 403
    assert body == b"re-enrollment refused: certificate expired beyond the grace window\n"
    [(_, request)] = served.service.requests
    assert request.client_chain[0].not_valid_after_utc < NOW


def test_a_client_certificate_from_an_unknown_ca_fails_the_handshake(
    served: Served, material: Material
) -> None:
    client = material.client("intruder", _ca("nobody trusts this"))
    connection = served.connection(client)
    try:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _post(connection, "simplereenroll", est.encode_pkcs10_body(_csr())).read()
    finally:
        connection.close()
    assert served.service.requests == []


def test_a_new_trust_anchor_is_used_after_the_bundle_changes(served: Served, material: Material) -> None:
    manufacturer = _ca("acme factory CA")
    client = material.client("acme-0001", manufacturer)
    served.bundle.append(manufacturer.pem())
    connection = served.connection(client)
    try:
        response = _post(connection, "simpleenroll", est.encode_pkcs10_body(_csr()))
        response.read()
    finally:
        connection.close()
    assert response.status == 200
    [(_, request)] = served.service.requests
    assert request.client_chain[0].issuer == manufacturer.certificate.subject


def test_keep_alive_serves_several_requests_on_one_connection(served: Served, material: Material) -> None:
    connection = served.connection(material.client("dev-1"))
    sockets = []
    try:
        for _ in range(3):
            response = _post(connection, "simplereenroll", est.encode_pkcs10_body(_csr()))
            response.read()
            assert response.status == 200
            assert response.getheader("Connection") is None
            sockets.append(connection.sock)
    finally:
        connection.close()
    assert sockets[0] is not None
    assert sockets == [sockets[0]] * 3  # http.client reconnects when the server closes
    assert len(served.service.requests) == 3


# -- HTTP framing and bounds --------------------------------------------------------------------


def _exchange(
    served: Served, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    connection = served.connection()
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


PKCS10 = {"Content-Type": "application/pkcs10"}


@pytest.mark.parametrize(
    ("request_line", "body", "headers", "status"),
    [
        ("GET /.well-known/est/simpleenroll", None, {}, 405),
        ("POST /.well-known/est/cacerts", b"x", {}, 405),
        ("GET /.well-known/est/serverkeygen", None, {}, 404),
        ("GET /", None, {}, 404),
        ("POST /.well-known/est/simpleenroll", b"MA==", {"Content-Type": "text/plain"}, 415),
        ("POST /.well-known/est/simpleenroll", b"garbage!", PKCS10, 400),
        ("POST /.well-known/est/simpleenroll", b"MA==", {**PKCS10, "Authorization": "Bearer x"}, 400),
        ("DELETE /.well-known/est/cacerts", None, {}, 501),
    ],
)
def test_bad_requests_get_plain_text_errors(
    served: Served, request_line: str, body: bytes | None, headers: dict[str, str], status: int
) -> None:
    method, path = request_line.split(" ")
    answer_status, answer_headers, answer_body = _exchange(served, method, path, body, headers)
    assert answer_status == status
    assert answer_headers["Content-Type"] == "text/plain; charset=utf-8"
    assert answer_body.endswith(b"\n")
    assert served.service.requests == []
    if status == 405:
        assert answer_headers["Allow"] in {"GET", "POST"}


def _raw(served: Served, request: bytes, *, read_timeout: float = 10) -> bytes:
    """Send ``request`` bytes over TLS; return everything the server sends before it closes."""
    context = ssl.create_default_context(cafile=str(served.material.directory / "ca.pem"))
    with (
        socket.create_connection(served.server.address, timeout=read_timeout) as plain,
        context.wrap_socket(plain, server_hostname="localhost") as tls,
    ):
        tls.sendall(request)
        received = b""
        while chunk := tls.recv(65536):
            received += chunk
        return received


def test_chunked_bodies_are_411_and_the_connection_closes(served: Served) -> None:
    answer = _raw(
        served,
        b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/pkcs10\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nMA==\r\n0\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 411 ")
    assert b"Connection: close" in answer


def test_a_post_without_content_length_is_411(served: Served) -> None:
    answer = _raw(served, b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 411 ")


def test_a_body_over_32_kib_is_413_before_it_is_sent(served: Served) -> None:
    # Expect: 100-continue: the client waits; the server answers 413 instead of 100 and closes.
    answer = _raw(
        served,
        b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/pkcs10\r\nContent-Length: 40000\r\nExpect: 100-continue\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in answer
    assert served.service.requests == []


def test_expect_100_continue_is_answered_before_the_body_is_sent(served: Served) -> None:
    body = est.encode_pkcs10_body(_csr())
    head = (
        f"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: application/pkcs10\r\nContent-Length: {len(body)}\r\n"
        f"Authorization: {_basic('dev-1', TOKEN)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    ).encode()
    context = ssl.create_default_context(cafile=str(served.material.directory / "ca.pem"))
    with (
        socket.create_connection(served.server.address, timeout=2) as plain,
        context.wrap_socket(plain, server_hostname="localhost") as tls,
    ):
        tls.sendall(head)
        assert tls.recv(1024).startswith(b"HTTP/1.1 100 Continue\r\n")  # within the 2 s timeout
        tls.sendall(body)
        received = b""
        while chunk := tls.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 ")
    assert len(served.service.requests) == 1


def test_duplicate_content_length_is_400(served: Served) -> None:
    answer = _raw(
        served,
        b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nMA==",
    )
    assert answer.startswith(b"HTTP/1.1 400 ")


def test_a_slow_client_is_cut_off_at_the_request_deadline(material: Material) -> None:
    running = _start(material, request_timeout_s=0.6, idle_timeout_s=5.0)
    try:
        context = ssl.create_default_context(cafile=str(material.directory / "ca.pem"))
        with (
            socket.create_connection(running.server.address, timeout=10) as plain,
            context.wrap_socket(plain, server_hostname="localhost") as tls,
        ):
            started = time.monotonic()
            closed_after = None
            for byte in b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: localhost\r\n":
                try:
                    tls.sendall(bytes([byte]))
                except OSError:
                    closed_after = time.monotonic() - started
                    break
                time.sleep(0.1)  # each byte well within any per-read timeout
            if closed_after is None:
                assert tls.recv(1024) == b""
                closed_after = time.monotonic() - started
    finally:
        running.server.stop()
    assert closed_after < 3.0


def test_an_idle_keep_alive_connection_is_closed(material: Material) -> None:
    running = _start(material, idle_timeout_s=0.3)
    try:
        context = ssl.create_default_context(cafile=str(material.directory / "ca.pem"))
        with (
            socket.create_connection(running.server.address, timeout=5) as plain,
            context.wrap_socket(plain, server_hostname="localhost") as tls,
        ):
            started = time.monotonic()
            assert tls.recv(1024) == b""
            assert time.monotonic() - started < 2.0
    finally:
        running.server.stop()


def test_connections_over_the_limit_are_closed_on_accept(material: Material) -> None:
    running = _start(material, max_connections=1)
    context = ssl.create_default_context(cafile=str(material.directory / "ca.pem"))
    try:
        with (
            socket.create_connection(running.server.address, timeout=5) as first_plain,
            context.wrap_socket(first_plain, server_hostname="localhost"),
            socket.create_connection(running.server.address, timeout=5) as second,
            pytest.raises((ssl.SSLError, ConnectionError)),
        ):
            context.wrap_socket(second, server_hostname="localhost").close()
    finally:
        running.server.stop()


def test_stop_returns_promptly_with_an_idle_connection_open(material: Material) -> None:
    running = _start(material, idle_timeout_s=30.0)
    context = ssl.create_default_context(cafile=str(material.directory / "ca.pem"))
    with (
        socket.create_connection(running.server.address, timeout=5) as plain,
        context.wrap_socket(plain, server_hostname="localhost"),
    ):
        time.sleep(0.1)
        started = time.monotonic()
        running.server.stop()
        assert time.monotonic() - started < 2.0


def test_an_unexpected_service_failure_is_500_and_logged(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    served.service.answer = _raise(RuntimeError("/secret/path exploded"))
    caplog.set_level(logging.INFO, logger="fleetguard.enroll.est_server")
    connection = served.connection()
    try:
        response = _enroll(connection)
        body = response.read()
    finally:
        connection.close()
    assert (response.status, body) == (500, b"internal error\n")
    deadline = time.monotonic() + 5
    while not any(record.exc_info for record in caplog.records) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert any(record.exc_info and "exploded" in str(record.exc_info[1]) for record in caplog.records)


def test_one_log_line_per_request_names_the_device_but_never_the_token(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fleetguard.enroll.est_server")
    connection = served.connection()
    try:
        _enroll(connection, Authorization=_basic("dev-1", TOKEN)).read()
    finally:
        connection.close()
    lines = [r.getMessage() for r in caplog.records if "/.well-known/est/simpleenroll" in r.getMessage()]
    assert len(lines) == 1
    assert "127.0.0.1 POST /.well-known/est/simpleenroll 200" in lines[0]
    assert "device='dev-1'" in lines[0]
    assert all(TOKEN not in r.getMessage() and "s3cr3t" not in r.getMessage() for r in caplog.records)


# -- pieces -------------------------------------------------------------------------------------


def test_the_tls_context_skips_time_checks_and_needs_tls_1_2(material: Material) -> None:
    context = server_context(material.ca.pem(), material.server_chain, material.server_key)
    assert context.verify_mode is ssl.CERT_OPTIONAL
    assert context.verify_flags & NO_CHECK_TIME
    assert context.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2


def test_start_fails_on_a_missing_server_certificate(material: Material, tmp_path: Path) -> None:
    server = EstServer(
        FakeEnrollment(_record(material.ca.certificate.public_bytes(DER))),
        material.ca.pem, material.ca.pem, tmp_path / "missing.pem", material.server_key,
    )  # fmt: skip
    with pytest.raises(FileNotFoundError):
        server.start()


class _Python313Socket:
    def __init__(self, chain: list[bytes]) -> None:
        self._chain = chain

    def get_unverified_chain(self) -> list[bytes]:
        return self._chain


def test_peer_chain_uses_the_whole_chain_where_python_gives_it(material: Material) -> None:
    leaf = material.ca.certificate.public_bytes(DER)
    assert peer_chain(_Python313Socket([leaf, leaf])) == [leaf, leaf]  # type: ignore[arg-type]
    assert peer_chain(_Python313Socket([])) == []  # type: ignore[arg-type]


def test_parse_client_chain_bounds_and_parses() -> None:
    with pytest.raises(est.EstMalformed, match="cannot be parsed"):
        parse_client_chain([b"\x30\x03\x02\x01\x01"])
    with pytest.raises(est.EstMalformed, match="at most 9"):
        parse_client_chain([b""] * 10)


def test_the_server_thread_is_gone_after_stop(material: Material) -> None:
    before = {thread.name for thread in threading.enumerate()}
    running = _start(material)
    running.server.stop()
    assert {thread.name for thread in threading.enumerate()} <= before
