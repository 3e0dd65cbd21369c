"""What relying parties fetch without a token: CA certificates, CRL shards (full and delta) and OCSP
over POST and GET, including the answers to malformed, oversized and foreign requests."""

from __future__ import annotations

import base64
import urllib.parse
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from fleetguard.api.app import api_routes
from fleetguard.api.auth import PUBLIC_PATHS, permission_of
from fleetguard.api.routers import pki_public
from fleetguard.pki.ocsp import MAX_REQUEST_BYTES
from fleetguard.pki.revocation import RevocationReason
from fleetguard.pki.service import CertificateRecord
from fleetguard.types import utc_now

if TYPE_CHECKING:
    from conftest import Api, ApiFactory

OCSP_REQUEST = "application/ocsp-request"
OCSP_RESPONSE = "application/ocsp-response"
DER = serialization.Encoding.DER
SHA1 = hashes.SHA1()  # noqa: S303 - the CertID hash OCSP clients send by default


@pytest.fixture
def ca(make_api: ApiFactory, monkeypatch: pytest.MonkeyPatch) -> Api:
    """An installation with a CA and device cam-1 (no token is used below but to set things up)."""
    monkeypatch.setenv("FLEETGUARD_CA_PASSPHRASE", "correct horse battery staple")
    api = make_api(crl_partitions=16)
    api.runtime.pki.initialize(actor="test", now=utc_now())
    api.register(id="cam-1")
    return api


def _issue(api: Api) -> tuple[CertificateRecord, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cam-1")]))
        .sign(key, hashes.SHA256())
    )
    record = api.runtime.pki.issue_device("cam-1", request.public_bytes(DER), actor="test")
    return record, x509.load_der_x509_certificate(record.der)


def _issuing(api: Api) -> x509.Certificate:
    return api.runtime.pki.authorities()[1].certificate


def _path(url: str) -> str:
    return urllib.parse.urlsplit(url).path


def _crl_path(certificate: x509.Certificate) -> str:
    points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    (point,) = points
    assert point.full_name is not None
    return _path(str(point.full_name[0].value))


def _ocsp_request(
    certificate: x509.Certificate, issuer: x509.Certificate, *, nonce: bytes | None = None
) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer, SHA1)
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(DER)


def _post_ocsp(api: Api, body: bytes, content_type: str = OCSP_REQUEST) -> ocsp.OCSPResponse:
    response = api.client.post("/pki/ocsp", content=body, headers={"Content-Type": content_type})
    return _ocsp_answer(response)


def _ocsp_answer(response: Any) -> ocsp.OCSPResponse:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == OCSP_RESPONSE
    return ocsp.load_der_ocsp_response(response.content)


# --- the routes are public, and only these ---------------------------------------------------


def test_public_pki_routes_are_exactly_the_public_paths_under_pki() -> None:
    served = {route.path for route in api_routes() if route.path.startswith("/pki/")}
    assert served == {path for path in PUBLIC_PATHS if path.startswith("/pki/")}
    assert all(permission_of(route) is None for route in api_routes() if route.path in served)
    assert {route.path for route in pki_public.router.routes} >= served


def test_ca_certificates_are_served_without_a_token(ca: Api) -> None:
    for authority in ca.runtime.pki.authorities():
        response = ca.client.get(f"/pki/ca/{authority.id}.der")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/pkix-cert"
        assert x509.load_der_x509_certificate(response.content) == authority.certificate
    missing = ca.client.get("/pki/ca/issuing-9.der")
    assert (missing.status_code, missing.headers["content-type"]) == (404, "application/problem+json")


def test_aia_ca_issuers_url_serves_the_issuing_ca(ca: Api) -> None:
    _, certificate = _issue(ca)
    access = certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    (issuers,) = (d for d in access if d.access_method == x509.AuthorityInformationAccessOID.CA_ISSUERS)
    response = ca.client.get(_path(str(issuers.access_location.value)))
    assert x509.load_der_x509_certificate(response.content) == _issuing(ca)


# --- CRLs ------------------------------------------------------------------------------------


def test_revocation_appears_on_the_crl_shard_at_the_distribution_point(ca: Api) -> None:
    record, certificate = _issue(ca)
    path = _crl_path(certificate)
    assert path == f"/pki/ca/issuing-1/crl/{record.crl_partition}.crl"
    before = ca.client.get(path)
    assert before.status_code == 200
    assert before.headers["content-type"] == "application/pkix-crl"
    crl = x509.load_der_x509_crl(before.content)
    assert crl.is_signature_valid(_issuing(ca).public_key())
    assert crl.get_revoked_certificate_by_serial_number(record.serial) is None

    ca.runtime.pki.revoke(record.serial, RevocationReason.KEY_COMPROMISE, actor="test")

    after = x509.load_der_x509_crl(ca.client.get(path).content)
    entry = after.get_revoked_certificate_by_serial_number(record.serial)
    assert entry is not None
    assert (
        entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        is x509.ReasonFlags.key_compromise
    )
    assert after.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > (
        crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    )
    for name in ("full", f"{record.crl_partition}-delta", "full-delta"):
        other = x509.load_der_x509_crl(ca.client.get(f"/pki/ca/issuing-1/crl/{name}.crl").content)
        assert other.get_revoked_certificate_by_serial_number(record.serial) is not None, name
    delta = x509.load_der_x509_crl(
        ca.client.get(f"/pki/ca/issuing-1/crl/{record.crl_partition}-delta.crl").content
    )
    delta.extensions.get_extension_for_class(x509.DeltaCRLIndicator)


def test_crl_may_be_cached_for_a_minute_at_most(ca: Api) -> None:
    response = ca.client.get("/pki/ca/issuing-1/crl/0.crl")
    directives = dict(
        part.strip().partition("=")[::2] for part in response.headers["cache-control"].split(",")
    )
    assert "public" in directives
    assert 0 < int(directives["max-age"]) <= pki_public.MAX_AGE_S


@pytest.mark.parametrize(
    "path",
    [
        "/pki/ca/issuing-1/crl/16.crl",  # shards are 0..15 here
        "/pki/ca/issuing-1/crl/01.crl",
        "/pki/ca/issuing-1/crl/delta.crl",
        "/pki/ca/issuing-1/crl/full-full.crl",
        "/pki/ca/issuing-1/crl/-1.crl",
        "/pki/ca/root/crl/full.crl",
        "/pki/ca/issuing-2/crl/0.crl",
        "/pki/ca/nope/crl/0.crl",
    ],
)
def test_unknown_crl_is_404(ca: Api, path: str) -> None:
    response = ca.client.get(path)
    assert response.status_code == 404, response.text
    assert response.headers["content-type"] == "application/problem+json"


# --- OCSP ------------------------------------------------------------------------------------


def test_ocsp_post_answers_good_then_revoked(ca: Api) -> None:
    record, certificate = _issue(ca)
    request = _ocsp_request(certificate, _issuing(ca))
    good = _post_ocsp(ca, request)
    assert good.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert good.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert good.serial_number == record.serial

    ca.runtime.pki.revoke(record.serial, RevocationReason.KEY_COMPROMISE, actor="test")

    revoked = _post_ocsp(ca, request)
    assert revoked.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert revoked.revocation_reason is x509.ReasonFlags.key_compromise
    issuing_key = _issuing(ca).public_key()
    assert isinstance(issuing_key, ec.EllipticCurvePublicKey)
    issuing_key.verify(revoked.signature, revoked.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))


def test_ocsp_answers_unknown_for_a_serial_never_issued(ca: Api) -> None:
    _, certificate = _issue(ca)
    template = ocsp.load_der_ocsp_request(_ocsp_request(certificate, _issuing(ca)))
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(template.issuer_name_hash, template.issuer_key_hash, 0x1234, SHA1)
        .build()
    )
    assert _post_ocsp(ca, request.public_bytes(DER)).certificate_status is ocsp.OCSPCertStatus.UNKNOWN


def test_ocsp_get_takes_the_request_in_the_url(ca: Api) -> None:
    record, certificate = _issue(ca)
    # A nonce (ignored by the responder) that puts a '/' in the base64, so that the request spans
    # path segments once the server has decoded %2F.
    nonce = next(n for n in (bytes([i]) * 16 for i in range(256)) if "/" in _b64(certificate, ca, n))
    encoded = _b64(certificate, ca, nonce)
    for path in (urllib.parse.quote(encoded, safe=""), encoded, _b64(certificate, ca, None)):
        response = ca.client.get(f"/pki/ocsp/{path}")
        answer = _ocsp_answer(response)
        assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD, path
        assert answer.serial_number == record.serial
        assert response.headers["cache-control"] == f"public, max-age={pki_public.MAX_AGE_S}, no-transform"


def _b64(certificate: x509.Certificate, api: Api, nonce: bytes | None) -> str:
    return base64.b64encode(_ocsp_request(certificate, _issuing(api), nonce=nonce)).decode()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"not DER", OCSP_REQUEST),
        (b"", OCSP_REQUEST),
        (b"\x30" * (MAX_REQUEST_BYTES + 1), OCSP_REQUEST),
        (b"\x30\x03\x02\x01\x01", "application/octet-stream"),
    ],
    ids=["garbage", "empty", "oversized", "wrong-media-type"],
)
def test_malformed_ocsp_post_is_200_malformed_request(ca: Api, body: bytes, content_type: str) -> None:
    assert _post_ocsp(ca, body, content_type).response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


@pytest.mark.parametrize("path", ["not-base64!", "AAAA", "a/b/c", "%00"])
def test_malformed_ocsp_get_is_200_malformed_request(ca: Api, path: str) -> None:
    answer = _ocsp_answer(ca.client.get(f"/pki/ocsp/{path}"))
    assert answer.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_ocsp_about_another_ca_is_unauthorized(ca: Api, make_api: ApiFactory) -> None:
    stranger = make_api()
    stranger.runtime.pki.initialize(actor="test", now=utc_now())
    stranger.register(id="cam-1")
    _, foreign = _issue(stranger)
    answer = _post_ocsp(ca, _ocsp_request(foreign, _issuing(stranger)))
    assert answer.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED
