"""The device-facing OTA resources on the installation's mTLS endpoint (the EST server's port).

The TLS layer verified that the client holds the key of a certificate chaining to a trust anchor, and
nothing else (:mod:`fleetguard.enroll.est_server`). Here a request is accepted only from a device's
*operational* certificate issued by this installation: the leaf's serial must be recorded by the PKI
with the same SHA-256, valid now and not revoked, and it names the device. A factory certificate, an
expired or revoked one, gets 403 and nothing else. A certificate found valid is trusted for
:data:`_VERIFIED_FOR` (5 s) before the PKI is asked again: the check-in is the hot path of a fleet.

Resources (paths in :mod:`fleetguard.ota.wire`):

* ``POST /ota/v1/checkin`` and ``POST /ota/v1/report``: :class:`UpdateDesk` decides;
* ``GET /ota/director/devices/<id>/<file>``: the director's metadata for that device only (another
  device's assignment is not disclosed);
* ``GET /ota/image/metadata/<file>`` and ``GET /ota/image/targets/<path>``: the image repository, the
  same static files that ``fleetguard up`` serves without authentication on its HTTP port.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from fleetguard.enroll.est import EstResponse
from fleetguard.enroll.est_server import FileResponse
from fleetguard.errors import FleetguardError
from fleetguard.ota.errors import MetadataInvalid, OtaError
from fleetguard.ota.repositories import OtaRepositories
from fleetguard.ota.wire import (
    CHECKIN_PATH,
    DIRECTOR_PREFIX,
    IMAGE_METADATA_PREFIX,
    IMAGE_TARGETS_PREFIX,
    REPORT_PATH,
    CheckIn,
    CheckInReply,
    StepReport,
)
from fleetguard.pki.service import CertificateService, CertificateStatus

__all__ = ["DeviceForbidden", "OtaDeviceRoutes", "UpdateDesk"]

_VERIFIED_FOR = dt.timedelta(seconds=5)
"""How long a verified certificate is trusted without asking the PKI again: a revocation reaches the
device desk within this time (the broker and firewall enforce it at once, see ``fleetguard.trust``)."""
_VERIFIED_ENTRIES = 100_000
_JSON = "application/json"
_PROBLEM = "application/problem+json"
_TARGET_PATH = re.compile(r"[A-Za-z0-9._+-]{1,128}(/[A-Za-z0-9._+-]{1,128}){0,4}")
_METADATA_NAME = re.compile(r"timestamp\.json|root\.json|[1-9][0-9]{0,9}\.[A-Za-z0-9._-]{1,70}\.json")


class DeviceForbidden(OtaError):
    """The client certificate is not a valid operational certificate of a device of this installation."""

    status = 403
    code = "ota-device-forbidden"


class UpdateDesk(Protocol):
    """The decisions behind check-in and reports (``fleetguard.ota.campaigns.CampaignService``)."""

    def check_in(self, device_id: str, request: CheckIn) -> CheckInReply:
        """Record what the device runs; say whether its director metadata moved."""
        ...

    def report(self, device_id: str, report: StepReport) -> None:
        """Apply one step report; raise ``ReportInvalid`` (nothing changed) when it is nonsense."""
        ...


class OtaDeviceRoutes:
    """Routes ``/ota/…`` on the mTLS endpoint (``fleetguard.enroll.est_server.DeviceRoutes``)."""

    prefix = "/ota/"

    def __init__(
        self,
        repositories: OtaRepositories,
        desk: UpdateDesk,
        pki: CertificateService,
        *,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self._repositories = repositories
        self._desk = desk
        self._pki = pki
        self._clock = clock
        self._verified: dict[tuple[int, bytes], tuple[str, dt.datetime]] = {}

    def handle(
        self, method: str, path: str, body: bytes, client_chain: tuple[x509.Certificate, ...]
    ) -> EstResponse | FileResponse:
        """Answer one request (see the module docstring); errors become problem documents."""
        try:
            device_id = self._device(client_chain)
            path = path.split("?", 1)[0]
            if method == "POST" and path == CHECKIN_PATH:
                reply = self._desk.check_in(device_id, CheckIn.parse(body))
                return EstResponse(200, _JSON, reply.to_bytes())
            if method == "POST" and path == REPORT_PATH:
                self._desk.report(device_id, StepReport.parse(body))
                return EstResponse(204, _JSON, b"")
            if method == "GET":
                return self._static(device_id, path)
            return _problem(405, "method-not-allowed", f"{method} {path[:80]} is not served")
        except FleetguardError as error:
            return _problem(error.status, error.code, error.message)

    def _device(self, chain: tuple[x509.Certificate, ...]) -> str:
        if not chain:
            raise DeviceForbidden("OTA needs the device's client certificate")
        leaf = chain[0]
        now = self._clock()
        key = (leaf.serial_number, leaf.fingerprint(hashes.SHA256()))
        cached = self._verified.get(key)
        if cached is not None and now < cached[1]:
            return cached[0]
        record = self._pki.find_certificate(leaf.serial_number)
        if (
            record is None
            or record.device_id is None
            or record.sha256 != key[1]
            or record.status is not CertificateStatus.VALID
            or not record.not_before <= now < record.not_after
        ):
            self._verified.pop(key, None)
            raise DeviceForbidden("the client certificate is not a valid operational certificate here")
        if len(self._verified) >= _VERIFIED_ENTRIES:
            self._verified.clear()
        self._verified[key] = (record.device_id, min(now + _VERIFIED_FOR, record.not_after))
        return record.device_id

    def _static(self, device_id: str, path: str) -> EstResponse | FileResponse:
        self._repositories.require_initialized()
        if path.startswith(DIRECTOR_PREFIX):
            owner, _, name = path.removeprefix(DIRECTOR_PREFIX).partition("/")
            if owner != device_id:
                raise DeviceForbidden("a device reads only its own director metadata")
            return _file(self._repositories.director.device_file(device_id, name), _JSON)
        if path.startswith(IMAGE_METADATA_PREFIX):
            name = path.removeprefix(IMAGE_METADATA_PREFIX)
            if not _METADATA_NAME.fullmatch(name):
                raise MetadataInvalid(f"{name[:80]!r} is not a metadata file name")
            return _file(self._repositories.image.metadata_dir / name, _JSON)
        if path.startswith(IMAGE_TARGETS_PREFIX):
            name = path.removeprefix(IMAGE_TARGETS_PREFIX)
            if not _TARGET_PATH.fullmatch(name) or ".." in name.split("/"):
                raise MetadataInvalid(f"{name[:80]!r} is not a target file path")
            return _file(self._repositories.image.targets_dir / name, "application/octet-stream")
        return _problem(404, "not-found", f"{path[:80]} is not an OTA resource")


def _file(path: Path, content_type: str) -> EstResponse | FileResponse:
    try:
        size = os.stat(path).st_size
    except OSError:
        return _problem(404, "not-found", f"{path.name[:80]} does not exist")
    return FileResponse(content_type, path, size)


def _problem(status: int, code: str, detail: str) -> EstResponse:
    body = json.dumps({
        "type": f"https://fleetguard.dev/problems/{code}", "title": code, "status": status, "detail": detail,
    }).encode()  # fmt: skip
    return EstResponse(status, _PROBLEM, body)
