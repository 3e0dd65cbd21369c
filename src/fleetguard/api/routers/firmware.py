"""Firmware analysis: upload and scan images, their reports, the fleet's exposure, and the release gate.

``POST /v1/firmware/scans`` takes the image as the raw body (``application/octet-stream``), streamed
to a private temporary file and bounded by ``FLEETGUARD_MAX_FIRMWARE_BYTES`` (413 beyond it, nothing
kept); the scan runs offline and is stored. Reports come from a stored scan: CycloneDX 1.6, SARIF
2.1.0, HTML. ``/v1/firmware/exposed`` answers "which devices run firmware with a known-exploited
vulnerability". The gate (``/v1/firmware/gate/...``) is what OTA asks before publishing a release;
every decision and waiver is in the event log.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from fleetguard.api import schemas_firmware as views
from fleetguard.api.auth import actor_of, require
from fleetguard.api.context import RuntimeDep
from fleetguard.api.errors import BodyTooLarge, UnsupportedMediaType
from fleetguard.api.problems import problem_responses
from fleetguard.api.tokens import Permission, TokenInfo
from fleetguard.firmware.report_html import render_html
from fleetguard.firmware.sarif import sarif
from fleetguard.firmware.sbom import cyclonedx

__all__ = ["SCANS_PATH", "router"]

SCANS_PATH = "/v1/firmware/scans"
_OCTETS = "application/octet-stream"

router = APIRouter(tags=["firmware"], responses=problem_responses(401, 403, 422, 503))

_Reader = Annotated[TokenInfo, Depends(require(Permission.FIRMWARE_READ))]
_Writer = Annotated[TokenInfo, Depends(require(Permission.FIRMWARE_WRITE))]
_ScanId = Annotated[str, Path(min_length=1, max_length=36, description="The scan id.")]
_Sha = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="The image's SHA-256, lower-case hex.")]


@router.post(
    SCANS_PATH,
    summary="Upload and scan a firmware image",
    status_code=201,
    responses=problem_responses(413, 415),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {_OCTETS: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def scan_image(  # noqa: PLR0917 - FastAPI passes parameters by keyword
    request: Request,
    runtime: RuntimeDep,
    token: _Writer,
    name: Annotated[str, Query(min_length=1, max_length=256, description="The image's file name.")] = "image",
    version: Annotated[str | None, Query(max_length=128, description="Its firmware version.")] = None,
    device_type: Annotated[
        str | None, Query(alias="type", max_length=128, description="Its device type.")
    ] = None,
) -> views.ScanSummary:
    """Scan the uploaded image (extraction, analyzers, components, offline vulnerabilities) and store
    the result. An image from which nothing can be extracted is stored and reported as such."""
    if request.headers.get("content-type", "").split(";")[0].strip() != _OCTETS:
        raise UnsupportedMediaType(f"send the image as {_OCTETS}")
    limit = runtime.settings.max_firmware_bytes
    work = runtime.settings.data_dir / "firmware" / "uploads"
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle, name_on_disk = tempfile.mkstemp(dir=work, prefix="upload-")
    path = FilePath(name_on_disk)
    try:
        with os.fdopen(handle, "wb") as out:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(limit)
                out.write(chunk)
        stored = await run_in_threadpool(
            lambda: runtime.firmware.scan(
                path, actor=actor_of(token), name=name, firmware_version=version, device_type=device_type
            )
        )
    finally:
        path.unlink(missing_ok=True)
    return views.ScanSummary.of(stored)


@router.get(SCANS_PATH, summary="List firmware scans")
def list_scans(
    runtime: RuntimeDep,
    _token: _Reader,
    sha256: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$")] = None,
) -> list[views.ScanSummary]:
    """Stored scans, newest first (at most 100)."""
    return [views.ScanSummary.of(s) for s in runtime.firmware.scans(image_sha256=sha256)]


@router.get(f"{SCANS_PATH}/{{scan_id}}", summary="Get a firmware scan", responses=problem_responses(404))
def get_scan(scan_id: _ScanId, runtime: RuntimeDep, _token: _Reader) -> views.ScanView:
    """One scan with every finding, component and extraction layer."""
    return views.ScanView.of(runtime.firmware.get_scan(scan_id))


@router.get(
    f"{SCANS_PATH}/{{scan_id}}/sbom", summary="CycloneDX 1.6 SBOM of a scan", responses=problem_responses(404)
)
def get_sbom(scan_id: _ScanId, runtime: RuntimeDep, _token: _Reader) -> dict[str, object]:
    """The components with their evidence, and the vulnerabilities, as a CycloneDX 1.6 document."""
    return cyclonedx(runtime.firmware.get_scan(scan_id).result)


@router.get(
    f"{SCANS_PATH}/{{scan_id}}/sarif", summary="SARIF 2.1.0 of a scan", responses=problem_responses(404)
)
def get_sarif(scan_id: _ScanId, runtime: RuntimeDep, _token: _Reader) -> dict[str, object]:
    """Every finding as a SARIF 2.1.0 log."""
    return sarif(runtime.firmware.get_scan(scan_id).result)


@router.get(
    f"{SCANS_PATH}/{{scan_id}}/report",
    summary="HTML report of a scan",
    response_class=Response,
    responses={200: {"content": {"text/html": {}}}, **problem_responses(404)},
)
def get_report(scan_id: _ScanId, runtime: RuntimeDep, _token: _Reader) -> Response:
    """A self-contained, readable HTML report."""
    html = render_html(runtime.firmware.get_scan(scan_id).result)
    return Response(
        html,
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"},
    )


@router.get("/v1/firmware/exposed", summary="Devices running vulnerable firmware")
def exposed(
    runtime: RuntimeDep,
    _token: _Reader,
    any_vulnerability: Annotated[
        bool, Query(alias="any", description="Any vulnerability, not only CISA known-exploited ones.")
    ] = False,
) -> list[views.ExposureView]:
    """Devices whose firmware version's latest scan has known-exploited (or any) vulnerabilities."""
    return [
        views.ExposureView.of(e)
        for e in runtime.firmware.exposed_devices(known_exploited_only=not any_vulnerability)
    ]


@router.put("/v1/firmware/gate", summary="Set the release gate's threshold")
def set_gate(body: views.GateSettings, runtime: RuntimeDep, token: _Writer) -> views.GateSettings:
    """Findings at or above the threshold block a release unless waived."""
    runtime.firmware.set_gate_threshold(body.threshold, actor=actor_of(token))
    return views.GateSettings(threshold=runtime.firmware.gate_threshold())


@router.post("/v1/firmware/gate/{sha256}", summary="Check a release against the gate")
def check_gate(sha256: _Sha, runtime: RuntimeDep, token: _Writer) -> views.GateView:
    """Decide (and log) whether the image may be released; a refusal is a 200 with allowed=false."""
    return views.GateView.of(runtime.firmware.check_release(sha256, actor=actor_of(token)))


@router.post(
    "/v1/firmware/waivers",
    summary="Waive a finding for the gate",
    status_code=201,
    responses=problem_responses(404),
)
def waive(body: views.WaiverRequest, runtime: RuntimeDep, token: _Writer) -> views.WaiverView:
    """Waive one finding rule (at one path, or anywhere) for one image; the reason is logged."""
    waiver = runtime.firmware.waive(
        body.image_sha256,
        body.rule,
        reason=body.reason,
        actor=actor_of(token),
        path=body.path,
        expires_at=body.expires_at,
    )
    return views.WaiverView.of(waiver)
