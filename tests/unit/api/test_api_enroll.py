"""The operator's enrollment controls over HTTP: manufacturer CAs, zero-touch rules, one-time tokens
(the secret shown once), and the approval queue (approve issues, reject records the reason).

Manufacturers are made here with ``cryptography``: a self-signed root that signs factory
certificates naming the serial and (in OU) the model. Requests are queued by calling the enrollment
service directly, as the EST edge would.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetguard.api.tokens import Role
from fleetguard.enroll import EnrollmentRequest, Pending, RequestStatus, RuleMode
from fleetguard.types import utc_now

if TYPE_CHECKING:
    from conftest import Api

PASSPHRASE_ENV = "FLEETGUARD_CA_PASSPHRASE"
PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER


# --- a manufacturer, made with cryptography ----------------------------------------------------


def _root(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = utc_now()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name} IDevID Root"),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def _idevid(
    root: x509.Certificate, root_key: ec.EllipticCurvePrivateKey, serial: str, model: str
) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, model),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, serial),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(root.subject)
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(root.not_valid_before_utc)
        .not_valid_after(dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC))  # IEEE 802.1AR 8.5
        .sign(root_key, hashes.SHA256())
    )


def _csr() -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anything")])
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .sign(key, hashes.SHA256())
        .public_bytes(DER)
    )


@pytest.fixture
def ca_api(api: Api, monkeypatch: pytest.MonkeyPatch) -> Api:
    """The installation with a CA."""
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse battery staple")
    api.runtime.pki.initialize(actor="test", now=utc_now())
    return api


def _add_manufacturer(api: Api, pem: bytes) -> list[dict[str, object]]:
    response = api.client.post(
        "/v1/enroll/manufacturers",
        json={"manufacturer": "Acme", "pem": pem.decode()},
        headers=api.headers(Role.OPERATOR),
    )
    assert response.status_code == 201, response.text
    added: list[dict[str, object]] = response.json()
    return added


def _queue_request(api: Api, serial: str = "ACME-7") -> str:
    """Trust Acme, make its Cam-X wait for approval, and queue one device's request; return its id."""
    root, root_key = _root("Acme")
    _add_manufacturer(api, root.public_bytes(PEM))
    api.runtime.enroll.set_rule("Acme", "Cam-X", RuleMode.APPROVE, actor="test")
    request = EnrollmentRequest(
        csr=_csr(),
        client_chain=(_idevid(root, root_key, serial, "Cam-X"),),
        token=None,
        claimed_device_id=None,
        source="192.0.2.10",
    )
    outcome = api.runtime.enroll.enroll(request, now=utc_now())
    assert isinstance(outcome, Pending), outcome
    return outcome.request_id


# --- roles -------------------------------------------------------------------------------------


def test_read_only_cannot_create_tokens_or_approve(ca_api: Api) -> None:
    device = ca_api.register()
    request_id = _queue_request(ca_api)
    headers = ca_api.headers(Role.READ_ONLY)
    created = ca_api.client.post(
        "/v1/enroll/tokens", json={"device_id": device["id"], "ttl_hours": 1}, headers=headers
    )
    approved = ca_api.client.post(f"/v1/enroll/requests/{request_id}/approval", headers=headers)
    assert (created.status_code, approved.status_code) == (403, 403)
    assert ca_api.runtime.enroll.tokens() == []
    assert ca_api.runtime.enroll.request(request_id).status is RequestStatus.PENDING


@pytest.mark.parametrize("path", ["/v1/enroll/manufacturers", "/v1/enroll/rules", "/v1/enroll/tokens"])
def test_auditor_can_list(api: Api, path: str) -> None:
    response = api.client.get(path, headers=api.headers(Role.AUDITOR))
    assert response.status_code == 200, response.text
    assert response.json() == []


def test_auditor_cannot_set_rules(api: Api) -> None:
    response = api.client.put(
        "/v1/enroll/rules/Acme/Cam-X", json={"mode": "auto"}, headers=api.headers(Role.AUDITOR)
    )
    assert response.status_code == 403
    assert api.runtime.enroll.rules() == []


# --- tokens ------------------------------------------------------------------------------------


def test_created_token_is_shown_once_and_never_listed(api: Api) -> None:
    device = api.register()
    response = api.client.post(
        "/v1/enroll/tokens",
        json={"device_id": device["id"], "ttl_hours": 2},
        headers=api.headers(Role.OPERATOR),
    )
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    created = response.json()
    text = created["token"]
    assert text.startswith(f"fge_{created['id']}_")
    assert created["status"] == "active"
    assert created["device_id"] == device["id"]

    listed = api.client.get(f"/v1/enroll/tokens?device_id={device['id']}", headers=api.headers(Role.AUDITOR))
    assert listed.status_code == 200
    assert [token["id"] for token in listed.json()] == [created["id"]]
    assert "token" not in listed.json()[0]
    assert text.split("_")[-1] not in listed.text


def test_token_for_unknown_device_is_404_and_out_of_range_ttl_is_422(api: Api) -> None:
    unknown = api.client.post(
        "/v1/enroll/tokens", json={"device_id": "no-such-device", "ttl_hours": 1}, headers=api.headers()
    )
    device = api.register()
    too_long = api.client.post(
        "/v1/enroll/tokens", json={"device_id": device["id"], "ttl_hours": 10_000}, headers=api.headers()
    )
    assert (unknown.status_code, too_long.status_code) == (404, 422)
    assert api.runtime.enroll.tokens() == []


def test_revoked_token_is_listed_revoked(api: Api) -> None:
    device = api.register()
    created = api.client.post(
        "/v1/enroll/tokens", json={"device_id": device["id"], "ttl_hours": 1}, headers=api.headers()
    ).json()
    revoked = api.client.delete(f"/v1/enroll/tokens/{created['id']}", headers=api.headers(Role.OPERATOR))
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["status"] == "revoked"
    assert "token" not in revoked.json()


# --- manufacturer CAs --------------------------------------------------------------------------


def test_manufacturer_ca_is_added_listed_and_removed(api: Api) -> None:
    root, _ = _root("Acme")
    added = _add_manufacturer(api, root.public_bytes(PEM))
    assert [(ca["manufacturer"], ca["model_attribute"]) for ca in added] == [("Acme", "ou")]
    listed = api.client.get("/v1/enroll/manufacturers", headers=api.headers(Role.READ_ONLY)).json()
    assert [ca["id"] for ca in listed] == [added[0]["id"]]
    removed = api.client.delete(f"/v1/enroll/manufacturers/{added[0]['id']}", headers=api.headers())
    assert removed.status_code == 200
    assert api.runtime.enroll.manufacturer_cas() == []


def test_garbage_pem_is_422_and_adds_nothing(api: Api) -> None:
    size = api.log_size()
    response = api.client.post(
        "/v1/enroll/manufacturers",
        json={
            "manufacturer": "Acme",
            "pem": "-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n",
        },
        headers=api.headers(),
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "https://fleetguard.dev/problems/enroll-input-rejected"
    assert api.runtime.enroll.manufacturer_cas() == []
    assert api.log_size() == size


def test_unknown_manufacturer_ca_is_404(api: Api) -> None:
    response = api.client.delete("/v1/enroll/manufacturers/no-such-ca", headers=api.headers())
    assert response.status_code == 404


# --- rules -------------------------------------------------------------------------------------


def test_rule_is_upserted_and_deleted(api: Api) -> None:
    path = "/v1/enroll/rules/Acme/Cam-X"
    first = api.client.put(path, json={"mode": "approve"}, headers=api.headers(Role.OPERATOR))
    second = api.client.put(path, json={"mode": "auto", "register_unknown": True}, headers=api.headers())
    assert (first.status_code, second.status_code) == (200, 200)
    listed = api.client.get("/v1/enroll/rules", headers=api.headers(Role.AUDITOR)).json()
    assert [(r["manufacturer"], r["model"], r["mode"], r["register_unknown"]) for r in listed] == [
        ("Acme", "Cam-X", "auto", True)
    ]
    deleted = api.client.delete(path, headers=api.headers())
    assert deleted.status_code == 200
    assert deleted.json()["mode"] == "auto"
    assert api.runtime.enroll.rules() == []
    assert api.client.delete(path, headers=api.headers()).status_code == 404


def test_rule_with_unknown_mode_is_422(api: Api) -> None:
    response = api.client.put("/v1/enroll/rules/Acme/Cam-X", json={"mode": "yolo"}, headers=api.headers())
    assert response.status_code == 422
    assert api.runtime.enroll.rules() == []


# --- the approval queue ------------------------------------------------------------------------


def test_unknown_request_is_404(api: Api) -> None:
    for method, path in [
        ("GET", "/v1/enroll/requests/no-such-request"),
        ("POST", "/v1/enroll/requests/no-such-request/approval"),
    ]:
        response = api.client.request(method, path, headers=api.headers())
        assert response.status_code == 404, (method, response.text)
        assert response.json()["type"] == "https://fleetguard.dev/problems/enroll-not-found"


def test_approval_issues_the_certificate(ca_api: Api) -> None:
    request_id = _queue_request(ca_api)
    pending = ca_api.client.get("/v1/enroll/requests?status=pending", headers=ca_api.headers(Role.AUDITOR))
    assert [r["id"] for r in pending.json()] == [request_id]
    assert pending.json()[0]["device_serial"] == "ACME-7"

    response = ca_api.client.post(
        f"/v1/enroll/requests/{request_id}/approval", headers=ca_api.headers(Role.OPERATOR)
    )
    assert response.status_code == 201, response.text
    certificate = response.json()
    assert response.headers["location"] == f"/v1/certificates/{certificate['serial']}"
    assert certificate["status"] == "valid"
    assert certificate["pem"].startswith("-----BEGIN CERTIFICATE-----")

    decided = ca_api.client.get(f"/v1/enroll/requests/{request_id}", headers=ca_api.headers(Role.READ_ONLY))
    assert decided.json()["status"] == "approved"
    assert decided.json()["certificate_serial"] == certificate["serial"]
    assert decided.json()["device_id"] == certificate["device_id"]
    recorded = ca_api.runtime.pki.certificate(int(certificate["serial"], 16))
    assert recorded.device_id == certificate["device_id"]

    again = ca_api.client.post(f"/v1/enroll/requests/{request_id}/approval", headers=ca_api.headers())
    assert again.status_code == 409


def test_rejection_records_the_reason(ca_api: Api) -> None:
    request_id = _queue_request(ca_api)
    response = ca_api.client.post(
        f"/v1/enroll/requests/{request_id}/rejection",
        json={"reason": "not one of ours"},
        headers=ca_api.headers(Role.OPERATOR),
    )
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["reason"]) == ("rejected", "not one of ours")
    rejected = ca_api.runtime.enroll.request(request_id)
    assert (rejected.status, rejected.reason) == (RequestStatus.REJECTED, "not one of ours")
    assert ca_api.client.get("/v1/enroll/requests", headers=ca_api.headers()).json() == []
    listed = ca_api.client.get("/v1/enroll/requests?status=rejected", headers=ca_api.headers()).json()
    assert [r["id"] for r in listed] == [request_id]


def test_rejection_without_reason_is_422(ca_api: Api) -> None:
    request_id = _queue_request(ca_api)
    response = ca_api.client.post(
        f"/v1/enroll/requests/{request_id}/rejection", json={"reason": ""}, headers=ca_api.headers()
    )
    assert response.status_code == 422
    assert ca_api.runtime.enroll.request(request_id).status is RequestStatus.PENDING


def test_page_size_over_the_maximum_is_422(api: Api) -> None:
    response = api.client.get("/v1/enroll/requests?limit=100000", headers=api.headers())
    assert response.status_code == 422
