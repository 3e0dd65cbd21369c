"""Signed OTA updates: releases, staged metadata, rollout campaigns and patch compliance; and the image
repository as static files.

Under ``/v1/ota`` (tokens with ``ota:read`` / ``ota:write``): what operators watch and steer. What
needs an offline private key stays on the command line, where the key is: initializing the
repositories, adding a hardware id, publishing a release, signing or discarding staged metadata, key
rotation, and approving a campaign (its scope is signed with the release keys). A campaign is
created here as a draft and, once approved, started, paused, resumed or aborted here.

Under ``/ota/image`` (no token, :data:`fleetguard.api.auth.PUBLIC_PATHS`): the image repository's
metadata and targets, which are signed and public, for devices and mirrors (any web server can serve
the same directory). The director's per-device metadata is not served here: a device fetches its
own, and only its own, on the mTLS endpoint (:mod:`fleetguard.ota.device_api`).
"""

from __future__ import annotations

import re
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import FileResponse

from fleetguard.api import schemas_ota as views
from fleetguard.api.auth import actor_of, require
from fleetguard.api.context import RuntimeDep
from fleetguard.api.problems import problem_responses
from fleetguard.api.tokens import Permission, TokenInfo
from fleetguard.errors import NotFound
from fleetguard.installation import Runtime
from fleetguard.ota.compliance import compliance_report
from fleetguard.ota.rollout import DeviceStep
from fleetguard.types import utc_now

__all__ = ["IMAGE_METADATA_PATH", "IMAGE_TARGETS_PATH", "public_router", "router"]

IMAGE_METADATA_PATH = "/ota/image/metadata/{name}"
IMAGE_TARGETS_PATH = "/ota/image/targets/{hardware_id}/{directory}/{name}"

_CLI_ONLY = (
    "Signing needs offline private keys, which never reach the server: initializing the repositories, "
    "adding hardware ids, publishing releases, signing or discarding staged metadata, key rotation and "
    "campaign approval are `fleetguard ota ...` commands."
)
# TUF spec 4.4 / 5.7.3: N.<role>.json, timestamp.json, root.json (bootstrap); role names as written.
_METADATA_NAME = re.compile(
    r"timestamp\.json|root\.json|[1-9][0-9]{0,9}\.[A-Za-z0-9][A-Za-z0-9._-]{0,69}\.json"
)
# Every target is <hardware id>/<release>/<file> or <hardware id>/deltas/<from>-<to>.delta
# (fleetguard.ota.releases), stored as <hardware id>/<dir>/<sha256>.<name> (TUF spec 5.7.3): three
# segments, so no path converter, and no segment may be empty, "." or ".." or start with a dot.
_TARGET_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")
_JSON = "application/json"
_OCTETS = "application/octet-stream"

router = APIRouter(tags=["ota"], responses=problem_responses(401, 403, 422, 503))
public_router = APIRouter(tags=["ota: public"], responses=problem_responses(404, 422))

_Reader = Annotated[TokenInfo, Depends(require(Permission.OTA_READ))]
_Writer = Annotated[TokenInfo, Depends(require(Permission.OTA_WRITE))]
_CampaignId = Annotated[str, Path(min_length=1, max_length=64, description="The campaign id.")]
_Hardware = Annotated[str | None, Query(max_length=61, description="Only this hardware id.")]


@router.get("/v1/ota/releases", summary="List releases")
def list_releases(
    runtime: RuntimeDep, _token: _Reader, hardware: _Hardware = None
) -> list[views.ReleaseView]:
    """Releases by hardware id, newest counter first; a `staged` one waits for release-key signatures
    and is not served."""
    return [views.ReleaseView.of(r) for r in runtime.releases.releases(hardware)]


@router.get(
    "/v1/ota/staged",
    summary="List metadata waiting for signatures",
    description="Role versions staged below their threshold, in the image repository and the director. "
    + _CLI_ONLY,
    responses=problem_responses(409),
)
def list_staged(runtime: RuntimeDep, _token: _Reader) -> list[views.StagedView]:
    """Role versions staged below their threshold (see the description)."""
    runtime.ota.require_initialized()
    image, director = runtime.ota.image, runtime.ota.director.repository
    return [views.StagedView.of("image", s) for s in image.staged()] + [
        views.StagedView.of("director", s) for s in director.staged()
    ]


@router.get("/v1/ota/campaigns", summary="List campaigns")
def list_campaigns(runtime: RuntimeDep, _token: _Reader) -> list[views.CampaignView]:
    """Every campaign, newest first, with its waves' counts."""
    return [views.CampaignView.of(c) for c in runtime.campaigns.campaigns()]


@router.post(
    "/v1/ota/campaigns",
    summary="Plan a campaign",
    status_code=201,
    responses=problem_responses(404, 409),
)
def create_campaign(body: views.CampaignCreate, runtime: RuntimeDep, token: _Writer) -> views.CampaignView:
    """Plan a campaign of a published release to the devices whose model is the hardware id and that
    match the target (devices already on the release are left out), cut into waves canary first. It is
    a `draft` until approved: `fleetguard ota campaign approve ID --key RELEASE-KEY` signs its scope."""
    campaign = runtime.campaigns.create(
        hardware_id=body.hardware,
        release=body.release,
        policy=body.policy(),
        target=body.target.target(body.release),
        actor=actor_of(token),
        campaign_id=body.id,
        not_before=body.not_before,
        not_after=body.not_after,
    )
    return views.CampaignView.of(campaign)


@router.get("/v1/ota/campaigns/{campaign_id}", summary="Get a campaign", responses=problem_responses(404))
def get_campaign(campaign_id: _CampaignId, runtime: RuntimeDep, _token: _Reader) -> views.CampaignView:
    """A campaign: state and why, signed scope and window, and each wave's counts."""
    return views.CampaignView.of(runtime.campaigns.get(campaign_id))


@router.get(
    "/v1/ota/campaigns/{campaign_id}/devices",
    summary="List a campaign's devices",
    responses=problem_responses(404),
)
def campaign_devices(
    campaign_id: _CampaignId,
    runtime: RuntimeDep,
    _token: _Reader,
    step: Annotated[DeviceStep | None, Query(description="Only devices in this step.")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000, description="At most this many.")] = 1000,
) -> list[views.DeviceProgressView]:
    """The campaign's devices in wave and bucket order, with their step, attempt and detail."""
    return [
        views.DeviceProgressView.of(p) for p in runtime.campaigns.devices(campaign_id, step=step, limit=limit)
    ]


@router.post(
    "/v1/ota/campaigns/{campaign_id}/{action}",
    summary="Start, pause, resume or abort a campaign",
    responses=problem_responses(404, 409),
)
def act_on_campaign(
    campaign_id: _CampaignId,
    action: Annotated[views.OperatorAction, Path(description="start, pause, resume or abort.")],
    runtime: RuntimeDep,
    token: _Writer,
    body: views.ReasonBody | None = None,
) -> views.CampaignView:
    """Apply an operator action; one the campaign's state does not allow is a 409 naming what it allows
    (start needs an approved campaign; approval is `fleetguard ota campaign approve`)."""
    reason = "" if body is None else body.reason
    campaign = runtime.campaigns.act(campaign_id, action.action, actor=actor_of(token), reason=reason)
    return views.CampaignView.of(campaign)


@router.get("/v1/ota/compliance", summary="Patch compliance")
def compliance(
    runtime: RuntimeDep,
    _token: _Reader,
    hardware: _Hardware = None,
    devices: Annotated[bool, Query(description="Also list the devices that are not current.")] = False,
) -> views.ComplianceView:
    """Devices current, behind or unknown; per published release who runs it, the patch lag
    (publication to commit, median and 90th percentile) and how long it has waited for the rest."""
    report = compliance_report(
        runtime.database, runtime.inventory, runtime.releases, now=utc_now(), hardware_id=hardware
    )
    return views.ComplianceView.of(report, devices=devices)


# -- the image repository, public ------------------------------------------------------------


@public_router.get(
    IMAGE_METADATA_PATH,
    summary="Image repository metadata (TUF)",
    response_class=FileResponse,
    responses={200: {"content": {_JSON: {}}, "description": "Signed TUF metadata."}},
)
def image_metadata(runtime: RuntimeDep, name: Annotated[str, Path(max_length=96)]) -> FileResponse:
    """`root.json`, `N.root.json`, `timestamp.json`, `N.snapshot.json`, `N.targets.json`,
    `N.hw-<hardware id>.json`: signed and public, so no token."""
    if not _METADATA_NAME.fullmatch(name):
        raise NotFound(f"{name[:80]!r} is not an image repository metadata file")
    return _file(_image_dir(runtime, "metadata"), name, _JSON)


@public_router.get(
    IMAGE_TARGETS_PATH,
    summary="Image repository target file",
    response_class=FileResponse,
    responses={200: {"content": {_OCTETS: {}}, "description": "A firmware image or delta."}},
)
def image_target(
    runtime: RuntimeDep,
    hardware_id: Annotated[str, Path(max_length=200)],
    directory: Annotated[str, Path(max_length=200, description="The release name, or `deltas`.")],
    name: Annotated[str, Path(max_length=200, description="`<sha256>.<file name>`.")],
) -> FileResponse:
    """A firmware image or delta by its hash-prefixed path (TUF spec 5.7.3); clients check its length
    and hash against the signed metadata."""
    segments = (hardware_id, directory, name)
    if not all(_TARGET_SEGMENT.fullmatch(s) for s in segments):
        raise NotFound(f"{'/'.join(segments)[:80]!r} is not an image repository target path")
    return _file(_image_dir(runtime, "targets"), "/".join(segments), _OCTETS)


def _image_dir(runtime: Runtime, which: str) -> FilePath:
    if not runtime.ota.initialized:
        raise NotFound("this installation has no OTA repositories", hint="fleetguard ota init")
    image = runtime.ota.image
    return image.metadata_dir if which == "metadata" else image.targets_dir


def _file(base: FilePath, relative: str, media_type: str) -> FileResponse:
    # The names are validated already; resolving guards against a symlink planted in the directory.
    root = base.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise NotFound(f"{relative[:80]!r} does not exist")
    return FileResponse(path, media_type=media_type)
