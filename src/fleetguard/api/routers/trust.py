"""Zero trust: the fleet policy (read, validate, compare, apply), decisions, and device trust signals.

The policy in force is a versioned Cedar set (version 0 is the shipped default); its version is the
``ETag`` of ``GET /v1/policies``, and applying one must say which version it replaces
(``If-Match: "<version>"`` or ``expected_version``), like a device update: without one the answer is
428, with a stale one 409, and nothing changes. A policy that does not parse or validate is a 422
whose ``line``, ``column`` and ``policy_id`` say where; an empty set is a 422 too, never "allow all".

``validate`` and ``diff`` read the Cedar text as ``text/plain``, or a JSON proposal that may also
change the firmware policy; bodies are bounded (:data:`MAX_POLICY_BODY`). ``diff`` decides every
device under both sets, so it needs ``policy:write`` like ``apply``, whose dry run it is.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from fleetguard.api import schemas_trust as views
from fleetguard.api.auth import actor_of, require
from fleetguard.api.context import RuntimeDep
from fleetguard.api.errors import BodyTooLarge, PreconditionRequired, UnsupportedMediaType
from fleetguard.api.problems import problem_responses
from fleetguard.api.routers.pki_public import read_bounded_body
from fleetguard.api.tokens import Permission, TokenInfo
from fleetguard.errors import InvalidInput
from fleetguard.installation import Runtime
from fleetguard.trust import PolicyConflict
from fleetguard.trust.policy import MAX_POLICY_BYTES, parse_policy_set
from fleetguard.types import utc_now

__all__ = ["DIFF_PATH", "MAX_POLICY_BODY", "POLICIES_PATH", "VALIDATE_PATH", "router"]

POLICIES_PATH = "/v1/policies"
VALIDATE_PATH = f"{POLICIES_PATH}/validate"
DIFF_PATH = f"{POLICIES_PATH}/diff"
MAX_POLICY_BODY = 2 * MAX_POLICY_BYTES + 64 * 1024
"""Largest JSON body of a policy route: the text JSON-escaped (quotes and newlines double), and room
for the firmware policy and reason. A ``text/plain`` body is at most ``MAX_POLICY_BYTES``."""

_TEXT = "text/plain"
_JSON = "application/json"
_DEFAULT_CHANGES = 1000
_MAX_CHANGES = 100_000
_HISTORY = 50
_CLOCK_SKEW = dt.timedelta(minutes=5)
_IF_MATCH = re.compile(r'\s*"(0|[1-9][0-9]{0,17})"\s*')  # RFC 9110 8.8.3: a strong entity tag

router = APIRouter(tags=["trust"], responses=problem_responses(401, 403, 422, 503))

_Reader = Annotated[TokenInfo, Depends(require(Permission.POLICY_READ))]
_Writer = Annotated[TokenInfo, Depends(require(Permission.POLICY_WRITE))]
_Signaller = Annotated[TokenInfo, Depends(require(Permission.SIGNALS_WRITE))]
_DeviceId = Annotated[str, Path(min_length=1, max_length=128, description="The device id.")]
_PROPOSAL_BODY = {
    "requestBody": {
        "required": True,
        "description": f"The Cedar policy set as `{_TEXT}` (UTF-8, at most {MAX_POLICY_BYTES} bytes), "
        "or a JSON proposal that may also replace parts of the firmware policy.",
        "content": {
            _TEXT: {"schema": {"type": "string", "maxLength": MAX_POLICY_BYTES}},
            _JSON: {"schema": views.PolicyProposal.model_json_schema()},
        },
    }
}


def etag(version: int) -> str:
    """Return the strong entity tag of a policy version."""
    return f'"{version}"'


# -- policies --------------------------------------------------------------------------------


@router.get(POLICIES_PATH, summary="Get the policy in force")
def get_policy(runtime: RuntimeDep, _token: _Reader, response: Response) -> views.PolicyView:
    """Return the policy in force (version 0: the shipped default) with its text, policy ids, digest and
    firmware policy; its version is the ETag that `PUT` takes as `If-Match`."""
    stored = runtime.trust.policy()
    response.headers["ETag"] = etag(stored.version)
    return views.PolicyView.of(stored)


@router.get(f"{POLICIES_PATH}/versions", summary="List policy versions")
def list_policy_versions(
    runtime: RuntimeDep,
    _token: _Reader,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many, newest first.")] = _HISTORY,
) -> list[views.PolicySummary]:
    """Return the applied versions, newest first, without their text; the shipped default (version 0)
    is never stored and so never listed."""
    return [views.PolicySummary.of(stored) for stored in runtime.trust.history(limit=limit)]


@router.get(
    f"{POLICIES_PATH}/versions/{{version}}", summary="Get a policy version", responses=problem_responses(404)
)
def get_policy_version(
    version: Annotated[int, Path(ge=0, le=2**62, description="The version; 0 is the shipped default.")],
    runtime: RuntimeDep,
    _token: _Reader,
) -> views.PolicyView:
    """Return one version with its text (0: the shipped default); an unknown version is a 404."""
    return views.PolicyView.of(runtime.trust.version(version))


@router.post(
    VALIDATE_PATH,
    summary="Validate a policy set",
    openapi_extra=_PROPOSAL_BODY,
    responses=problem_responses(400, 413, 415),
)
async def validate_policy(request: Request, _token: _Reader) -> views.PolicyValidation:
    """Parse and validate the set against the schema; store nothing.

    An invalid set is a 422 with the `line`, `column` and (when known) `policy_id` of the first
    error; a set without a policy is a 422 as well.
    """
    proposal = await _proposal(request)
    policies = await run_in_threadpool(parse_policy_set, proposal.text)
    return views.PolicyValidation(valid=True, digest=policies.digest, policies=list(policies.ids))


@router.post(
    DIFF_PATH,
    summary="Compare a policy set with the one in force",
    openapi_extra=_PROPOSAL_BODY,
    responses=problem_responses(400, 413, 415),
)
async def diff_policy(
    request: Request,
    runtime: RuntimeDep,
    _token: _Writer,
    limit: Annotated[
        int, Query(ge=1, le=_MAX_CHANGES, description="List at most this many changes (all are counted).")
    ] = _DEFAULT_CHANGES,
) -> views.PolicyDiff:
    """Decide every device's requests under the policy in force and under the proposal; return the
    requests whose outcome changes, with the policies deciding each side. Nothing is applied."""
    proposal = await _proposal(request)
    return await run_in_threadpool(_diff, runtime, proposal, limit)


@router.put(POLICIES_PATH, summary="Apply a policy set", responses=problem_responses(409, 413, 428))
def apply_policy(
    *,
    body: views.PolicyApplication,
    runtime: RuntimeDep,
    token: _Writer,
    response: Response,
    if_match: Annotated[
        str | None, Header(description='"<version>" in force as read; or send `expected_version`.')
    ] = None,
) -> views.PolicyView:
    """Validate the set and make it the new version in force, if the version in force is still the one
    the caller read; return it with its version as the ETag.

    Without `If-Match` or `expected_version` the answer is 428; with a stale one, 409. An invalid set
    is a 422 naming its line and column. In every failure nothing is stored.
    """
    expected = _expected_version(if_match, body.expected_version)
    if expected is None:
        raise PreconditionRequired(
            "applying a policy must name the version it replaces",
            hint='send If-Match: "<version>" (the ETag of GET /v1/policies) or "expected_version"',
        )
    current = runtime.trust.policy()
    if expected != current.version:  # fail before the firmware policy is read from the wrong version
        raise PolicyConflict(
            f"policy version {current.version} is in force, not {expected}",
            hint="read GET /v1/policies, compare with POST /v1/policies/diff, and apply again",
        )
    firmware = body.firmware(current.firmware)
    stored = runtime.trust.apply(
        body.text, actor=actor_of(token), reason=body.reason, firmware=firmware, expected_version=expected
    )
    response.headers["ETag"] = etag(stored.version)
    return views.PolicyView.of(stored)


# -- decisions and devices -------------------------------------------------------------------


@router.post("/v1/decisions", summary="Decide a request", responses=problem_responses(404, 413))
def decide(body: views.DecisionRequest, runtime: RuntimeDep, _token: _Reader) -> views.DecisionView:
    """Decide one request of a device under the policy in force, as the enforcement points would; return
    the outcome, the policies that decided it, evaluation errors, and every input used.

    Without `topic`, `connect` is on the broker and `publish`/`subscribe` on the device's own topic
    space. Nothing is recorded.
    """
    return views.DecisionView.of(runtime.trust.decide(body.device_id, body.action, body.resource()))


@router.get(
    "/v1/devices/{device_id}/trust", summary="Get a device's trust status", responses=problem_responses(404)
)
def get_device_trust(device_id: _DeviceId, runtime: RuntimeDep, _token: _Reader) -> views.DeviceTrust:
    """Return the device's facts, its access plan under the policy in force (every candidate request
    decided), and what the enforcement points last confirmed."""
    plan = runtime.trust.access(device_id)
    enforcement = runtime.trust.enforcement(device_id)
    return views.DeviceTrust(
        facts=views.FactsView.of(plan.decisions[0].device),  # the facts every decision of the plan used
        access=views.AccessPlanView.of(plan),
        enforcement=None if enforcement is None else views.EnforcementView.of(enforcement),
    )


@router.post(
    "/v1/devices/{device_id}/signals",
    summary="Report trust signals of a device",
    responses=problem_responses(404, 413),
)
def report_signals(
    device_id: _DeviceId, body: views.SignalReport, runtime: RuntimeDep, token: _Signaller
) -> views.FactsView:
    """Record a new behaviour risk, known-vulnerable flag or attestation time; decisions use them at
    once. Omitted signals stay as they are. Return the device's facts after the change."""
    if body.risk is None and body.known_vulnerable is None and body.attested_at is None:
        raise InvalidInput("report at least one of risk, known_vulnerable and attested_at")
    if body.attested_at is not None and body.attested_at > utc_now() + _CLOCK_SKEW:
        # A future attestation time would keep the device's attestation fresh for longer than it is.
        raise InvalidInput("attested_at is in the future", hint="send the time the attestation was verified")
    runtime.trust.report_signals(
        device_id, actor=actor_of(token), risk=body.risk, known_vulnerable=body.known_vulnerable,
        attested_at=body.attested_at, reason=body.reason,
    )  # fmt: skip
    return views.FactsView.of(runtime.trust.facts(device_id))


# -- internals -------------------------------------------------------------------------------


async def _proposal(request: Request) -> views.PolicyProposal:
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type == _TEXT:
        body = await read_bounded_body(request, MAX_POLICY_BYTES)
        if body is None:
            raise BodyTooLarge(MAX_POLICY_BYTES)
        return views.PolicyProposal(text=views.policy_text(body))
    if media_type == _JSON:
        body = await read_bounded_body(request, MAX_POLICY_BODY)
        if body is None:
            raise BodyTooLarge(MAX_POLICY_BODY)
        try:
            return views.PolicyProposal.model_validate_json(body)
        except ValidationError as exc:  # answered like FastAPI's own body validation
            errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
            raise RequestValidationError(errors) from exc
    raise UnsupportedMediaType(
        f"cannot read a policy from {media_type or 'a body without a Content-Type'}",
        hint=f'send Content-Type: {_TEXT} (the Cedar text) or {_JSON} ({{"text": ...}})',
    )


def _diff(runtime: Runtime, proposal: views.PolicyProposal, limit: int) -> views.PolicyDiff:
    current = runtime.trust.policy()
    devices = 0

    def counted(done: int) -> None:
        nonlocal devices
        devices = done

    changes = runtime.trust.diff(
        proposal.text, firmware=proposal.firmware(current.firmware), progress=counted
    )
    return views.PolicyDiff(
        current_version=current.version,
        devices=devices,
        changed_devices=len({change.device_id for change in changes}),
        changed_decisions=len(changes),
        changes=[views.OutcomeChangeView.of(change) for change in changes[:limit]],
    )


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
