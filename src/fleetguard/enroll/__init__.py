"""Enrollment: how a device gets its first operational certificate, and renews it over EST.

The server-side core (no HTTP) is :class:`EnrollmentService`: factory-certificate (IDevID) enrollment
under zero-touch rules and an approval queue, one-time enrollment tokens, and re-enrollment with the
current certificate. The EST edge (RFC 7030) turns requests into :class:`EnrollmentRequest` values and
answers with what the service returns or raises.
"""

from __future__ import annotations

from fleetguard.enroll.approvals import QueuedRequest, RequestStatus
from fleetguard.enroll.errors import (
    BadEnrollmentRequest,
    EnrollmentConflict,
    EnrollmentError,
    EnrollmentInputRejected,
    EnrollmentNotFound,
    EnrollmentRefused,
    EnrollmentThrottled,
    EnrollmentUnauthenticated,
    FactoryCertificateRefused,
    ReenrollRefused,
    TokenRejected,
)
from fleetguard.enroll.flood import EnrollmentLimits
from fleetguard.enroll.identity import FactoryIdentity, ModelAttribute
from fleetguard.enroll.manufacturers import ManufacturerCa
from fleetguard.enroll.rules import ANY_MODEL, EnrollmentRule, RuleMode
from fleetguard.enroll.service import (
    EnrollmentOutcome,
    EnrollmentRequest,
    EnrollmentService,
    Issued,
    Pending,
)
from fleetguard.enroll.tokens import MAX_TOKEN_TTL, MIN_TOKEN_TTL, EnrollmentToken, TokenStatus, parse_token

__all__ = [
    "ANY_MODEL",
    "MAX_TOKEN_TTL",
    "MIN_TOKEN_TTL",
    "BadEnrollmentRequest",
    "EnrollmentConflict",
    "EnrollmentError",
    "EnrollmentInputRejected",
    "EnrollmentLimits",
    "EnrollmentNotFound",
    "EnrollmentOutcome",
    "EnrollmentRefused",
    "EnrollmentRequest",
    "EnrollmentRule",
    "EnrollmentService",
    "EnrollmentThrottled",
    "EnrollmentToken",
    "EnrollmentUnauthenticated",
    "FactoryCertificateRefused",
    "FactoryIdentity",
    "Issued",
    "ManufacturerCa",
    "ModelAttribute",
    "Pending",
    "QueuedRequest",
    "ReenrollRefused",
    "RequestStatus",
    "RuleMode",
    "TokenRejected",
    "TokenStatus",
    "parse_token",
]
