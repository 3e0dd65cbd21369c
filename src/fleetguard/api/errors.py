"""Errors that only the HTTP edge raises: preconditions, bodies and media types.

Each is a :class:`~fleetguard.errors.FleetguardError` leaf, so :mod:`fleetguard.api.problems` maps it
to problem details like every other error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fleetguard.errors import FleetguardError, InvalidInput, LimitExceeded

__all__ = [
    "ApiError",
    "BodyTooLarge",
    "Issue",
    "MalformedJson",
    "PreconditionRequired",
    "RequestInvalid",
    "UnsupportedMediaType",
]


class ApiError(FleetguardError):
    """Base of the errors raised by ``fleetguard.api``."""

    code = "api"


class PreconditionRequired(ApiError):
    """A change needs a version (``If-Match`` or ``version``) so that it cannot overwrite another."""

    # RFC 6585 section 3: the origin server requires the request to be conditional.
    status = 428
    code = "precondition-required"


class BodyTooLarge(LimitExceeded, ApiError):
    """The request body is larger than the route accepts."""

    code = "body-too-large"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the request body exceeds {limit} bytes",
            hint="send less; FLEETGUARD_MAX_REQUEST_BYTES and FLEETGUARD_MAX_IMPORT_BYTES set the bounds",
        )
        self.limit = limit


class UnsupportedMediaType(ApiError):
    """The body's media type is not one the route reads."""

    status = 415
    code = "unsupported-media-type"


class MalformedJson(ApiError):
    """The body is not JSON at all (as opposed to JSON of the wrong shape, which is 422)."""

    status = 400
    code = "malformed-json"


@dataclass(frozen=True, slots=True)
class Issue:
    """One reason a request was refused: where (``loc``, as FastAPI names it) and why."""

    loc: tuple[str | int, ...]
    msg: str
    type: str


class RequestInvalid(InvalidInput, ApiError):
    """The request's parameters or body do not match the route's schema."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        first = issues[0] if issues else Issue((), "invalid request", "invalid")
        where = ".".join(str(part) for part in first.loc) or "request"
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        super().__init__(f"{where}: {first.msg}{more}")
        self.issues = tuple(issues)
