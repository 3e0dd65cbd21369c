"""Enrollment errors: each refusal names its reason, and its HTTP status is the one RFC 7030 expects.

``EnrollmentUnauthenticated`` (401) means no credential, or one that does not authenticate (RFC 7030
3.2.3: the server answers 401 and the client may retry with another credential). ``EnrollmentRefused``
(403) means the client authenticated but may not have a certificate now. ``EnrollmentThrottled`` (503)
carries ``retry_after_s`` for the ``Retry-After`` header (RFC 7030 4.2.3). Every leaf keeps ``reason``
(the short text that goes into the event log) and, where known, the ``device_id``.
"""

from __future__ import annotations

from fleetguard.errors import Conflict, FleetguardError, InvalidInput, NotFound, Unavailable

__all__ = [
    "BadEnrollmentRequest",
    "BatchRejected",
    "EnrollmentConflict",
    "EnrollmentError",
    "EnrollmentInputRejected",
    "EnrollmentNotFound",
    "EnrollmentRefused",
    "EnrollmentThrottled",
    "EnrollmentUnauthenticated",
    "FactoryCertificateRefused",
    "ManifestInvalid",
    "ReenrollRefused",
    "TokenRejected",
]


class EnrollmentError(FleetguardError):
    """Base of the errors raised by ``fleetguard.enroll``."""

    code = "enroll"

    def __init__(
        self,
        reason: str,
        *,
        device_id: str | None = None,
        message: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message or reason, hint=hint)
        self.reason = reason
        self.device_id = device_id


class EnrollmentUnauthenticated(EnrollmentError):
    """Neither a client certificate nor an enrollment token authenticated the request."""

    status = 401
    code = "enroll-unauthenticated"


class TokenRejected(EnrollmentUnauthenticated):
    """An enrollment token is malformed, unknown, expired, revoked, used, or for another device."""

    code = "enroll-token-rejected"

    def __init__(self, reason: str, *, device_id: str | None = None) -> None:
        super().__init__(
            reason,
            device_id=device_id,
            message=f"enrollment token rejected: {reason}",
            hint="ask an operator for a new token for this device",
        )


class EnrollmentRefused(EnrollmentError):
    """The client authenticated but gets no certificate (no rule allows it, an operator said no, ...)."""

    status = 403
    code = "enroll-refused"


class FactoryCertificateRefused(EnrollmentRefused):
    """A factory (IDevID) certificate does not chain to a registered manufacturer CA, or its subject
    does not name a serial number and a model."""

    code = "enroll-factory-certificate-refused"

    def __init__(self, reason: str) -> None:
        super().__init__(
            reason,
            message=f"factory certificate refused: {reason}",
            hint="register the manufacturer's CA (fleetguard enroll manufacturer add) or check the device",
        )


class ReenrollRefused(EnrollmentRefused):
    """A re-enrollment is refused: the certificate presented is not a current one of ours, or the CSR
    does not match it."""

    code = "enroll-reenroll-refused"

    def __init__(self, reason: str, *, device_id: str | None = None, hint: str | None = None) -> None:
        super().__init__(reason, device_id=device_id, message=f"re-enrollment refused: {reason}", hint=hint)


class BadEnrollmentRequest(EnrollmentError):
    """The request itself is malformed (a CSR that cannot be decoded, a bad key, an oversized body)."""

    status = 400
    code = "enroll-bad-request"


class EnrollmentConflict(Conflict, EnrollmentError):
    """The request conflicts with what is recorded (a pending request holds another key, a request was
    decided already)."""

    code = "enroll-conflict"


class EnrollmentThrottled(Unavailable, EnrollmentError):
    """Too many enrollments from one source, or for the whole installation; retry after ``retry_after_s``."""

    code = "enroll-throttled"

    def __init__(self, reason: str, *, retry_after_s: float) -> None:
        super().__init__(reason, hint=f"retry in {max(1, round(retry_after_s))} s")
        self.retry_after_s = retry_after_s


class EnrollmentNotFound(NotFound, EnrollmentError):
    """No enrollment request, token, rule or manufacturer CA has this id."""

    code = "enroll-not-found"


class EnrollmentInputRejected(InvalidInput, EnrollmentError):
    """An operator's input is malformed or out of range (a manufacturer name, a rule, a token lifetime)."""

    code = "enroll-input-rejected"


class BatchRejected(EnrollmentInputRejected):
    """A manufacturing batch was refused as a whole because of its input; nothing was recorded.

    ``index`` is the 1-based position of the offending CSR (``item``; "device" in key-generation
    mode) in the batch, ``None`` when the batch as a whole is at fault (its count, its model, its
    size); ``origin`` names the file a CSR came from, when it came from one.
    """

    code = "enroll-batch-rejected"

    def __init__(
        self,
        reason: str,
        *,
        index: int | None = None,
        origin: str | None = None,
        item: str = "CSR",
        hint: str | None = None,
    ) -> None:
        where = "" if index is None else f"{item} {index}{'' if origin is None else f' ({origin})'}: "
        super().__init__(reason, message=f"batch rejected: {where}{reason}; nothing was recorded", hint=hint)
        self.index = index
        self.origin = origin


class ManifestInvalid(EnrollmentError):
    """A batch manifest is malformed, or its signature does not verify with the key given."""

    status = 422
    code = "enroll-manifest-invalid"
