"""Network segmentation: MUD profiles (RFC 8520), device bindings, the MUD context, the nftables
ruleset (apply, dry run, history) and simulations of a policy over recorded flows.

A profile is stored only when it parses and, where the installation requires signatures, carries a
detached CMS signature by a trusted signer: a refused one changes nothing (422, with the JSON pointer
``path`` of the offending node for an invalid file). ``POST /v1/segment/apply`` checks the ruleset with
``nft -c`` and applies it in one transaction; when nft refuses, the ruleset in force is unchanged and
the answer is 503. A dry run only checks, and records nothing. ``simulate`` judges recorded flows
under the stored profiles, or proposed ones in their place, and stores nothing; like the policy
diff it compiles the whole fleet, so it needs ``segment:write``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from fleetguard.api import schemas_segment as views
from fleetguard.api.auth import actor_of, require
from fleetguard.api.context import RuntimeDep
from fleetguard.api.problems import problem_responses
from fleetguard.api.tokens import Permission, TokenInfo
from fleetguard.installation import Runtime
from fleetguard.segment.errors import MudSignatureInvalid
from fleetguard.segment.mud import MAX_URL, parse_mud
from fleetguard.segment.service import parse_context

__all__ = ["PROFILES_PATH", "SIMULATE_PATH", "router"]

PROFILES_PATH = "/v1/segment/profiles"
SIMULATE_PATH = "/v1/segment/simulate"
_HISTORY = 20

router = APIRouter(tags=["segment"], responses=problem_responses(401, 403, 422, 503))

_Reader = Annotated[TokenInfo, Depends(require(Permission.SEGMENT_READ))]
_Writer = Annotated[TokenInfo, Depends(require(Permission.SEGMENT_WRITE))]
_Url = Annotated[str, Path(min_length=1, max_length=MAX_URL, description="The MUD URL.")]
_DeviceId = Annotated[str, Path(min_length=1, max_length=128, description="The device id.")]


# -- profiles --------------------------------------------------------------------------------


@router.get(PROFILES_PATH, summary="List MUD profiles")
def list_profiles(runtime: RuntimeDep, _token: _Reader) -> list[views.ProfileSummary]:
    """Return every stored MUD profile, by MUD URL, without its access-control entries."""
    return [views.ProfileSummary.of(stored) for stored in runtime.segment.profiles()]


@router.post(
    PROFILES_PATH, summary="Add a MUD profile", status_code=201, responses=problem_responses(400, 413)
)
def add_profile(body: views.ProfileUpload, runtime: RuntimeDep, token: _Writer) -> views.ProfileView:
    """Parse the MUD file, check its signature where the installation requires one, and store it in
    place of any profile of the same MUD URL; devices use it from the next apply.

    An invalid file is a 422 whose `path` is the JSON pointer of the offending node; a missing,
    malformed or untrusted signature is a 422 too; a file over 1 MiB is a 413. Nothing is stored then.
    """
    signature = None if body.signature is None else _base64(body.signature)
    stored = runtime.segment.add_profile(
        body.document.encode("utf-8"), actor=actor_of(token), signature=signature, source="api"
    )
    return views.ProfileView.of(stored)


@router.get(f"{PROFILES_PATH}/{{url:path}}", summary="Get a MUD profile", responses=problem_responses(404))
def get_profile(url: _Url, runtime: RuntimeDep, _token: _Reader) -> views.ProfileView:
    """Return one stored profile with its header fields and every access-control entry."""
    return views.ProfileView.of(runtime.segment.profile(url))


@router.delete(
    f"{PROFILES_PATH}/{{url:path}}",
    summary="Remove a MUD profile",
    status_code=204,
    response_class=Response,
    responses=problem_responses(404),
)
def remove_profile(url: _Url, runtime: RuntimeDep, token: _Writer) -> Response:
    """Remove a stored profile; the devices that use it are denied everything from the next apply."""
    runtime.segment.remove_profile(url, actor=actor_of(token))
    return Response(status_code=204)


# -- bindings and context --------------------------------------------------------------------


@router.put(
    "/v1/devices/{device_id}/binding",
    summary="Bind a device to its network addresses",
    responses=problem_responses(404, 413),
)
def bind_device(
    device_id: _DeviceId, body: views.BindingRequest, runtime: RuntimeDep, token: _Writer
) -> views.BindingView:
    """Record the device's IPv4 and/or IPv6 address (and optionally its MAC), replacing its binding;
    it is managed from the next apply. An address another device holds is a 422."""
    binding = runtime.segment.bind(
        device_id, actor=actor_of(token), ipv4=body.ipv4, ipv6=body.ipv6, mac=body.mac
    )
    return views.BindingView.of(binding)


@router.get("/v1/segment/bindings", summary="List device bindings")
def list_bindings(runtime: RuntimeDep, _token: _Reader) -> list[views.BindingView]:
    """Return every managed device's addresses, by device id."""
    return [views.BindingView.of(binding) for binding in runtime.segment.bindings()]


@router.get("/v1/segment/context", summary="Get the MUD context")
def get_context(runtime: RuntimeDep, _token: _Reader) -> views.ContextView:
    """Return the local networks and controllers that abstract MUD peers resolve to (empty when never
    set: such peers then allow nothing)."""
    return views.ContextView.of(runtime.segment.context())


@router.put("/v1/segment/context", summary="Replace the MUD context", responses=problem_responses(413))
def set_context(body: views.ContextView, runtime: RuntimeDep, token: _Writer) -> views.ContextView:
    """Replace the local networks and controllers; they are used from the next apply. A malformed
    prefix or address is a 422 and changes nothing."""
    context = parse_context(body.local_networks, body.controllers, body.my_controllers)
    runtime.segment.set_context(context, actor=actor_of(token))
    return views.ContextView.of(runtime.segment.context())


# -- ruleset ---------------------------------------------------------------------------------


@router.post("/v1/segment/apply", summary="Apply the ruleset", responses=problem_responses(413))
def apply_ruleset(body: views.ApplyRequest, runtime: RuntimeDep, token: _Writer) -> views.ApplyView:
    """Compile the fleet, check the ruleset with `nft -c`, and (unless `dry_run`) apply it in one
    transaction as the next generation. When nft refuses it the answer is 503 and the ruleset in force
    is unchanged; a dry run records nothing."""
    return views.ApplyView.of(runtime.segment.apply(actor=actor_of(token), dry_run=body.dry_run))


@router.get("/v1/segment/history", summary="List applied generations")
def ruleset_history(
    runtime: RuntimeDep,
    _token: _Reader,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many, newest first.")] = _HISTORY,
) -> list[views.HistoryEntry]:
    """Return the applied generations of the ruleset, newest first (dry runs are not recorded)."""
    return [views.HistoryEntry.of(*row) for row in runtime.segment.history(limit=limit)]


@router.post(
    SIMULATE_PATH, summary="Simulate the policy over recorded flows", responses=problem_responses(413)
)
async def simulate_flows(
    body: views.SimulationRequest, runtime: RuntimeDep, _token: _Writer
) -> views.SimulationView:
    """Judge each flow as the gateway would judge its first packet, under the stored profiles or with
    the proposed MUD files in place of the stored ones of the same MUD URL; return, per managed device,
    the flows that would be blocked and why. Nothing is stored or applied. An invalid proposed file is
    a 422 naming its JSON pointer `path`."""
    return await run_in_threadpool(_simulate, runtime, body)


# -- internals -------------------------------------------------------------------------------


def _simulate(runtime: Runtime, body: views.SimulationRequest) -> views.SimulationView:
    proposed = [parse_mud(text.encode("utf-8")) for text in body.profiles]
    simulation = runtime.segment.simulate((record.flow() for record in body.flows), proposed=proposed)
    return views.SimulationView.of(simulation, proposed)


def _base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise MudSignatureInvalid(
            "the signature is not base64", hint="send the DER signature file base64-encoded"
        ) from exc
