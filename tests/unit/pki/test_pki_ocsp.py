"""OCSP responder core: real openssl requests in, responses that pkilint, cryptography and openssl accept."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import subprocess
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
from asn1crypto import core as asn1_core  # type: ignore[import-untyped]
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.pki.ca import CertificateAuthority, create_issuing, create_root
from fleetguard.pki.errors import CaError, OcspMalformed, PkiError, SigningFailed
from fleetguard.pki.keys import Curve, SigningKey, SoftwareKey, generate_software_key
from fleetguard.pki.ocsp import (
    MAX_CERT_IDS,
    MAX_REQUEST_BYTES,
    CertId,
    CertIdHash,
    CertStatus,
    Good,
    OcspQuery,
    PresignedCache,
    ResponseStatus,
    Revoked,
    Unknown,
    _parse_fully,  # the reference the fast path must agree with
    parse_request,
    request_from_get,
    request_from_post,
    respond,
    respond_cached,
    unsuccessful_response,
)
from fleetguard.pki.revocation import MAX_SERIAL, RevocationReason

Lint = Callable[[bytes, str], list[str]]
OpenSsl = Callable[..., subprocess.CompletedProcess[str]]
HOUR = dt.timedelta(hours=1)
PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER
SERIAL = 2**158 + 0x1234567
SHA1 = hashes.SHA1()  # noqa: S303 - the CertID hash clients send by default (RFC 6960 4.1.1)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleetguard test"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


@pytest.fixture(scope="module")
def clock() -> dt.datetime:
    """The real time: ``openssl ocsp`` checks thisUpdate/nextUpdate against its own clock."""
    return dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def live_ca(clock: dt.datetime) -> CertificateAuthority:
    root_key = generate_software_key(Curve.P384)
    start = clock - HOUR
    root = create_root(root_key, _name("fleetguard OCSP test root"), start)
    issuing_key = generate_software_key(Curve.P256)
    issuing = create_issuing(
        root_key, root, issuing_key.public_key(), start, name=_name("fleetguard OCSP issuing")
    )
    return CertificateAuthority(root=root, issuing=issuing, key=issuing_key)


def _device_certificate(ca: CertificateAuthority, serial: int, now: dt.datetime) -> x509.Certificate:
    assert isinstance(ca.key, SoftwareKey)
    key = ec.generate_private_key(ec.SECP256R1())
    start = now.replace(microsecond=0)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device-1")]))
        .issuer_name(ca.issuing.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca.key.private_key, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def device(live_ca: CertificateAuthority, clock: dt.datetime) -> x509.Certificate:
    return _device_certificate(live_ca, SERIAL, clock)


@pytest.fixture
def files(tmp_path: Path, live_ca: CertificateAuthority, device: x509.Certificate) -> Path:
    (tmp_path / "root.pem").write_bytes(live_ca.root.public_bytes(PEM))
    (tmp_path / "issuing.pem").write_bytes(live_ca.issuing.public_bytes(PEM))
    (tmp_path / "device.pem").write_bytes(device.public_bytes(PEM))
    return tmp_path


def _openssl_request(openssl: OpenSsl, files: Path, *args: str) -> bytes:
    made = openssl(
        "ocsp",
        *args,
        "-issuer",
        files / "issuing.pem",
        "-cert",
        files / "device.pem",
        "-reqout",
        files / "req.der",
    )
    assert made.returncode == 0, made.stderr
    return (files / "req.der").read_bytes()


def _request(cert: x509.Certificate, issuer: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    builder = x509_ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm)
    return builder.build().public_bytes(DER)


def _answer(status: CertStatus) -> Callable[[int], CertStatus]:
    return lambda _serial: status


def _respond(ca: CertificateAuthority, query: OcspQuery, status: CertStatus, now: dt.datetime) -> bytes:
    return respond(
        query,
        status_lookup=_answer(status),
        issuer_cert=ca.issuing,
        responder_key=ca.key,
        now=now,
        validity=HOUR,
    )


REVOKED_AT = dt.datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=dt.UTC)
STATUSES: dict[str, CertStatus] = {
    "good": Good(),
    "revoked": Revoked(REVOKED_AT, RevocationReason.KEY_COMPROMISE),
    "unknown": Unknown(),
}


# --- decoding --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "algorithm"), [("-sha1", CertIdHash.SHA1), ("-sha256", CertIdHash.SHA256)])
def test_openssl_request_is_parsed(
    openssl: OpenSsl, files: Path, live_ca: CertificateAuthority, flag: str, algorithm: CertIdHash
) -> None:
    der = _openssl_request(openssl, files, flag)  # with a nonce, as openssl sends by default
    query = parse_request(der)
    assert len(query.cert_ids) == 1
    cert_id = query.cert_ids[0]
    assert cert_id.hash_algorithm is algorithm
    assert cert_id.serial == SERIAL
    # The same CertID as cryptography computes for this certificate and issuer.
    reference = x509_ocsp.load_der_ocsp_request(
        _request(
            _device_certificate(live_ca, SERIAL, dt.datetime.now(dt.UTC)), live_ca.issuing, _HASHES[algorithm]
        )
    )
    assert (cert_id.issuer_name_hash, cert_id.issuer_key_hash) == (
        reference.issuer_name_hash,
        reference.issuer_key_hash,
    )


_HASHES: dict[CertIdHash, hashes.HashAlgorithm] = {
    CertIdHash.SHA1: SHA1,
    CertIdHash.SHA256: hashes.SHA256(),
}


def test_request_for_several_certificates_keeps_their_order(openssl: OpenSsl, files: Path) -> None:
    made = openssl(
        *("ocsp", "-issuer", files / "issuing.pem", "-serial", "5", "-serial", "0x10"),
        *("-cert", files / "device.pem", "-reqout", files / "req.der"),
    )
    assert made.returncode == 0, made.stderr
    query = parse_request((files / "req.der").read_bytes())
    assert [cert_id.serial for cert_id in query.cert_ids] == [5, 16, SERIAL]


def _crafted(
    cert_ids: int = 1,
    *,
    hash_oid: str = "sha1",
    digest_size: int = 20,
    critical_extension: bool = False,
    version: int = 0,
) -> bytes:
    cert_id = {
        "hash_algorithm": {"algorithm": hash_oid},
        "issuer_name_hash": b"\x01" * digest_size,
        "issuer_key_hash": b"\x02" * digest_size,
        "serial_number": 7,
    }
    tbs: dict[str, object] = {"version": version, "request_list": [{"req_cert": cert_id}] * cert_ids}
    if critical_extension:
        tbs["request_extensions"] = [
            {"extn_id": "acceptable_responses", "critical": True, "extn_value": ["basic_ocsp_response"]}
        ]
    return bytes(asn1_ocsp.OCSPRequest({"tbs_request": tbs}).dump())


def test_crafted_request_with_the_maximum_of_cert_ids_is_parsed() -> None:
    assert len(parse_request(_crafted(MAX_CERT_IDS)).cert_ids) == MAX_CERT_IDS


@pytest.mark.parametrize(
    ("der", "message"),
    [
        (b"", "undecodable DER"),
        (b"garbage", "undecodable DER"),
        (b"\x30\x00", "undecodable DER"),
        (_crafted(0), "request has 0 CertIDs"),
        (_crafted(MAX_CERT_IDS + 1), "request has 11 CertIDs; 1 to 10 are answered"),
        (
            _crafted(hash_oid="sha384", digest_size=48),
            r"CertID hash 2\.16\.840\.1\.101\.3\.4\.2\.2 is not SHA-1",
        ),
        (_crafted(hash_oid="sha256", digest_size=20), "CertID issuer hashes are not sha256 digests"),
        (
            _crafted(critical_extension=True),
            r"critical extension 1\.3\.6\.1\.5\.5\.7\.48\.1\.4 is not supported",
        ),
        (_crafted(version=1), "version 1 is not v1"),
        (_crafted() + b"\x00", "undecodable DER"),
        (b"\x30\x82\x10\x01" + bytes(MAX_REQUEST_BYTES), "over 4096"),
    ],
)
def test_malformed_requests_are_refused(der: bytes, message: str) -> None:
    with pytest.raises(OcspMalformed, match=message):
        parse_request(der)


def test_get_request_is_decoded_like_post(openssl: OpenSsl, files: Path) -> None:
    der = _openssl_request(openssl, files, "-sha256")
    encoded = base64.b64encode(der).decode()
    expected = request_from_post("application/ocsp-request", der)
    assert request_from_get(urllib.parse.quote(encoded, safe="")) == expected  # RFC 6960 A.1.1
    assert request_from_get(encoded) == expected  # already decoded by the web framework
    assert request_from_get(base64.urlsafe_b64encode(der).decode().rstrip("=")) == expected


def test_post_content_type_may_carry_parameters(openssl: OpenSsl, files: Path) -> None:
    der = _openssl_request(openssl, files, "-sha1")
    assert request_from_post("Application/OCSP-Request; charset=binary", der) == parse_request(der)


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "text/plain"])
def test_post_of_another_content_type_is_refused(content_type: str | None) -> None:
    with pytest.raises(OcspMalformed, match="not 'application/ocsp-request'"):
        request_from_post(content_type, _crafted())


@pytest.mark.parametrize(
    ("path", "message"),
    [("!!!!", "not base64"), ("%ZZ", "not base64"), ("A" * 20_000, "GET path is 20000 characters")],
)
def test_bad_get_paths_are_refused(path: str, message: str) -> None:
    with pytest.raises(OcspMalformed, match=message):
        request_from_get(path)


def test_malformed_request_is_answered_with_malformed_request(openssl: OpenSsl, tmp_path: Path) -> None:
    with pytest.raises(OcspMalformed, match="undecodable DER") as info:
        parse_request(b"\x30\x03\x02\x01\x00")
    assert info.value.status == 400
    assert isinstance(info.value, PkiError)
    der = unsuccessful_response(ResponseStatus.MALFORMED_REQUEST)
    loaded = x509_ocsp.load_der_ocsp_response(der)
    assert loaded.response_status is x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    (tmp_path / "resp.der").write_bytes(der)
    shown = openssl("ocsp", "-respin", tmp_path / "resp.der", "-resp_text", "-noverify")
    assert "malformedrequest" in (shown.stdout + shown.stderr).lower()


def test_successful_status_cannot_be_sent_unsigned() -> None:
    with pytest.raises(ValueError, match="must be signed"):
        unsuccessful_response(ResponseStatus.SUCCESSFUL)


# --- responses -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["good", "revoked", "unknown"])
def test_responses_pass_pkilint_and_verify_with_cryptography(
    name: str,
    live_ca: CertificateAuthority,
    device: x509.Certificate,
    clock: dt.datetime,
    pkilint_findings: Lint,
) -> None:
    query = parse_request(_request(device, live_ca.issuing, hashes.SHA256()))
    der = _respond(live_ca, query, STATUSES[name], clock)
    assert pkilint_findings(der, "ocsp") == []
    response = x509_ocsp.load_der_ocsp_response(der)
    assert response.response_status is x509_ocsp.OCSPResponseStatus.SUCCESSFUL
    public_key = live_ca.key.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
    assert response.certificates == []  # RFC 6960 4.2.2.2: the CA signs itself, no certificate needed
    ski = live_ca.issuing.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert response.responder_key_hash == ski.digest
    assert response.serial_number == SERIAL
    assert response.produced_at_utc == clock.replace(microsecond=0)
    assert response.this_update_utc == clock.replace(microsecond=0)
    assert response.next_update_utc == clock.replace(microsecond=0) + HOUR
    assert response.certificate_status is x509_ocsp.OCSPCertStatus[name.upper()]
    if name == "revoked":
        assert response.revocation_time_utc == REVOKED_AT.replace(microsecond=0)
        assert response.revocation_reason is x509.ReasonFlags.key_compromise


def test_revoked_without_reason_omits_the_reason(
    live_ca: CertificateAuthority, device: x509.Certificate, clock: dt.datetime, pkilint_findings: Lint
) -> None:
    query = parse_request(_request(device, live_ca.issuing, SHA1))
    der = _respond(live_ca, query, Revoked(REVOKED_AT, RevocationReason.UNSPECIFIED), clock)
    assert pkilint_findings(der, "ocsp") == []
    response = x509_ocsp.load_der_ocsp_response(der)
    assert response.certificate_status is x509_ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason is None


@pytest.mark.parametrize("name", ["good", "revoked", "unknown"])
def test_openssl_verifies_the_response(
    name: str, openssl: OpenSsl, files: Path, live_ca: CertificateAuthority, clock: dt.datetime
) -> None:
    query = parse_request(_openssl_request(openssl, files, "-sha256"))
    (files / "resp.der").write_bytes(_respond(live_ca, query, STATUSES[name], dt.datetime.now(dt.UTC)))
    checked = openssl(
        *("ocsp", "-respin", files / "resp.der", "-sha256", "-issuer", files / "issuing.pem"),
        *(
            "-cert",
            files / "device.pem",
            "-CAfile",
            files / "root.pem",
            "-verify_other",
            files / "issuing.pem",
        ),
    )
    output = checked.stdout + checked.stderr
    assert checked.returncode == 0, output
    assert "Response verify OK" in output
    assert f"device.pem: {name}" in output
    if name == "revoked":
        assert "Reason: keyCompromise" in output


def test_several_cert_ids_get_one_answer_each_in_order(
    live_ca: CertificateAuthority, device: x509.Certificate, clock: dt.datetime, pkilint_findings: Lint
) -> None:
    template = parse_request(_request(device, live_ca.issuing, SHA1)).cert_ids[0]
    query = OcspQuery(tuple(dataclasses.replace(template, serial=serial) for serial in (10, 11, 12)))
    statuses: dict[int, CertStatus] = {
        10: Good(),
        11: Revoked(REVOKED_AT, RevocationReason.SUPERSEDED),
        12: Unknown(),
    }
    der = respond(
        query,
        status_lookup=statuses.__getitem__,
        issuer_cert=live_ca.issuing,
        responder_key=live_ca.key,
        now=clock,
        validity=HOUR,
    )
    assert pkilint_findings(der, "ocsp") == []
    singles = list(x509_ocsp.load_der_ocsp_response(der).responses)
    assert [(single.serial_number, single.certificate_status) for single in singles] == [
        (10, x509_ocsp.OCSPCertStatus.GOOD),
        (11, x509_ocsp.OCSPCertStatus.REVOKED),
        (12, x509_ocsp.OCSPCertStatus.UNKNOWN),
    ]


def test_other_issuers_certificates_are_unauthorized(
    live_ca: CertificateAuthority, ca: CertificateAuthority, device: x509.Certificate, clock: dt.datetime
) -> None:
    # A CertID naming another CA (conftest's issuing CA), alone or beside one of ours.
    ours = parse_request(_request(device, live_ca.issuing, SHA1)).cert_ids[0]
    foreign = parse_request(_request(device, ca.issuing, SHA1)).cert_ids[0]
    for query in (OcspQuery((foreign,)), OcspQuery((ours, foreign))):
        der = _respond(live_ca, query, Good(), clock)
        assert der == unsuccessful_response(ResponseStatus.UNAUTHORIZED)
        assert (
            x509_ocsp.load_der_ocsp_response(der).response_status is x509_ocsp.OCSPResponseStatus.UNAUTHORIZED
        )


def test_same_key_under_another_name_is_unauthorized(
    live_ca: CertificateAuthority, device: x509.Certificate, clock: dt.datetime
) -> None:
    ours = parse_request(_request(device, live_ca.issuing, hashes.SHA256())).cert_ids[0]
    renamed = dataclasses.replace(ours, issuer_name_hash=bytes(32))
    assert _respond(live_ca, OcspQuery((renamed,)), Good(), clock) == unsuccessful_response(
        ResponseStatus.UNAUTHORIZED
    )


@pytest.mark.parametrize("serial", [0, -5, MAX_SERIAL + 1])
def test_serials_no_ca_can_issue_are_unknown_without_a_lookup(
    live_ca: CertificateAuthority, device: x509.Certificate, clock: dt.datetime, serial: int
) -> None:
    template = parse_request(_request(device, live_ca.issuing, SHA1)).cert_ids[0]

    def lookup(_serial: int) -> CertStatus:
        raise AssertionError("looked up a serial outside RFC 5280's range")

    der = respond(
        OcspQuery((dataclasses.replace(template, serial=serial),)),
        status_lookup=lookup,
        issuer_cert=live_ca.issuing,
        responder_key=live_ca.key,
        now=clock,
        validity=HOUR,
    )
    assert x509_ocsp.load_der_ocsp_response(der).certificate_status is x509_ocsp.OCSPCertStatus.UNKNOWN


def test_key_of_another_ca_is_refused(
    live_ca: CertificateAuthority, device: x509.Certificate, clock: dt.datetime
) -> None:
    query = parse_request(_request(device, live_ca.issuing, SHA1))
    with pytest.raises(CaError, match="the responder key is not the key of issuer"):
        respond(
            query,
            status_lookup=_answer(Good()),
            issuer_cert=live_ca.issuing,
            responder_key=generate_software_key(Curve.P256),
            now=clock,
            validity=HOUR,
        )


@pytest.mark.parametrize(
    ("now", "validity", "message"),
    [
        (dt.datetime(2026, 3, 1), HOUR, "timezone-aware"),  # noqa: DTZ001 - the naive time under test
        (dt.datetime(2026, 3, 1, tzinfo=dt.UTC), dt.timedelta(milliseconds=999), "at least one second"),
    ],
)
def test_bad_time_arguments_are_refused(
    live_ca: CertificateAuthority,
    device: x509.Certificate,
    now: dt.datetime,
    validity: dt.timedelta,
    message: str,
) -> None:
    query = parse_request(_request(device, live_ca.issuing, SHA1))
    with pytest.raises(ValueError, match=message):
        respond(
            query,
            status_lookup=_answer(Good()),
            issuer_cert=live_ca.issuing,
            responder_key=live_ca.key,
            now=now,
            validity=validity,
        )


class _BrokenToken:
    """A key backend whose signatures do not verify with its public key."""

    def __init__(self, key: SigningKey) -> None:
        self._real = key
        self._other = generate_software_key(Curve.P256)

    def public_key(self) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
        return self._real.public_key()

    @property
    def hash_algorithm(self) -> hashes.HashAlgorithm:
        return self._real.hash_algorithm

    def sign(self, data: bytes) -> bytes:
        return self._other.sign(data)


def test_signature_that_does_not_verify_is_never_returned(
    live_ca: CertificateAuthority, device: x509.Certificate, clock: dt.datetime
) -> None:
    query = parse_request(_request(device, live_ca.issuing, SHA1))
    with pytest.raises(
        SigningFailed, match="OCSP response signature made by the key backend does not verify"
    ):
        respond(
            query,
            status_lookup=_answer(Good()),
            issuer_cert=live_ca.issuing,
            responder_key=_BrokenToken(live_ca.key),
            now=clock,
            validity=HOUR,
        )


class _RsaKey:
    """An RSA key behind the SigningKey interface (PKCS#1 v1.5, SHA-256), as an HSM might hold."""

    def __init__(self) -> None:
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    @property
    def hash_algorithm(self) -> hashes.HashAlgorithm:
        return hashes.SHA256()

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def test_rsa_issuer_responses_carry_null_parameters(clock: dt.datetime, pkilint_findings: Lint) -> None:
    key = _RsaKey()
    name = _name("fleetguard RSA issuing")
    issuer = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(77)
        .not_valid_before(clock - HOUR)
        .not_valid_after(clock + HOUR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key.private_key, hashes.SHA256())
    )
    query = parse_request(_request(issuer, issuer, hashes.SHA256()))
    der = respond(
        query, status_lookup=_answer(Good()), issuer_cert=issuer, responder_key=key, now=clock, validity=HOUR
    )
    assert pkilint_findings(der, "ocsp") == []
    response = x509_ocsp.load_der_ocsp_response(der)
    key.public_key().verify(
        response.signature, response.tbs_response_bytes, padding.PKCS1v15(), hashes.SHA256()
    )
    assert response.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSA_WITH_SHA256
    assert bytes.fromhex("06092a864886f70d01010b0500") in der  # sha256WithRSAEncryption, NULL


# --- pre-signed cache ------------------------------------------------------------------------------


class _Lookups:
    """A status table that counts lookups; ``during`` runs inside a lookup (to race a revocation)."""

    def __init__(self) -> None:
        self.status: CertStatus = Good()
        self.calls = 0
        self.during: Callable[[], None] | None = None

    def __call__(self, _serial: int) -> CertStatus:
        self.calls += 1
        if self.during is not None:
            self.during()
        return self.status


def _cached(
    ca: CertificateAuthority, cache: PresignedCache, query: OcspQuery, lookups: _Lookups, now: dt.datetime
) -> bytes:
    return respond_cached(
        query,
        cache=cache,
        refresh_after=HOUR / 2,
        status_lookup=lookups,
        issuer_cert=ca.issuing,
        responder_key=ca.key,
        now=now,
        validity=HOUR,
    )


def _status(der: bytes) -> x509_ocsp.OCSPCertStatus:
    return x509_ocsp.load_der_ocsp_response(der).certificate_status


@pytest.fixture
def query(live_ca: CertificateAuthority, device: x509.Certificate) -> OcspQuery:
    return parse_request(_request(device, live_ca.issuing, SHA1))


def test_cache_serves_the_same_bytes_without_a_lookup(
    live_ca: CertificateAuthority, query: OcspQuery, clock: dt.datetime
) -> None:
    cache, lookups = PresignedCache(), _Lookups()
    first = _cached(live_ca, cache, query, lookups, clock)
    assert _cached(live_ca, cache, query, lookups, clock + dt.timedelta(minutes=29)) == first
    assert lookups.calls == 1
    assert cache.get(query.cert_ids[0], clock) == first


def test_revocation_invalidates_every_variant_of_the_serial(
    live_ca: CertificateAuthority, device: x509.Certificate, query: OcspQuery, clock: dt.datetime
) -> None:
    cache, lookups = PresignedCache(), _Lookups()
    sha256_query = parse_request(_request(device, live_ca.issuing, hashes.SHA256()))
    _cached(live_ca, cache, query, lookups, clock)
    _cached(live_ca, cache, sha256_query, lookups, clock)
    assert lookups.calls == 2
    lookups.status = Revoked(REVOKED_AT, RevocationReason.KEY_COMPROMISE)
    cache.invalidate(SERIAL)
    assert cache.get(query.cert_ids[0], clock) is None
    assert cache.get(sha256_query.cert_ids[0], clock) is None
    assert _status(_cached(live_ca, cache, query, lookups, clock)) is x509_ocsp.OCSPCertStatus.REVOKED
    assert _status(_cached(live_ca, cache, sha256_query, lookups, clock)) is x509_ocsp.OCSPCertStatus.REVOKED
    assert lookups.calls == 4


def test_response_signed_during_a_revocation_is_not_cached(
    live_ca: CertificateAuthority, query: OcspQuery, clock: dt.datetime
) -> None:
    cache, lookups = PresignedCache(), _Lookups()

    def revoke_meanwhile() -> None:
        cache.invalidate(SERIAL)
        lookups.during = None

    lookups.during = revoke_meanwhile  # the lookup read "good" just before the revocation committed
    assert _status(_cached(live_ca, cache, query, lookups, clock)) is x509_ocsp.OCSPCertStatus.GOOD
    assert cache.get(query.cert_ids[0], clock) is None  # the stale "good" was not stored
    lookups.status = Revoked(REVOKED_AT, RevocationReason.KEY_COMPROMISE)
    assert _status(_cached(live_ca, cache, query, lookups, clock)) is x509_ocsp.OCSPCertStatus.REVOKED


def test_cached_response_expires_at_refresh_time(
    live_ca: CertificateAuthority, query: OcspQuery, clock: dt.datetime
) -> None:
    cache, lookups = PresignedCache(), _Lookups()
    _cached(live_ca, cache, query, lookups, clock)
    assert cache.get(query.cert_ids[0], clock + HOUR / 2 - dt.timedelta(microseconds=1)) is not None
    assert cache.get(query.cert_ids[0], clock + HOUR / 2) is None
    assert len(cache) == 0


def test_unauthorized_and_multi_cert_answers_are_not_cached(
    live_ca: CertificateAuthority, ca: CertificateAuthority, device: x509.Certificate, clock: dt.datetime
) -> None:
    cache, lookups = PresignedCache(), _Lookups()
    foreign = parse_request(_request(device, ca.issuing, SHA1))
    _cached(live_ca, cache, foreign, lookups, clock)
    ours = parse_request(_request(device, live_ca.issuing, SHA1)).cert_ids[0]
    _cached(live_ca, cache, OcspQuery((ours, ours)), lookups, clock)
    assert len(cache) == 0


def test_refresh_must_come_before_the_response_expires(
    live_ca: CertificateAuthority, query: OcspQuery, clock: dt.datetime
) -> None:
    with pytest.raises(ValueError, match="must be positive and at most validity"):
        respond_cached(
            query,
            cache=PresignedCache(),
            refresh_after=2 * HOUR,
            status_lookup=_Lookups(),
            issuer_cert=live_ca.issuing,
            responder_key=live_ca.key,
            now=clock,
            validity=HOUR,
        )


def _cert_id(serial: int) -> CertId:
    return CertId(CertIdHash.SHA1, b"n" * 20, b"k" * 20, serial)


def test_cache_is_bounded_least_recently_used_first(clock: dt.datetime) -> None:
    cache = PresignedCache(max_serials=2)
    later = clock + HOUR
    for serial in (1, 2):
        assert cache.put(_cert_id(serial), b"r%d" % serial, expires_at=later, since=cache.epoch())
    assert cache.get(_cert_id(1), clock) == b"r1"  # 1 is now the most recently used
    cache.put(_cert_id(3), b"r3", expires_at=later, since=cache.epoch())
    assert len(cache) == 2
    assert cache.get(_cert_id(2), clock) is None
    assert cache.get(_cert_id(1), clock) == b"r1"


def test_forgotten_invalidations_still_refuse_older_puts(clock: dt.datetime) -> None:
    cache = PresignedCache(max_tombstones=1)
    before = cache.epoch()
    cache.invalidate(1)
    cache.invalidate(2)  # serial 1's tombstone is folded into the floor
    assert not cache.put(_cert_id(1), b"stale", expires_at=clock + HOUR, since=before)
    assert cache.put(_cert_id(1), b"fresh", expires_at=clock + HOUR, since=cache.epoch())
    assert not cache.put(_cert_id(2), b"stale", expires_at=clock + HOUR, since=before)


def test_put_for_another_serial_is_not_refused_by_a_revocation(clock: dt.datetime) -> None:
    cache = PresignedCache()
    before = cache.epoch()
    cache.invalidate(1)
    assert cache.put(_cert_id(2), b"r2", expires_at=clock + HOUR, since=before)


def test_cache_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PresignedCache(max_serials=0)


# --- properties: whatever arrives, the only failure is OcspMalformed -------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_raise_ocsp_malformed(data: bytes) -> None:
    try:
        parse_request(data)
    except OcspMalformed:
        return


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=600))
def test_arbitrary_get_paths_only_raise_ocsp_malformed(path: str) -> None:
    try:
        request_from_get(path)
    except OcspMalformed:
        return


_VALID_REQUEST = _crafted(3)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, len(_VALID_REQUEST) - 1), st.integers(0, 255))
def test_mutated_requests_parse_or_raise_ocsp_malformed(index: int, value: int) -> None:
    mutated = bytearray(_VALID_REQUEST)
    mutated[index] = value
    try:
        query = parse_request(bytes(mutated))
    except OcspMalformed:
        return
    assert 1 <= len(query.cert_ids) <= MAX_CERT_IDS


# One CertID with a nonce, as clients send: what the fast path (cryptography) takes.
_SINGLE_REQUEST = (
    x509_ocsp.OCSPRequestBuilder()
    .add_certificate_by_hash(b"\x01" * 32, b"\x02" * 32, 2**158 + 5, hashes.SHA256())
    .add_extension(x509.OCSPNonce(b"\x03" * 16), critical=False)
    .build()
    .public_bytes(DER)
)


@settings(max_examples=1000, deadline=None)
@given(st.integers(0, len(_SINGLE_REQUEST) - 1), st.integers(0, 255))
def test_fast_path_agrees_with_the_full_decoder(index: int, value: int) -> None:
    mutated = bytearray(_SINGLE_REQUEST)
    mutated[index] = value
    outcomes: list[OcspQuery | None] = []
    for decode in (parse_request, _parse_fully):
        try:
            outcomes.append(decode(bytes(mutated)))
        except OcspMalformed:
            outcomes.append(None)
    assert outcomes[0] == outcomes[1]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=-(2**200), max_value=2**200), min_size=1, max_size=MAX_CERT_IDS))
def test_cert_ids_round_trip(serials: list[int]) -> None:
    der = bytes(
        asn1_ocsp.OCSPRequest(
            {
                "tbs_request": {
                    "request_list": [
                        {
                            "req_cert": {
                                "hash_algorithm": {"algorithm": "sha256", "parameters": asn1_core.Null()},
                                "issuer_name_hash": b"\x01" * 32,
                                "issuer_key_hash": b"\x02" * 32,
                                "serial_number": serial,
                            }
                        }
                        for serial in serials
                    ]
                }
            }
        ).dump()
    )
    query = parse_request(der)
    assert [cert_id.serial for cert_id in query.cert_ids] == serials
    assert {cert_id.hash_algorithm for cert_id in query.cert_ids} == {CertIdHash.SHA256}
