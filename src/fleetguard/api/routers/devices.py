"""Devices: search, register, read, update and move through the lifecycle.

Changes are optimistic: a device's ``version`` is its ``ETag``, and an update must say which version
it read (``If-Match: "<version>"`` or a ``version`` field), so that two operators cannot overwrite each
other unknowingly; a stale version is a 409 and changes nothing. A transition may be conditional too.
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Header, Query, Response
from pydantic import AwareDatetime

from fleetguard.api import schemas
from fleetguard.api.auth import actor_of, require
from fleetguard.api.context import RuntimeDep
from fleetguard.api.errors import PreconditionRequired
from fleetguard.api.problems import problem_responses
from fleetguard.api.tokens import Permission, TokenInfo
from fleetguard.errors import InvalidInput
from fleetguard.inventory.lifecycle import State
from fleetguard.inventory.model import Device, DeviceFilter, validate_labels

__all__ = ["DeviceCriteria", "etag", "router"]

router = APIRouter(prefix="/v1/devices", tags=["devices"], responses=problem_responses(401, 403, 422, 503))

_Reader = Annotated[TokenInfo, Depends(require(Permission.DEVICES_READ))]
_Writer = Annotated[TokenInfo, Depends(require(Permission.DEVICES_WRITE))]
_Operator = Annotated[TokenInfo, Depends(require(Permission.LIFECYCLE))]
_DEFAULT_PAGE = 100
_IF_MATCH = re.compile(r'\s*"([1-9][0-9]{0,17})"\s*')  # RFC 9110 8.8.3: a strong entity tag
_Exact = Annotated[str | None, Query(max_length=256)]
_Url = Annotated[str | None, Query(max_length=2048)]
_Moment = Annotated[AwareDatetime | None, Query()]


def etag(version: int) -> str:
    """Return the strong entity tag of a device version."""
    return f'"{version}"'


def device_filter(
    *,
    device_id: Annotated[str | None, Query(alias="id", max_length=128)] = None,
    serial: _Exact = None,
    manufacturer: _Exact = None,
    model: _Exact = None,
    device_type: _Exact = None,
    hardware_revision: _Exact = None,
    firmware_version: _Exact = None,
    mud_url: _Url = None,
    site: _Exact = None,
    owner: _Exact = None,
    state: State | None = None,
    label: Annotated[
        list[str] | None, Query(max_length=64, description="key=value; repeat to require several.")
    ] = None,
    q: Annotated[
        str | None, Query(max_length=256, description="Substring of id, serial, model, owner.")
    ] = None,
    created_after: _Moment = None,
    created_before: _Moment = None,
    seen_after: _Moment = None,
    seen_before: _Moment = None,
) -> DeviceFilter:
    """Return the search criteria named by the query (every given one must match)."""
    return DeviceFilter(
        id=device_id, serial=serial, manufacturer=manufacturer, model=model, device_type=device_type,
        hardware_revision=hardware_revision, firmware_version=firmware_version, mud_url=mud_url,
        site=site, owner=owner, state=state, labels=_labels(label or []), text=q or None,
        created_after=created_after, created_before=created_before, seen_after=seen_after,
        seen_before=seen_before,
    )  # fmt: skip


DeviceCriteria = Annotated[DeviceFilter, Depends(device_filter)]


@router.get("", summary="List devices")
def list_devices(
    runtime: RuntimeDep,
    _token: _Reader,
    criteria: DeviceCriteria,
    limit: Annotated[int | None, Query(ge=1, description="Page size; at most the configured max.")] = None,
    after: Annotated[str | None, Query(max_length=128, description="The previous page's next_after.")] = None,
    count: Annotated[bool, Query(description="Also count every matching device.")] = False,
) -> schemas.DevicePage:
    """Return one page of the devices matching every given criterion, ordered by id."""
    size = _page_size(limit, runtime.settings.max_page_size)
    devices = runtime.inventory.find(criteria, limit=size, after=after)
    return schemas.DevicePage(
        items=[schemas.Device.model_validate(device) for device in devices],
        next_after=devices[-1].id if len(devices) == size else None,
        total=runtime.inventory.count(criteria) if count else None,
    )


@router.post("", summary="Register a device", status_code=201, responses=problem_responses(409, 413))
def register_device(
    body: schemas.DeviceRegistration, runtime: RuntimeDep, token: _Writer, response: Response
) -> schemas.Device:
    """Add a device in state `registered`; answer 201 with its Location and ETag.

    A taken id, or a taken manufacturer and serial, is a 409; an unknown site or device type a 422.
    """
    device = runtime.inventory.register(body.to_spec(), actor=actor_of(token), reason=body.reason)
    response.headers["Location"] = f"{router.prefix}/{quote(device.id, safe='')}"
    return _answer(device, response)


@router.get("/{device_id}", summary="Get a device", responses=problem_responses(404))
def get_device(device_id: str, runtime: RuntimeDep, _token: _Reader, response: Response) -> schemas.Device:
    """Return the device, with its version as the ETag."""
    return _answer(runtime.inventory.get(device_id), response)


@router.patch("/{device_id}", summary="Update a device", responses=problem_responses(404, 409, 413, 428))
def update_device(
    *,
    device_id: str,
    body: schemas.DeviceUpdate,
    runtime: RuntimeDep,
    token: _Writer,
    response: Response,
    if_match: Annotated[str | None, Header(description='"<version>" as read; or send `version`.')] = None,
) -> schemas.Device:
    """Change the given fields of the device, if it is still at the version the caller read.

    Without `If-Match` or `version` the answer is 428; with a stale one, 409 and nothing changes.
    """
    version = _expected_version(if_match, body.version)
    if version is None:
        raise PreconditionRequired(
            "an update must name the version it read",
            hint='send If-Match: "<version>" (the ETag of GET) or a "version" field',
        )
    device = runtime.inventory.update(
        device_id, body.to_changes(), actor=actor_of(token), reason=body.reason, expected_version=version
    )
    return _answer(device, response)


@router.post(
    "/{device_id}/transitions",
    summary="Move a device through its lifecycle",
    responses=problem_responses(404, 409, 413),
)
def transition_device(
    *,
    device_id: str,
    body: schemas.Transition,
    runtime: RuntimeDep,
    token: _Operator,
    response: Response,
    if_match: Annotated[str | None, Header(description='Optional: "<version>" as read.')] = None,
) -> schemas.Device:
    """Apply a lifecycle action (provision, activate, quarantine, release, decommission).

    An action the lifecycle forbids from the current state is a 409 naming the state and action;
    nothing changes and nothing is logged.
    """
    device = runtime.inventory.transition(
        device_id,
        body.action,
        actor=actor_of(token),
        reason=body.reason,
        expected_version=_expected_version(if_match, None),
    )
    return _answer(device, response)


def _answer(device: Device, response: Response) -> schemas.Device:
    response.headers["ETag"] = etag(device.version)
    return schemas.Device.model_validate(device)


def _labels(pairs: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidInput(f"label filter {pair[:80]!r} must read key=value")
        labels[key] = value
    return validate_labels(labels)


def _page_size(limit: int | None, maximum: int) -> int:
    if limit is None:
        return min(_DEFAULT_PAGE, maximum)
    if limit > maximum:
        raise InvalidInput(f"limit {limit} exceeds the maximum page size {maximum}")
    return limit


def _expected_version(if_match: str | None, field: int | None) -> int | None:
    if if_match is None:
        return field
    match = _IF_MATCH.fullmatch(if_match)
    if match is None:
        raise InvalidInput(
            f"If-Match {if_match[:40]!r} is not one strong entity tag", hint='send If-Match: "<version>"'
        )
    version = int(match[1])
    if field is not None and field != version:
        raise InvalidInput(f"If-Match says version {version} but the body says {field}")
    return version
