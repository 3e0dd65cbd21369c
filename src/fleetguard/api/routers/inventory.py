"""Sites and device types: the reference data devices point to."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from fleetguard.api import schemas
from fleetguard.api.auth import actor_of, require
from fleetguard.api.context import RuntimeDep
from fleetguard.api.problems import problem_responses
from fleetguard.api.tokens import Permission, TokenInfo

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["inventory"], responses=problem_responses(401, 403, 422, 503))

_Reader = Annotated[TokenInfo, Depends(require(Permission.DEVICES_READ))]
_Admin = Annotated[TokenInfo, Depends(require(Permission.INVENTORY_ADMIN))]


@router.get("/sites", summary="List sites")
def list_sites(runtime: RuntimeDep, _token: _Reader) -> list[schemas.Site]:
    """Return every site, by id."""
    return [schemas.Site.model_validate(site) for site in runtime.inventory.sites()]


@router.post("/sites", summary="Create a site", status_code=201, responses=problem_responses(409, 413))
def create_site(body: schemas.SiteCreation, runtime: RuntimeDep, token: _Admin) -> schemas.Site:
    """Create a site; a taken id is a 409."""
    site = runtime.inventory.add_site(body.id, body.name, actor=actor_of(token), description=body.description)
    return schemas.Site.model_validate(site)


@router.get("/device-types", summary="List device types")
def list_device_types(runtime: RuntimeDep, _token: _Reader) -> list[schemas.DeviceType]:
    """Return every device type, by id."""
    return [schemas.DeviceType.model_validate(kind) for kind in runtime.inventory.device_types()]


@router.post(
    "/device-types", summary="Create a device type", status_code=201, responses=problem_responses(409, 413)
)
def create_device_type(
    body: schemas.DeviceTypeCreation, runtime: RuntimeDep, token: _Admin
) -> schemas.DeviceType:
    """Create a device type (manufacturer, model, MUD URL); a taken id is a 409."""
    kind = runtime.inventory.add_device_type(
        body.id,
        actor=actor_of(token),
        manufacturer=body.manufacturer,
        model=body.model,
        mud_url=body.mud_url,
        description=body.description,
    )
    return schemas.DeviceType.model_validate(kind)
