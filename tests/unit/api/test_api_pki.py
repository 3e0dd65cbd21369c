"""The CA and device certificates over HTTP: hierarchy, issuance from CSRs, refusals that record
nothing, renewal limits, revocation, fleet views and roles.

The relying parties' routes (CRLs, OCSP, CA certificates) are tested in ``test_api_pki_public.py``.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from fleetguard.api.tokens import Role
from fleetguard.pki.csr import MAX_CSR_BYTES
from fleetguard.pki.revocation import RevocationReason
from fleetguard.pki.service import CertificateStatus
from fleetguard.types import utc_now

if TYPE_CHECKING:
    from conftest import Api, ApiFactory

PASSPHRASE_ENV = "FLEETGUARD_CA_PASSPHRASE"
PEM_FILE = "application/x-pem-file"
PKCS10 = "application/pkcs10"
PEM_CHAIN = "application/pem-certificate-chain"
DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM
PkiApi = Callable[..., "Api"]


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def pki_api(make_api: ApiFactory, monkeypatch: pytest.MonkeyPatch) -> PkiApi:
    """Return a factory of installations (Settings overrides) with a CA, initialized at ``ca_at``."""
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse battery staple")

    def factory(*, ca_at: dt.datetime | None = None, **overrides: Any) -> Api:
        api = make_api(**overrides)
        api.runtime.pki.initialize(actor="test", now=ca_at or utc_now())
        return api

    return factory


@pytest.fixture
def ca(pki_api: PkiApi) -> Api:
    """An installation with a CA (encrypted key files) and default settings."""
    return pki_api()


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def csr(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
    *,
    common_name: str = "evil",
    dns_names: tuple[str, ...] = ("evil.example",),
    ca: bool = False,
    encoding: serialization.Encoding = PEM,
) -> bytes:
    """Return a CSR that claims a subject, DNS SANs and (with ``ca``) a CA certificate."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    if dns_names:
        names = [x509.DNSName(name) for name in dns_names]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return builder.sign(key or _key(), hashes.SHA256()).public_bytes(encoding)


def issue(api: Api, device_id: str, body: bytes | None = None, **headers: str) -> Any:
    """POST a CSR (PEM) for ``device_id`` as admin; return the response."""
    headers.setdefault("Content-Type", PEM_FILE)
    return api.client.post(
        f"/v1/devices/{device_id}/certificates", content=body or csr(), headers=api.headers(**headers)
    )


def issued(api: Api, device_id: str) -> dict[str, Any]:
    """Issue a certificate for ``device_id``; return its JSON."""
    response = issue(api, device_id)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == f"https://fleetguard.dev/problems/{code}"
    return body


def _serials(page: dict[str, Any]) -> list[str]:
    return [item["serial"] for item in page["items"]]


# --- the CA ----------------------------------------------------------------------------------


def test_initialize_creates_root_and_issuing_ca_then_refuses_a_second_time(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse battery staple")
    created = api.client.post("/v1/ca", json={"hsm": False}, headers=api.headers())
    assert created.status_code == 201, created.text
    assert [(a["id"], a["role"], a["status"], a["key_backend"]) for a in created.json()] == [
        ("root", "root", "active", "file"),
        ("issuing-1", "issuing", "active", "file"),
    ]
    size = api.log_size()
    again = api.client.post("/v1/ca", json={}, headers=api.headers())
    _problem(again, 409, "conflict")
    assert api.log_size() == size
    assert len(api.runtime.pki.authorities()) == 2


def test_initialize_without_the_passphrase_is_503_and_creates_nothing(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    response = api.client.post("/v1/ca", headers=api.headers())
    problem = _problem(response, 503, "key-unlock-failed")
    assert PASSPHRASE_ENV in problem["detail"]
    assert api.runtime.pki.authorities() == []


def test_ca_listing_names_the_key_backend_never_the_key_path(ca: Api) -> None:
    response = ca.client.get("/v1/ca", headers=ca.headers(Role.READ_ONLY))
    assert response.status_code == 200
    assert ".key.pem" not in response.text
    assert "file:" not in response.text
    root, issuing = response.json()
    certificate = ca.runtime.pki.authorities()[1].certificate
    assert issuing["sha256"] == certificate.fingerprint(hashes.SHA256()).hex()
    assert issuing["serial"] == f"{certificate.serial_number:x}"
    assert issuing["subject"] == "CN=fleetguard issuing CA 1,O=example.org"
    assert root["key_backend"] == issuing["key_backend"] == "file"
    assert dt.datetime.fromisoformat(root["not_after"]) > dt.datetime.fromisoformat(issuing["not_after"])


def test_chain_is_exported_in_every_format(ca: Api) -> None:
    root, issuing = (a.certificate for a in ca.runtime.pki.authorities())
    headers = ca.headers(Role.READ_ONLY)

    pem = ca.client.get("/v1/ca/chain", headers=headers)
    assert pem.headers["content-type"] == PEM_CHAIN
    assert x509.load_pem_x509_certificates(pem.content) == [issuing, root]

    der = ca.client.get("/v1/ca/chain?format=der", headers=headers)
    assert der.headers["content-type"] == "application/pkix-cert"
    assert x509.load_der_x509_certificate(der.content) == issuing

    p7 = ca.client.get("/v1/ca/chain?format=pkcs7", headers=headers)
    assert p7.headers["content-type"] == "application/pkcs7-mime; smime-type=certs-only"
    assert p7.headers["content-disposition"] == 'attachment; filename="fleetguard-ca.p7c"'
    assert set(pkcs7.load_der_pkcs7_certificates(p7.content)) == {issuing, root}

    _problem(ca.client.get("/v1/ca/chain?format=jks", headers=headers), 422, "invalid-input")


def test_rotation_issues_with_the_new_ca_and_keeps_the_old_one_trusted(ca: Api) -> None:
    before = issued(ca, ca.register()["id"])
    rotated = ca.client.post("/v1/ca/rotate", headers=ca.headers())
    assert rotated.status_code == 201, rotated.text
    assert (rotated.json()["id"], rotated.json()["status"]) == ("issuing-2", "active")
    listed = ca.client.get("/v1/ca", headers=ca.headers()).json()
    assert [(a["id"], a["status"]) for a in listed] == [
        ("root", "active"),
        ("issuing-1", "retired"),
        ("issuing-2", "active"),
    ]
    after = issued(ca, ca.register()["id"])
    assert (before["issuer_id"], after["issuer_id"]) == ("issuing-1", "issuing-2")
    bundle = x509.load_pem_x509_certificates(ca.client.get("/v1/ca/chain", headers=ca.headers()).content)
    assert len(bundle) == 3  # both issuing CAs and the root


# --- issuance --------------------------------------------------------------------------------


def test_issuance_takes_only_the_key_from_the_csr(ca: Api) -> None:
    device_id = ca.register(id="cam-1")["id"]
    key = _key()
    size = ca.log_size()
    response = issue(ca, device_id, csr(key, common_name="evil", dns_names=("evil.example", "admin.example")))
    assert response.status_code == 201, response.text
    body = response.json()
    certificate = x509.load_pem_x509_certificate(body["pem"].encode())
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cam-1"
    assert "evil" not in certificate.subject.rfc4514_string()
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier("spiffe://example.org/device/cam-1")]
    assert certificate.public_key() == key.public_key()
    assert response.headers["location"] == f"/v1/certificates/{body['serial']}"
    assert int(body["serial"], 16) == certificate.serial_number
    assert body["sha256"] == certificate.fingerprint(hashes.SHA256()).hex()
    assert (body["device_id"], body["issuer_id"], body["status"]) == ("cam-1", "issuing-1", "valid")
    not_before, not_after = (dt.datetime.fromisoformat(body[k]) for k in ("not_before", "not_after"))
    assert not_before < dt.datetime.fromisoformat(body["renew_at"]) < not_after
    assert ca.log_size() == size + 1
    assert ca.runtime.log.entries(subject="device:cam-1")[-1].action == "cert.issued"


@pytest.mark.parametrize(
    ("content_type", "form"),
    [
        (PKCS10, "der"),
        (PKCS10, "base64"),  # what EST clients send (RFC 7030 4.2.1)
        (PKCS10, "pem"),
        (PEM_FILE, "pem"),
        ("text/plain; charset=us-ascii", "pem"),
    ],
)
def test_csr_is_read_in_every_accepted_form(ca: Api, content_type: str, form: str) -> None:
    der = csr(encoding=DER)
    body = {
        "der": der,
        "base64": base64.encodebytes(der),  # with line breaks, as MIME writes it
        "pem": x509.load_der_x509_csr(der).public_bytes(PEM),
    }[form]
    response = issue(ca, ca.register()["id"], body, **{"Content-Type": content_type})
    assert response.status_code == 201, response.text


def test_accept_pem_chain_answers_the_certificate_and_its_issuing_ca(ca: Api) -> None:
    device_id = ca.register()["id"]
    response = issue(ca, device_id, Accept=PEM_CHAIN)
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == PEM_CHAIN
    leaf, issuing = x509.load_pem_x509_certificates(response.content)
    assert issuing == ca.runtime.pki.authorities()[1].certificate
    assert response.headers["location"] == f"/v1/certificates/{leaf.serial_number:x}"
    leaf.verify_directly_issued_by(issuing)


def _rsa_1024() -> bytes:
    return csr(rsa.generate_private_key(public_exponent=65537, key_size=1024))  # noqa: S505 - the point


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        pytest.param(b"this is not a CSR", PEM_FILE, "malformed DER", id="garbage"),
        pytest.param(b"-----BEGIN CERTIFICATE REQUEST-----\n!!\n", PEM_FILE, "PEM", id="bad-pem"),
        pytest.param(b"not base64 at all!", PKCS10, "neither DER nor base64", id="bad-base64"),
        pytest.param(None, PEM_FILE, "RSA-1024 key is too weak", id="rsa-1024"),
        pytest.param(csr(ca=True), PEM_FILE, "CA certificate", id="ca-true"),
    ],
)
def test_bad_csr_is_422_and_records_nothing(
    ca: Api, body: bytes | None, content_type: str, reason: str
) -> None:
    device_id = ca.register()["id"]
    size = ca.log_size()
    response = issue(ca, device_id, body or _rsa_1024(), **{"Content-Type": content_type})
    problem = _problem(response, 422, "csr-rejected")
    assert reason in problem["detail"]
    assert ca.runtime.pki.certificates() == []
    assert ca.log_size() == size


def test_csr_over_16_kib_is_413_and_records_nothing(ca: Api) -> None:
    device_id = ca.register()["id"]
    names = tuple(f"host-{n:05d}.a-rather-long-domain.example" for n in range(400))
    big = csr(dns_names=names)  # a real, validly signed request
    assert MAX_CSR_BYTES < len(big) < 2 * MAX_CSR_BYTES
    size = ca.log_size()
    problem = _problem(issue(ca, device_id, big), 413, "csr-too-large")
    assert str(MAX_CSR_BYTES) in problem["detail"]
    huge = b"-----BEGIN CERTIFICATE REQUEST-----\n" + b"A" * (1024 * 1024 - 100)  # refused unread
    _problem(issue(ca, device_id, huge), 413, "csr-too-large")
    der = x509.load_pem_x509_csr(big).public_bytes(DER)
    _problem(issue(ca, device_id, base64.b64encode(der), **{"Content-Type": PKCS10}), 413, "csr-too-large")
    assert ca.runtime.pki.certificates() == []
    assert ca.log_size() == size


def test_csr_of_another_media_type_is_415(ca: Api) -> None:
    response = ca.client.post(
        f"/v1/devices/{ca.register()['id']}/certificates", json={"csr": "..."}, headers=ca.headers()
    )
    _problem(response, 415, "unsupported-media-type")


def test_quarantined_device_gets_no_certificate(ca: Api) -> None:
    device_id = ca.register()["id"]
    for action in ("provision", "activate", "quarantine"):
        moved = ca.client.post(
            f"/v1/devices/{device_id}/transitions", json={"action": action}, headers=ca.headers()
        )
        assert moved.status_code == 200, moved.text
    size = ca.log_size()
    problem = _problem(issue(ca, device_id), 409, "issuance-refused")
    assert "quarantined" in problem["detail"]
    assert ca.runtime.pki.certificates() == []
    assert ca.log_size() == size


def test_unknown_device_is_404(ca: Api) -> None:
    _problem(issue(ca, "no-such-device"), 404, "device-not-found")
    assert ca.runtime.pki.certificates() == []


# --- renewal ---------------------------------------------------------------------------------


def _renew(api: Api, device_id: str, serial: str) -> Any:
    return api.client.post(
        f"/v1/devices/{device_id}/certificates/{serial}/renewal",
        content=csr(),
        headers=api.headers(**{"Content-Type": PEM_FILE}),
    )


def test_renewal_is_rate_limited_per_device_with_retry_after(pki_api: PkiApi) -> None:
    api = pki_api(device_renewal_burst=2)
    device_id = api.register()["id"]
    current = issued(api, device_id)
    for _ in range(2):
        renewed = _renew(api, device_id, current["serial"])
        assert renewed.status_code == 201, renewed.text
        assert renewed.json()["renewed_from"] == current["serial"]
        assert renewed.headers["location"] == f"/v1/certificates/{renewed.json()['serial']}"
    recorded = len(api.runtime.pki.certificates())
    size = api.log_size()
    throttled = _renew(api, device_id, current["serial"])
    _problem(throttled, 503, "renewal-throttled")
    assert int(throttled.headers["retry-after"]) >= 1
    assert len(api.runtime.pki.certificates()) == recorded == 3
    assert api.log_size() == size
    other = api.register()["id"]  # the limit is per device
    assert _renew(api, other, issued(api, other)["serial"]).status_code == 201


def test_renewal_beyond_the_grace_window_is_403(pki_api: PkiApi) -> None:
    past = utc_now() - dt.timedelta(days=3)
    api = pki_api(ca_at=past, device_certificate_days=1, renewal_grace_days=0.5)
    device_id = api.register()["id"]
    record = api.runtime.pki.issue_device(device_id, csr(), actor="test", now=past)
    problem = _problem(_renew(api, device_id, f"{record.serial:x}"), 403, "renewal-refused")
    assert "enrol the device again" in problem["hint"]


def test_renewal_of_another_devices_certificate_is_refused(ca: Api) -> None:
    mine, theirs = ca.register()["id"], ca.register()["id"]
    serial = issued(ca, theirs)["serial"]
    _problem(_renew(ca, mine, serial), 409, "issuance-refused")


# --- reading certificates --------------------------------------------------------------------


def test_get_certificate_as_json_or_pem_chain(ca: Api) -> None:
    body = issued(ca, ca.register()["id"])
    path = f"/v1/certificates/{body['serial'].upper()}"
    assert ca.client.get(path, headers=ca.headers(Role.READ_ONLY)).json() == body
    chain = ca.client.get(path, headers=ca.headers(Role.READ_ONLY, Accept=f"{PEM_CHAIN}, */*;q=0.1"))
    assert chain.headers["content-type"] == PEM_CHAIN
    leaf, _issuing = x509.load_pem_x509_certificates(chain.content)
    assert leaf.public_bytes(PEM).decode() == body["pem"]
    json_wins = ca.client.get(path, headers=ca.headers(Accept=f"application/json, {PEM_CHAIN};q=0.5"))
    assert json_wins.json() == body


@pytest.mark.parametrize("serial", ["xyz", "1" * 41, "-1", "0x12"])
def test_malformed_serial_is_422(ca: Api, serial: str) -> None:
    _problem(ca.client.get(f"/v1/certificates/{serial}", headers=ca.headers()), 422, "invalid-input")


def test_unknown_serial_is_404(ca: Api) -> None:
    _problem(ca.client.get("/v1/certificates/1234", headers=ca.headers()), 404, "certificate-not-found")
    revoked = ca.client.post("/v1/certificates/1234/revocation", json={}, headers=ca.headers())
    _problem(revoked, 404, "certificate-not-found")


def test_fleet_views(pki_api: PkiApi) -> None:
    api = pki_api(device_certificate_days=1)
    first, second = (issued(api, api.register()["id"]) for _ in range(2))
    headers = api.headers(Role.AUDITOR)

    def view(query: str) -> set[str]:
        response = api.client.get(f"/v1/certificates?{query}", headers=headers)
        assert response.status_code == 200, response.text
        return set(_serials(response.json()))

    assert view("view=expiring&within_days=2") == {first["serial"], second["serial"]}
    assert view("view=expired") == set()
    assert view("view=revoked") == set()
    revoked = api.client.post(
        f"/v1/certificates/{first['serial']}/revocation", json={"reason": "superseded"}, headers=api.headers()
    )
    assert revoked.status_code == 200
    assert view("view=expiring&within_days=2") == {second["serial"]}
    assert view("view=revoked") == {first["serial"]}
    assert view("view=all") == {first["serial"], second["serial"]}


def test_expired_and_expiring_views_follow_the_clock(pki_api: PkiApi) -> None:
    now = utc_now()
    api = pki_api(ca_at=now - dt.timedelta(days=40))  # 30-day certificates
    device_id = api.register()["id"]
    old = api.runtime.pki.issue_device(device_id, csr(), actor="test", now=now - dt.timedelta(days=40))
    new = api.runtime.pki.issue_device(device_id, csr(), actor="test", now=now)
    headers = api.headers(Role.READ_ONLY)

    def view(query: str) -> list[str]:
        return _serials(api.client.get(f"/v1/certificates?{query}", headers=headers).json())

    assert view("view=expired") == [f"{old.serial:x}"]
    assert view("view=expiring&within_days=31") == [f"{new.serial:x}"]
    assert view("view=expiring&within_days=29") == []
    assert view("view=all") == [f"{old.serial:x}", f"{new.serial:x}"]


def test_pages_follow_next_after(ca: Api) -> None:
    device_id = ca.register()["id"]
    moment = utc_now()  # one issuance time: the view's order (expiry, serial) is the serial order
    serials = sorted(
        ca.runtime.pki.issue_device(device_id, csr(), actor="test", now=moment).serial for _ in range(3)
    )
    headers = ca.headers(Role.READ_ONLY)
    first = ca.client.get(f"/v1/devices/{device_id}/certificates?limit=2", headers=headers).json()
    assert _serials(first) == [f"{s:x}" for s in serials[:2]]
    after = first["next_after"]
    second = ca.client.get(f"/v1/devices/{device_id}/certificates?limit=2&after={after}", headers=headers)
    assert _serials(second.json()) == [f"{serials[2]:x}"]
    assert second.json()["next_after"] is None
    too_big = ca.client.get("/v1/certificates?limit=1000000", headers=headers)
    _problem(too_big, 422, "invalid-input")


def test_device_listing_of_an_unknown_device_is_404(ca: Api) -> None:
    response = ca.client.get("/v1/devices/nobody/certificates", headers=ca.headers())
    _problem(response, 404, "device-not-found")


# --- revocation ------------------------------------------------------------------------------


def test_revocation_records_the_reason_and_is_idempotent(ca: Api) -> None:
    device_id = ca.register()["id"]
    serial = issued(ca, device_id)["serial"]
    size = ca.log_size()
    path = f"/v1/certificates/{serial}/revocation"
    response = ca.client.post(path, json={"reason": "keyCompromise"}, headers=ca.headers(Role.OPERATOR))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["reason"]) == ("revoked", "keyCompromise")
    assert ca.log_size() == size + 1
    assert ca.runtime.log.entries(subject=f"device:{device_id}")[-1].action == "cert.revoked"
    again = ca.client.post(path, json={"reason": "superseded"}, headers=ca.headers())
    assert again.json() == body
    assert ca.log_size() == size + 1


@pytest.mark.parametrize("reason", ["certificateHold", "removeFromCRL", "stolen", ""])
def test_unknown_revocation_reason_is_422(ca: Api, reason: str) -> None:
    serial = issued(ca, ca.register()["id"])["serial"]
    response = ca.client.post(
        f"/v1/certificates/{serial}/revocation", json={"reason": reason}, headers=ca.headers()
    )
    _problem(response, 422, "invalid-input")
    assert ca.runtime.pki.certificate(int(serial, 16)).status is CertificateStatus.VALID


def test_revoking_a_device_revokes_its_valid_certificates(ca: Api) -> None:
    device_id = ca.register()["id"]
    serials = {issued(ca, device_id)["serial"] for _ in range(2)}
    other = issued(ca, ca.register()["id"])["serial"]
    path = f"/v1/devices/{device_id}/revocation"
    response = ca.client.post(path, json={"reason": "cessationOfOperation"}, headers=ca.headers())
    assert response.status_code == 200, response.text
    assert {item["serial"] for item in response.json()} == serials
    assert {item["reason"] for item in response.json()} == {RevocationReason.CESSATION_OF_OPERATION.value}
    assert ca.client.post(path, json={}, headers=ca.headers()).json() == []
    assert ca.runtime.pki.certificate(int(other, 16)).status is CertificateStatus.VALID
    _problem(
        ca.client.post("/v1/devices/nobody/revocation", json={}, headers=ca.headers()),
        404,
        "device-not-found",
    )


# --- roles -----------------------------------------------------------------------------------


def test_read_only_may_read_but_not_issue_or_revoke(ca: Api) -> None:
    device_id = ca.register()["id"]
    serial = issued(ca, device_id)["serial"]
    size = ca.log_size()
    refused = ca.client.post(
        f"/v1/devices/{device_id}/certificates",
        content=csr(),
        headers=ca.headers(Role.READ_ONLY, **{"Content-Type": PEM_FILE}),
    )
    _problem(refused, 403, "forbidden")
    for role in (Role.READ_ONLY, Role.AUDITOR):
        revoke = ca.client.post(
            f"/v1/certificates/{serial}/revocation",
            json={"reason": "keyCompromise"},
            headers=ca.headers(role),
        )
        _problem(revoke, 403, "forbidden")
    assert len(ca.runtime.pki.certificates()) == 1
    assert ca.runtime.pki.certificate(int(serial, 16)).status is CertificateStatus.VALID
    assert ca.log_size() == size
    assert ca.client.get(f"/v1/certificates/{serial}", headers=ca.headers(Role.READ_ONLY)).status_code == 200


def test_operator_may_not_initialize_or_rotate_the_ca(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse battery staple")
    for path in ("/v1/ca", "/v1/ca/rotate"):
        response = api.client.post(path, json={}, headers=api.headers(Role.OPERATOR))
        problem = _problem(response, 403, "forbidden")
        assert "ca:admin" in problem["detail"]
    assert api.runtime.pki.authorities() == []
