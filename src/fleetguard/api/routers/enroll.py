"""The operator's controls over enrollment: manufacturer CAs, zero-touch rules, one-time tokens and
the approval queue; and manufacturing batches (:mod:`fleetguard.enroll.batch`), CSR mode only: a
key-generation batch puts private keys in a file, which is the CLI's job (``fleetguard enroll batch
--generate-keys``), never an HTTP answer's.

Devices themselves enroll over EST (:mod:`fleetguard.enroll.est`); these routes only decide who may.
Every change is in the event log with the token as actor (see
:class:`~fleetguard.enroll.service.EnrollmentService`). An enrollment token's text is answered once,
when it is created, with ``Cache-Control: no-store``; listings never hold it.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from fleetguard.api import schemas
from fleetguard.api.auth import actor_of, require
from fleetguard.api.context import RuntimeDep
from fleetguard.api.errors import MalformedJson, UnsupportedMediaType
from fleetguard.api.problems import problem_responses
from fleetguard.api.tokens import Permission, TokenInfo
from fleetguard.enroll import (
    MAX_BATCH_DEVICES,
    BatchRejected,
    CsrInput,
    IssuedBatch,
    RequestStatus,
    split_pem_csrs,
)
from fleetguard.errors import InvalidInput
from fleetguard.installation import Runtime
from fleetguard.types import utc_now

__all__ = ["BATCHES_PATH", "router"]

_DEFAULT_PAGE = 100

router = APIRouter(prefix="/v1/enroll", tags=["enroll"], responses=problem_responses(401, 403, 422, 503))

BATCHES_PATH = f"{router.prefix}/batches"
"""The path batches are posted to; its body limit is FLEETGUARD_MAX_IMPORT_BYTES, like device import."""

_Reader = Annotated[TokenInfo, Depends(require(Permission.ENROLL_READ))]
_Admin = Annotated[TokenInfo, Depends(require(Permission.ENROLL_ADMIN))]
_Id = Annotated[str, Path(min_length=1, max_length=64)]
_Manufacturer = Annotated[str, Path(min_length=1, max_length=64, description="The manufacturer's name.")]
_Model = Annotated[str, Path(min_length=1, max_length=128, description="The device model, or `*`.")]
_BatchId = Annotated[str, Path(min_length=1, max_length=36, description="The batch's id.")]


class _CsrFormat(enum.StrEnum):
    PEM = "application/x-pem-file"
    JSON = "application/json"


_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "description": "One CSR per device, in batch order; each CSR's subject CN is its device's id. "
        "Either concatenated PEM CSRs (`application/x-pem-file`), or a JSON array of PEM strings.",
        "content": {
            _CsrFormat.PEM.value: {"schema": {"type": "string"}},
            _CsrFormat.JSON.value: {"schema": {"type": "array", "items": {"type": "string"}}},
        },
    }
}


# -- manufacturer CAs ------------------------------------------------------------------------


@router.get("/manufacturers", summary="List manufacturer CAs")
def list_manufacturer_cas(runtime: RuntimeDep, _token: _Reader) -> list[schemas.ManufacturerCaView]:
    """Return every CA trusted for factory (IDevID) certificates, by manufacturer, oldest first."""
    return [schemas.ManufacturerCaView.of(ca) for ca in runtime.enroll.manufacturer_cas()]


@router.post(
    "/manufacturers",
    summary="Trust a manufacturer's CAs",
    status_code=201,
    responses=problem_responses(409, 413),
)
def add_manufacturer_cas(
    body: schemas.ManufacturerCaCreation, runtime: RuntimeDep, token: _Admin
) -> list[schemas.ManufacturerCaView]:
    """Trust every CA certificate in the PEM bundle for the manufacturer's factory certificates; return them.

    A bundle that is not PEM, holds a certificate that is not a CA or has expired, is a 422 and adds
    nothing; a CA registered already, or another model attribute than the manufacturer's other CAs
    use, is a 409.
    """
    added = runtime.enroll.add_manufacturer_ca(
        body.manufacturer, body.pem.encode(), actor=actor_of(token), model_attribute=body.model_attribute
    )
    return [schemas.ManufacturerCaView.of(ca) for ca in added]


@router.delete(
    "/manufacturers/{ca_id}", summary="Stop trusting a manufacturer CA", responses=problem_responses(404)
)
def remove_manufacturer_ca(ca_id: _Id, runtime: RuntimeDep, token: _Admin) -> schemas.ManufacturerCaView:
    """Remove the CA; factory certificates under it are refused from then on. Return it."""
    return schemas.ManufacturerCaView.of(runtime.enroll.remove_manufacturer_ca(ca_id, actor=actor_of(token)))


# -- zero-touch rules ------------------------------------------------------------------------


@router.get("/rules", summary="List zero-touch rules")
def list_rules(runtime: RuntimeDep, _token: _Reader) -> list[schemas.EnrollmentRuleView]:
    """Return every rule: which manufacturer and model enroll at once, and which wait for approval."""
    return [schemas.EnrollmentRuleView.of(rule) for rule in runtime.enroll.rules()]


@router.put(
    "/rules/{manufacturer}/{model}", summary="Set a zero-touch rule", responses=problem_responses(413)
)
def set_rule(
    manufacturer: _Manufacturer,
    model: _Model,
    body: schemas.RuleSetting,
    runtime: RuntimeDep,
    token: _Admin,
) -> schemas.EnrollmentRuleView:
    """Create or replace the rule for the manufacturer and model (`*`: any model); return it.

    Without a rule, a device with a valid factory certificate is refused.
    """
    rule = runtime.enroll.set_rule(
        manufacturer, model, body.mode, actor=actor_of(token), register_unknown=body.register_unknown
    )
    return schemas.EnrollmentRuleView.of(rule)


@router.delete(
    "/rules/{manufacturer}/{model}", summary="Delete a zero-touch rule", responses=problem_responses(404)
)
def remove_rule(
    manufacturer: _Manufacturer, model: _Model, runtime: RuntimeDep, token: _Admin
) -> schemas.EnrollmentRuleView:
    """Delete the rule; devices it matched are refused from then on. Return it."""
    return schemas.EnrollmentRuleView.of(
        runtime.enroll.remove_rule(manufacturer, model, actor=actor_of(token))
    )


# -- one-time tokens -------------------------------------------------------------------------


@router.post(
    "/tokens",
    summary="Create an enrollment token",
    status_code=201,
    responses=problem_responses(404, 409, 413),
)
def create_token(
    body: schemas.EnrollmentTokenCreation, runtime: RuntimeDep, token: _Admin, response: Response
) -> schemas.EnrollmentTokenCreated:
    """Create a one-time token that lets the device enroll over EST; the answer holds its text, which
    is never shown again.

    An unknown device is a 404; a quarantined or decommissioned one is a 409.
    """
    now = utc_now()
    created, text = runtime.enroll.create_token(
        body.device_id, ttl=dt.timedelta(hours=body.ttl_hours), actor=actor_of(token), now=now
    )
    response.headers["Cache-Control"] = "no-store"  # the body is a credential (RFC 9111 5.2.2.5)
    view = schemas.EnrollmentTokenView.of(created, now=now)
    return schemas.EnrollmentTokenCreated.model_validate({**view.model_dump(), "token": text})


@router.get("/tokens", summary="List enrollment tokens")
def list_tokens(
    runtime: RuntimeDep,
    _token: _Reader,
    device_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
) -> list[schemas.EnrollmentTokenView]:
    """Return enrollment tokens (of one device, or all), newest first, with their status; never a secret."""
    now = utc_now()
    return [
        schemas.EnrollmentTokenView.of(token, now=now) for token in runtime.enroll.tokens(device_id=device_id)
    ]


@router.delete("/tokens/{token_id}", summary="Revoke an enrollment token", responses=problem_responses(404))
def revoke_token(token_id: _Id, runtime: RuntimeDep, token: _Admin) -> schemas.EnrollmentTokenView:
    """Revoke the token (idempotent); an enrollment with it fails with 401 from then on."""
    now = utc_now()
    revoked = runtime.enroll.revoke_token(token_id, actor=actor_of(token), now=now)
    return schemas.EnrollmentTokenView.of(revoked, now=now)


# -- the approval queue ----------------------------------------------------------------------


@router.get("/requests", summary="List enrollment requests")
def list_requests(
    runtime: RuntimeDep,
    _token: _Reader,
    status: Annotated[RequestStatus, Query(description="Which requests.")] = RequestStatus.PENDING,
    limit: Annotated[int | None, Query(ge=1, description="Page size; at most the configured max.")] = None,
    after: Annotated[
        str | None, Query(min_length=1, max_length=64, description="The last id of the previous page.")
    ] = None,
) -> list[schemas.EnrollmentRequest]:
    """Return one page of queued factory-certificate enrollments with the status, oldest first."""
    size = _page_size(limit, runtime.settings.max_page_size)
    queued = runtime.enroll.requests(status=status, limit=size, after=after)
    return [schemas.EnrollmentRequest.of(request) for request in queued]


@router.get("/requests/{request_id}", summary="Get an enrollment request", responses=problem_responses(404))
def get_request(request_id: _Id, runtime: RuntimeDep, _token: _Reader) -> schemas.EnrollmentRequest:
    """Return one queued enrollment request and, once decided, who decided it, when and why."""
    return schemas.EnrollmentRequest.of(runtime.enroll.request(request_id))


@router.post(
    "/requests/{request_id}/approval",
    summary="Approve an enrollment request",
    status_code=201,
    responses=problem_responses(403, 404, 409, 413),
)
def approve_request(
    request_id: _Id, runtime: RuntimeDep, token: _Admin, response: Response
) -> schemas.Certificate:
    """Approve a pending request: register the device if it is unknown and issue its certificate;
    answer 201 with the certificate, which the device receives when it repeats its request.

    A request decided already is a 409; a device recorded with another model, quarantined or
    decommissioned is a 403.
    """
    record = runtime.enroll.approve(request_id, actor=actor_of(token))
    response.headers["Location"] = f"/v1/certificates/{record.serial:x}"
    return schemas.Certificate.of(record, renew_at=runtime.pki.renewal_due(record))


@router.post(
    "/requests/{request_id}/rejection",
    summary="Reject an enrollment request",
    responses=problem_responses(404, 409, 413),
)
def reject_request(
    request_id: _Id, body: schemas.Rejection, runtime: RuntimeDep, token: _Admin
) -> schemas.EnrollmentRequest:
    """Reject a pending request with a reason; the same factory certificate is refused from then on."""
    rejected = runtime.enroll.reject(request_id, body.reason, actor=actor_of(token))
    return schemas.EnrollmentRequest.of(rejected)


# -- manufacturing batches -------------------------------------------------------------------


@router.post(
    "/batches",
    summary="Make a manufacturing batch (CSR mode)",
    status_code=201,
    openapi_extra=_BATCH_BODY,
    responses=problem_responses(400, 409, 413, 415),
)
async def create_batch(
    request: Request,
    runtime: RuntimeDep,
    token: _Admin,
    response: Response,
    *,
    model: Annotated[
        str, Query(min_length=1, max_length=128, description="The device type of every device.")
    ],
    count: Annotated[
        int, Query(ge=1, le=MAX_BATCH_DEVICES, description="How many devices; must match the CSRs.")
    ],
) -> schemas.BatchCreated:
    """Register one device of type `model` per CSR, issue every certificate and sign the batch's
    manifest, all in one transaction; answer 201 with the manifest, its signature and the certificates.

    All or nothing: a CSR that is malformed, weakly keyed, names no valid device id in its CN, repeats
    another's id or key, or names a registered device is a 422 naming it (`index`, 1-based), as is a
    count that does not match or an unknown device type; nothing is recorded then. Key generation is
    CLI-only (`fleetguard enroll batch --generate-keys`): private keys never travel in an answer.
    """
    kind = _csr_format(request.headers.get("content-type", ""))
    data = await request.body()
    actor = actor_of(token)
    issued = await run_in_threadpool(
        _create_batch, runtime, kind, data, model=model, count=count, actor=actor
    )
    response.headers["Location"] = f"{BATCHES_PATH}/{issued.batch.id}"
    return schemas.BatchCreated.of_issued(issued)


@router.get("/batches", summary="List manufacturing batches")
def list_batches(
    runtime: RuntimeDep,
    _token: _Reader,
    limit: Annotated[int | None, Query(ge=1, description="Page size; at most the configured max.")] = None,
    after: Annotated[
        str | None, Query(min_length=1, max_length=36, description="The last id of the previous page.")
    ] = None,
) -> list[schemas.BatchView]:
    """Return one page of batches, oldest first (without their manifests)."""
    size = _page_size(limit, runtime.settings.max_page_size)
    return [schemas.BatchView.of(batch) for batch in runtime.batches.batches(limit=size, after=after)]


@router.get("/batches/{batch_id}", summary="Get a manufacturing batch", responses=problem_responses(404))
def get_batch(batch_id: _BatchId, runtime: RuntimeDep, _token: _Reader) -> schemas.BatchDetail:
    """Return the batch with its manifest exactly as signed and the detached Ed25519 signature, which
    verifies with the key `GET /v1/events/public-key` returns."""
    return schemas.BatchDetail.of_stored(runtime.batches.batch(batch_id))


def _create_batch(
    runtime: Runtime, kind: _CsrFormat, data: bytes, *, model: str, count: int, actor: str
) -> IssuedBatch:
    csrs = split_pem_csrs(data) if kind is _CsrFormat.PEM else _json_csrs(data)
    return runtime.batches.create_from_csrs(model, count, csrs, actor=actor)


def _json_csrs(data: bytes) -> list[CsrInput]:
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise MalformedJson("the body is not JSON", hint="send a JSON array of PEM CSR strings") from exc
    if not isinstance(document, list) or not all(isinstance(item, str) for item in document):
        raise BatchRejected("a JSON body is an array of PEM CSR strings, one per device")
    csrs = []
    for number, item in enumerate(document, start=1):
        blocks = split_pem_csrs(item.encode())
        if len(blocks) != 1:
            raise BatchRejected(f"the string holds {len(blocks)} PEM CSRs, not one", index=number)
        csrs.append(blocks[0])
    return csrs


def _csr_format(content_type: str) -> _CsrFormat:
    media_type = content_type.partition(";")[0].strip().lower()
    for kind in _CsrFormat:
        if media_type == kind.value:
            return kind
    raise UnsupportedMediaType(
        f"cannot read CSRs from {media_type or 'a body without a Content-Type'}",
        hint="send Content-Type: application/x-pem-file (concatenated PEM) or application/json",
    )


def _page_size(limit: int | None, maximum: int) -> int:
    if limit is None:
        return min(_DEFAULT_PAGE, maximum)
    if limit > maximum:
        raise InvalidInput(f"limit {limit} exceeds the maximum page size {maximum}")
    return limit
