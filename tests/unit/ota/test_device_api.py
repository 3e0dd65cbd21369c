"""OtaDeviceRoutes on a real installation: only a valid operational certificate of this installation
is let in (no chain, an unknown, forged, revoked, expired or not-yet-valid one: 403 problem), a
device reads only its own director metadata, paths that try to leave the repositories are refused,
and a device with a valid certificate checks in, reports and fetches its files."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetguard.enroll.est import EstResponse
from fleetguard.enroll.est_server import FileResponse
from fleetguard.ota.device_api import OtaDeviceRoutes
from fleetguard.ota.rollout import CampaignAction
from fleetguard.ota.wire import CheckIn, StepReport
from fleetguard.pki.revocation import RevocationReason
from fleetguard.types import utc_now

from .conftest import HW, Clock, Ota, needs_mksquashfs, policy

pytestmark = needs_mksquashfs

Chain = tuple[x509.Certificate, ...]


@dataclass
class Api:
    ota: Ota
    routes: OtaDeviceRoutes
    clock: Clock
    cam0: Chain
    cam1: Chain

    def post(self, path: str, body: bytes, chain: Chain) -> EstResponse | FileResponse:
        return self.routes.handle("POST", path, body, chain)

    def get(self, path: str, chain: Chain) -> EstResponse | FileResponse:
        return self.routes.handle("GET", path, b"", chain)


def _csr(device_id: str) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    )
    return builder.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()).public_bytes(
        serialization.Encoding.PEM
    )


def _chain(ota: Ota, device_id: str) -> Chain:
    record = ota.runtime.pki.issue_device(device_id, _csr(device_id), actor="enrollment")
    return (x509.load_der_x509_certificate(record.der),)


@pytest.fixture
def api(ota: Ota, monkeypatch: pytest.MonkeyPatch) -> Api:
    monkeypatch.setenv("FLEETGUARD_CA_PASSPHRASE", "correct horse battery staple")
    ota.runtime.pki.initialize(actor="ops", now=utc_now())
    ota.publish(ota.images.v1, "1.0", 1)
    ota.publish(ota.images.v2, "2.0", 2)
    for device_id in ("cam-0", "cam-1"):
        ota.register(device_id)
    chains = _chain(ota, "cam-0"), _chain(ota, "cam-1")
    # The desk's clock starts after the certificates were issued: a clock taken before them could be
    # a second behind their notBefore, and the certificates not valid yet.
    clock = Clock(utc_now())
    routes = OtaDeviceRoutes(ota.repositories, ota.campaigns, ota.runtime.pki, clock=clock)
    return Api(ota, routes, clock, *chains)


def _problem(response: EstResponse | FileResponse) -> tuple[int, str, str]:
    assert isinstance(response, EstResponse)
    assert response.content_type == "application/problem+json"
    body = json.loads(response.body)
    assert body["status"] == response.status
    assert body["type"] == f"https://fleetguard.dev/problems/{body['title']}"
    return response.status, body["title"], body["detail"]


CHECK_IN = CheckIn(HW, "1.0", 1, 0).to_bytes()


def _ok(response: EstResponse | FileResponse) -> bool:
    return isinstance(response, EstResponse) and (response.status, response.content_type) == (
        200, "application/json",
    )  # fmt: skip


# --- who may ask -----------------------------------------------------------------------------------


def test_a_request_without_a_client_certificate_is_forbidden(api: Api) -> None:
    assert _problem(api.post("/ota/v1/checkin", CHECK_IN, ())) == (
        403, "ota-device-forbidden", "OTA needs the device's client certificate",
    )  # fmt: skip
    assert api.ota.status("cam-0") is None


def _self_signed(serial: int) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cam-0")])
    now = utc_now()
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(serial).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip


FORBIDDEN = (
    403,
    "ota-device-forbidden",
    "the client certificate is not a valid operational certificate here",
)


def test_an_unknown_or_forged_certificate_is_forbidden(api: Api) -> None:
    unknown = _self_signed(x509.random_serial_number())
    forged = _self_signed(api.cam0[0].serial_number)  # the serial of cam-0's, another key and content

    assert _problem(api.post("/ota/v1/checkin", CHECK_IN, (unknown,))) == FORBIDDEN
    assert _problem(api.post("/ota/v1/checkin", CHECK_IN, (forged,))) == FORBIDDEN
    assert _problem(api.get("/ota/director/devices/cam-0/timestamp.json", (forged,))) == FORBIDDEN
    assert api.ota.status("cam-0") is None


def test_a_revoked_certificate_is_forbidden(api: Api) -> None:
    api.ota.runtime.pki.revoke(api.cam0[0].serial_number, RevocationReason.KEY_COMPROMISE, actor="ops")

    assert _problem(api.post("/ota/v1/checkin", CHECK_IN, api.cam0)) == FORBIDDEN
    assert api.ota.status("cam-0") is None
    assert _ok(api.post("/ota/v1/checkin", CHECK_IN, api.cam1))


def test_an_expired_or_not_yet_valid_certificate_is_forbidden(api: Api) -> None:
    certificate = api.cam0[0]
    api.clock.now = certificate.not_valid_after_utc
    assert _problem(api.post("/ota/v1/checkin", CHECK_IN, api.cam0)) == FORBIDDEN

    api.clock.now = certificate.not_valid_before_utc - dt.timedelta(seconds=1)
    assert _problem(api.post("/ota/v1/checkin", CHECK_IN, api.cam0)) == FORBIDDEN

    api.clock.now = certificate.not_valid_after_utc - dt.timedelta(seconds=1)
    assert _ok(api.post("/ota/v1/checkin", CHECK_IN, api.cam0))


# --- check-in and reports --------------------------------------------------------------------------


def test_a_device_with_a_valid_certificate_checks_in_reports_and_reads_its_metadata(api: Api) -> None:
    ota = api.ota
    ota.campaigns.create(hardware_id=HW, release="2.0", policy=policy(waves=[("all", 1_000_000)]),
                         actor="alice", campaign_id="c1")  # fmt: skip
    ota.campaigns.approve("c1", [ota.keys.hw], actor="bob")
    ota.campaigns.act("c1", CampaignAction.START, actor="bob")

    reply = api.post("/ota/v1/checkin?x=1", CHECK_IN, api.cam0)

    assert reply == EstResponse(200, "application/json", b'{"director_version":1,"update":true}')
    assert ota.status("cam-0") is not None
    timestamp = api.get("/ota/director/devices/cam-0/timestamp.json", api.cam0)
    director = ota.repositories.director.devices_dir / "cam-0"
    assert timestamp == FileResponse(
        "application/json", director / "timestamp.json", (director / "timestamp.json").stat().st_size
    )
    root = api.get("/ota/director/devices/cam-0/1.root.json", api.cam0)
    assert isinstance(root, FileResponse)
    assert root.path == ota.repositories.director.repository.metadata_dir / "1.root.json"

    report = StepReport("c1", "2.0", "downloading", "", ota.clock.now).to_bytes()
    assert api.post("/ota/v1/report", report, api.cam0) == EstResponse(204, "application/json", b"")
    assert [p.step for p in ota.campaigns.devices("c1") if p.device_id == "cam-0"] == ["downloading"]

    backwards = StepReport("c1", "2.0", "offered", "", ota.clock.now).to_bytes()
    status, code, detail = _problem(api.post("/ota/v1/report", backwards, api.cam0))
    assert (status, code) == (422, "ota-report-invalid")
    assert "step offered is set by the server" in detail
    assert [p.step for p in ota.campaigns.devices("c1") if p.device_id == "cam-0"] == ["downloading"]


def test_a_malformed_check_in_is_a_422_problem(api: Api) -> None:
    assert _problem(api.post("/ota/v1/checkin", b"{}", api.cam0))[:2] == (422, "ota-report-invalid")
    assert api.ota.status("cam-0") is None


def test_another_devices_director_metadata_is_forbidden(api: Api) -> None:
    api.ota.repositories.director.assign("cam-1", [])

    assert _problem(api.get("/ota/director/devices/cam-1/timestamp.json", api.cam0)) == (
        403, "ota-device-forbidden", "a device reads only its own director metadata",
    )  # fmt: skip
    assert isinstance(api.get("/ota/director/devices/cam-1/timestamp.json", api.cam1), FileResponse)


# --- static files ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/ota/image/targets/../../../installation.json", 422, "ota-metadata-invalid"),
        ("/ota/image/targets/cam-x/../../keys/image-snapshot.pem", 422, "ota-metadata-invalid"),
        ("/ota/image/targets//etc/passwd", 422, "ota-metadata-invalid"),
        ("/ota/image/targets/cam-x/%2e%2e/x", 422, "ota-metadata-invalid"),
        ("/ota/image/targets/cam-x/2.0/nothing-here.sqfs", 404, "not-found"),
        ("/ota/image/metadata/../../keys/image-timestamp.pem", 422, "ota-metadata-invalid"),
        ("/ota/image/metadata/1.hw-cam-x.json/../x", 422, "ota-metadata-invalid"),
        ("/ota/image/metadata/99.targets.json", 404, "not-found"),
        ("/ota/director/devices/cam-0/../cam-1/timestamp.json", 422, "ota-metadata-invalid"),
        ("/ota/director/devices/cam-0/../../keys/director-targets.pem", 422, "ota-metadata-invalid"),
        ("/ota/director/devices/cam-0/7.targets.json", 404, "not-found"),
        ("/ota/elsewhere", 404, "not-found"),
    ],
)
def test_paths_that_leave_the_repositories_or_do_not_exist_are_problems(
    api: Api, path: str, status: int, code: str
) -> None:
    assert _problem(api.get(path, api.cam0))[:2] == (status, code)


def test_image_metadata_and_targets_are_served_as_files(api: Api) -> None:
    image = api.ota.repositories.image
    release = api.ota.releases.get(HW, "2.0")
    stored = image.targets_dir / HW / "2.0" / f"{release.sha256}.fw-2.sqfs"

    target = api.get(f"/ota/image/targets/{HW}/2.0/{release.sha256}.fw-2.sqfs", api.cam0)
    timestamp = api.get("/ota/image/metadata/timestamp.json", api.cam0)

    assert target == FileResponse("application/octet-stream", stored, release.length)
    assert timestamp == FileResponse(
        "application/json",
        image.metadata_dir / "timestamp.json",
        (image.metadata_dir / "timestamp.json").stat().st_size,
    )


def test_other_methods_are_not_allowed(api: Api) -> None:
    assert _problem(api.routes.handle("PUT", "/ota/v1/checkin", CHECK_IN, api.cam0)) == (
        405, "method-not-allowed", "PUT /ota/v1/checkin is not served",
    )  # fmt: skip
    assert _problem(api.routes.handle("GET", "/ota/v1/checkin", b"", api.cam0))[:2] == (404, "not-found")
