"""RFC 9457 problem details: the one place where an error becomes an HTTP response.

Every error the API answers with is ``application/problem+json``::

    {"type": "https://fleetguard.dev/problems/<code>", "title": ..., "status": ..., "detail": ...,
     "instance": "<request path>", "hint": ..., <extension members>}

``type`` and ``title`` are stable per kind of problem (RFC 9457 section 3.1); ``detail`` is the error's
own one-line message. Extension members (section 3.2) carry the error's structured fields: the row of
a rejected import, the state and action of an illegal transition, the ``errors`` of a request that did
not validate, the ``line``, ``column`` and ``policy_id`` of an invalid policy, the JSON pointer
``path`` of an invalid MUD file. A 401 carries ``WWW-Authenticate: Bearer`` (RFC 6750 section 3), a
503 ``Retry-After`` (RFC 9110 section 10.2.3).

Anything that is not a :class:`~fleetguard.errors.FleetguardError` nor a framework HTTP error is a bug:
:class:`UnhandledErrorGuard` logs it with an incident id and answers 500 with that id only.
"""

from __future__ import annotations

import http
import logging
import math
import secrets
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetguard.api.errors import Issue, MalformedJson, RequestInvalid
from fleetguard.api.schemas import ProblemDetails
from fleetguard.enroll.errors import BatchRejected
from fleetguard.errors import FleetguardError
from fleetguard.inventory.errors import DeviceNotFound, IllegalTransition, ImportRejected
from fleetguard.segment.errors import MudInvalid
from fleetguard.trust.errors import PolicyInvalid

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "PROBLEM_TYPE_BASE",
    "UnhandledErrorGuard",
    "error_response",
    "install_problem_handlers",
    "problem_responses",
]

PROBLEM_MEDIA_TYPE = "application/problem+json"  # RFC 9457 section 6.1
PROBLEM_TYPE_BASE = "https://fleetguard.dev/problems/"
RETRY_AFTER_S = 1

_log = logging.getLogger(__name__)

# Structured fields worth returning as extension members, by error class (most specific first).
_EXTENSIONS: tuple[tuple[type[FleetguardError], tuple[str, ...]], ...] = (
    (ImportRejected, ("row", "reason")),
    (BatchRejected, ("index", "origin", "reason")),
    (IllegalTransition, ("device_id", "state", "action")),
    (DeviceNotFound, ("device_id",)),
    (PolicyInvalid, ("line", "column", "policy_id")),
    (MudInvalid, ("path",)),
)

# What the OpenAPI document says each status means; the body is always a ProblemDetails.
_MEANING = {
    400: "The body is not well-formed JSON.",
    401: "No API token, or one that is malformed, unknown, revoked or expired.",
    403: "The token's role lacks the permission this operation needs.",
    404: "The named object does not exist.",
    409: "Conflict: a duplicate, a stale version, or an illegal lifecycle transition.",
    413: "The request body is larger than this operation accepts.",
    415: "The body's media type is not one this operation reads.",
    422: "The request is well-formed but invalid; `errors` or the detail says where.",
    428: 'The change needs `If-Match: "<version>"` or a `version` field.',
    500: "A server-side fault (for example, a tampered event log); the detail says which.",
    503: "The database is locked, full or unreachable; retry after `Retry-After` seconds.",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    """Return FastAPI ``responses=`` entries documenting ``statuses`` as problem details."""
    return {status: {"model": ProblemDetails, "description": _MEANING[status]} for status in statuses}


def error_response(error: FleetguardError, *, instance: str) -> JSONResponse:
    """Return the problem-details response for ``error`` at request path ``instance``."""
    extensions: dict[str, object] = {} if error.hint is None else {"hint": error.hint}
    extensions.update(_extensions(error))
    if error.status >= 500:
        _log.warning("%s answered %d %s: %s", instance, error.status, error.code, error.message)
    headers = None
    if error.retry_after_s is not None:
        # RFC 9110 10.2.3: delay-seconds, a whole number; never 0, or clients would retry at once.
        headers = {"Retry-After": str(max(1, math.ceil(error.retry_after_s)))}
    return _problem(
        error.status, error.code, error.message, instance=instance, extensions=extensions, headers=headers
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Make ``app`` answer every expected error with problem details."""
    app.add_exception_handler(FleetguardError, _on_fleetguard_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_exception)


class UnhandledErrorGuard:
    """Pure ASGI middleware: the last resort for exceptions nothing else handled.

    It logs the exception with an incident id and answers 500 with that id and nothing else, so that
    no stack trace, SQL or path reaches the client. If the response had already started (a stream
    failing half-way), it re-raises: aborting the connection is the only way to tell the client that
    the body is incomplete.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:  # the last resort (BLE001 allows it: logger.exception records it)
            incident = secrets.token_hex(6)
            _log.exception("unhandled error, incident %s, in %s %s", incident, scope["method"], scope["path"])
            if started:
                raise
            response = _problem(
                500,
                "internal",
                "an unexpected error occurred; the server log has the details",
                instance=scope["path"],
                extensions={"incident": incident},
            )
            await response(scope, receive, send)


async def _on_fleetguard_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FleetguardError)
    return error_response(exc, instance=request.url.path)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    issues = [_issue(error) for error in exc.errors()]
    malformed = next((i for i in issues if i.type == "json_invalid"), None)
    if malformed is not None:
        position = malformed.loc[-1] if malformed.loc else "?"
        error: FleetguardError = MalformedJson(
            f"the body is not valid JSON ({malformed.msg} at character {position})",
            hint="send a JSON object with Content-Type: application/json",
        )
        return error_response(error, instance=request.url.path)
    return error_response(RequestInvalid(issues), instance=request.url.path)


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    known = exc.status_code in http.HTTPStatus._value2member_map_
    phrase = http.HTTPStatus(exc.status_code).phrase if known else "HTTP error"
    detail = f"{request.method} {request.url.path}: {exc.detail}"
    code = phrase.lower().replace(" ", "-").replace("'", "")
    return _problem(exc.status_code, code, detail, instance=request.url.path, headers=exc.headers)


def _issue(error: Mapping[str, object]) -> Issue:
    loc = error.get("loc", ())
    parts = tuple(p if isinstance(p, int) else str(p) for p in loc) if isinstance(loc, tuple | list) else ()
    message = str(error.get("msg", "invalid"))
    context = error.get("ctx")
    if error.get("type") == "json_invalid" and isinstance(context, Mapping) and "error" in context:
        message = str(context["error"])
    return Issue(parts, message, str(error.get("type", "invalid")))


def _extensions(error: FleetguardError) -> dict[str, object]:
    if isinstance(error, RequestInvalid):
        return {"errors": [{"loc": list(i.loc), "msg": i.msg, "type": i.type} for i in error.issues]}
    for kind, names in _EXTENSIONS:
        if isinstance(error, kind):
            return {name: getattr(error, name) for name in names}
    return {}


def _problem(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str,
    extensions: Mapping[str, object] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, object] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": code.replace("-", " ").capitalize().replace("json", "JSON"),
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    body.update((key, value) for key, value in (extensions or {}).items() if key not in body)
    merged = dict(headers or {})
    if status == 401:
        merged.setdefault("WWW-Authenticate", 'Bearer realm="fleetguard"')
    if status == 503:
        merged.setdefault("Retry-After", str(RETRY_AFTER_S))
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=merged)
