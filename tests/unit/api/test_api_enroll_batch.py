"""Manufacturing batches over HTTP: ``POST /v1/enroll/batches`` (CSR mode, PEM or JSON body),
``GET /v1/enroll/batches`` and ``GET /v1/enroll/batches/{id}``.

The answer's manifest verifies with the key ``GET /v1/events/public-key`` serves; a refused batch is a
problem naming the CSR (``index``) and leaves no device, certificate or batch behind; the body is
bounded; writing needs ``enroll:admin`` and reading ``enroll:read``.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetguard.api.tokens import Role
from fleetguard.enroll import parse_manifest, verify_manifest
from fleetguard.events.checkpoint import load_public_key
from fleetguard.types import utc_now

if TYPE_CHECKING:
    from conftest import Api, ApiFactory

PEM = serialization.Encoding.PEM
PATH = "/v1/enroll/batches"


def _csr(common_name: str) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .sign(key, hashes.SHA256())
        .public_bytes(PEM)
    )


def _ready(api: Api, monkeypatch: pytest.MonkeyPatch) -> Api:
    monkeypatch.setenv("FLEETGUARD_CA_PASSPHRASE", "correct horse battery staple")
    api.runtime.pki.initialize(actor="test", now=utc_now())
    api.runtime.inventory.add_device_type("cam-x", actor="test", manufacturer="Acme", model="Cam X")
    return api


@pytest.fixture
def ready(api: Api, monkeypatch: pytest.MonkeyPatch) -> Api:
    """An installation with a CA and the device type cam-x."""
    return _ready(api, monkeypatch)


def _post(
    api: Api,
    body: bytes,
    *,
    count: int,
    model: str = "cam-x",
    role: Role = Role.OPERATOR,
    content_type: str = "application/x-pem-file",
) -> Any:
    return api.client.post(
        PATH,
        params={"model": model, "count": count},
        content=body,
        headers=api.headers(role, **{"Content-Type": content_type}),
    )


def _nothing_recorded(api: Api) -> None:
    assert api.runtime.inventory.count() == 0
    assert api.runtime.pki.certificates(limit=10) == []
    assert api.runtime.batches.batches() == []


def test_a_pem_batch_is_made_and_its_manifest_verifies_with_the_served_key(ready: Api) -> None:
    body = b"".join(_csr(f"cam-{n}") for n in (1, 2, 3))
    response = _post(ready, body, count=3)
    assert response.status_code == 201, response.text
    created = response.json()
    assert response.headers["Location"] == f"{PATH}/{created['id']}"
    assert (created["model"], created["mode"], created["count"], created["issuer_id"]) == (
        "cam-x",
        "csr",
        3,
        "issuing-1",
    )
    assert created["actor"].startswith("token:")
    assert [c["device_id"] for c in created["certificates"]] == ["cam-1", "cam-2", "cam-3"]
    manifest = created["manifest"].encode("ascii")
    signature = base64.b64decode(created["signature"])
    served = ready.client.get("/v1/events/public-key", headers=ready.headers(Role.OPERATOR))
    verify_manifest(manifest, signature, load_public_key(served.content))
    parsed = parse_manifest(manifest)
    for entry, certificate in zip(parsed.devices, created["certificates"], strict=True):
        leaf = x509.load_pem_x509_certificate(certificate["pem"].encode())
        assert (entry.device_id, f"{entry.serial:x}", entry.sha256.hex()) == (
            certificate["device_id"], certificate["serial"], certificate["sha256"],
        )  # fmt: skip
        assert leaf.fingerprint(hashes.SHA256()).hex() == certificate["sha256"]
    chain = x509.load_pem_x509_certificates(created["chain_pem"].encode())
    assert chain == list(ready.runtime.pki.authority().chain())
    record = ready.client.get("/v1/devices/cam-2", headers=ready.headers(Role.READ_ONLY)).json()
    assert (record["state"], record["labels"]) == ("provisioned", {"fleetguard.batch": created["id"]})


def test_a_json_array_of_pem_csrs_is_accepted(ready: Api) -> None:
    body = json.dumps([_csr("cam-1").decode(), _csr("cam-2").decode()]).encode()
    response = _post(ready, body, count=2, content_type="application/json")
    assert response.status_code == 201, response.text
    assert [c["device_id"] for c in response.json()["certificates"]] == ["cam-1", "cam-2"]


def test_batches_are_listed_and_shown_with_the_manifest_as_signed(ready: Api) -> None:
    created = _post(ready, _csr("cam-1"), count=1).json()
    listed = ready.client.get(PATH, headers=ready.headers(Role.READ_ONLY))
    assert listed.status_code == 200
    assert listed.json() == [{k: created[k] for k in ("id", "model", "mode", "count", "issuer_id", "actor",
                                                         "created_at", "manifest_sha256")}]  # fmt: skip
    shown = ready.client.get(f"{PATH}/{created['id']}", headers=ready.headers(Role.AUDITOR))
    assert shown.status_code == 200
    assert (shown.json()["manifest"], shown.json()["signature"]) == (
        created["manifest"],
        created["signature"],
    )
    missing = ready.client.get(f"{PATH}/nope", headers=ready.headers(Role.AUDITOR))
    assert missing.status_code == 404
    assert missing.json()["detail"] == "no batch 'nope'"


# --- refusals --------------------------------------------------------------------------------------------


def test_a_malformed_csr_is_a_422_naming_its_index_and_records_nothing(ready: Api) -> None:
    before = ready.log_size()
    body = _csr("cam-1") + b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    response = _post(ready, body, count=2)
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"].endswith("/enroll-batch-rejected")
    assert problem["index"] == 2
    assert problem["detail"].startswith("batch rejected: CSR 2: malformed")
    _nothing_recorded(ready)
    assert ready.log_size() == before


@pytest.mark.parametrize(
    ("count", "model", "detail"),
    [
        (2, "cam-x", "batch rejected: 1 CSRs were given for a batch of 2; nothing was recorded"),
        (1, "nope", "batch rejected: no device type 'nope'; nothing was recorded"),
    ],
)
def test_a_count_mismatch_or_unknown_model_is_a_422(ready: Api, count: int, model: str, detail: str) -> None:
    response = _post(ready, _csr("cam-1"), count=count, model=model)
    assert response.status_code == 422
    assert response.json()["detail"] == detail
    assert response.json()["index"] is None
    _nothing_recorded(ready)


def test_a_registered_device_is_refused(ready: Api) -> None:
    ready.register(id="cam-1")
    response = _post(ready, _csr("cam-1"), count=1)
    assert response.status_code == 422
    assert (
        response.json()["detail"]
        == "batch rejected: CSR 1: device 'cam-1' is registered already; nothing was recorded"
    )


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"[1, 2]", "application/json", 422),
        (b"[", "application/json", 400),
        (b"anything", "text/plain", 415),
    ],
)
def test_bodies_of_the_wrong_form_are_refused(
    ready: Api, body: bytes, content_type: str, status: int
) -> None:
    response = _post(ready, body, count=2, content_type=content_type)
    assert response.status_code == status, response.text
    _nothing_recorded(ready)


def test_the_body_is_bounded(make_api: ApiFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    api = _ready(make_api(max_import_bytes=2048), monkeypatch)
    response = _post(api, b"".join(_csr(f"cam-{n}") for n in range(8)), count=8)
    assert response.status_code == 413
    _nothing_recorded(api)


def test_count_is_bounded_by_the_schema(ready: Api) -> None:
    response = _post(ready, _csr("cam-1"), count=100_001)
    assert response.status_code == 422


@pytest.mark.parametrize("role", [Role.READ_ONLY, Role.AUDITOR])
def test_readers_cannot_make_batches(ready: Api, role: Role) -> None:
    response = _post(ready, _csr("cam-1"), count=1, role=role)
    assert response.status_code == 403
    _nothing_recorded(ready)


def test_the_openapi_document_describes_both_bodies_and_the_permission(ready: Api) -> None:
    document = ready.client.get("/openapi.json").json()
    operation = document["paths"][PATH]["post"]
    assert set(operation["requestBody"]["content"]) == {"application/x-pem-file", "application/json"}
    assert operation["x-fleetguard-permission"] == "enroll:admin"
    assert "CLI-only" in operation["description"]
    assert document["paths"][f"{PATH}/{{batch_id}}"]["get"]["x-fleetguard-permission"] == "enroll:read"
