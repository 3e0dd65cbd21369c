"""Enrollment: how a device gets its first operational certificate, and renews it over EST.

The server-side core (no HTTP) is :class:`EnrollmentService`: factory-certificate (IDevID) enrollment
under zero-touch rules and an approval queue, one-time enrollment tokens, and re-enrollment with the
current certificate. The EST edge (RFC 7030) turns requests into :class:`EnrollmentRequest` values and
answers with what the service returns or raises. :class:`BatchService` makes manufacturing batches: a
production run's devices registered and issued certificates at once, with a signed manifest.
"""

from __future__ import annotations

from fleetguard.enroll.approvals import QueuedRequest, RequestStatus
from fleetguard.enroll.batch import (
    BATCH_LABEL,
    MAX_BATCH_DEVICES,
    MAX_BATCH_INPUT_BYTES,
    Batch,
    BatchService,
    CsrInput,
    IssuedBatch,
    StoredBatch,
    read_csrs,
    split_pem_csrs,
)
from fleetguard.enroll.bundle import MIN_PASSPHRASE_LENGTH, BundleFile, require_bundle_passphrase
from fleetguard.enroll.errors import (
    BadEnrollmentRequest,
    BatchRejected,
    EnrollmentConflict,
    EnrollmentError,
    EnrollmentInputRejected,
    EnrollmentNotFound,
    EnrollmentRefused,
    EnrollmentThrottled,
    EnrollmentUnauthenticated,
    FactoryCertificateRefused,
    ManifestInvalid,
    ReenrollRefused,
    TokenRejected,
)
from fleetguard.enroll.flood import EnrollmentLimits
from fleetguard.enroll.identity import FactoryIdentity, ModelAttribute
from fleetguard.enroll.manifest import BatchMode, Manifest, ManifestDevice, parse_manifest, verify_manifest
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
    "BATCH_LABEL",
    "MAX_BATCH_DEVICES",
    "MAX_BATCH_INPUT_BYTES",
    "MAX_TOKEN_TTL",
    "MIN_PASSPHRASE_LENGTH",
    "MIN_TOKEN_TTL",
    "BadEnrollmentRequest",
    "Batch",
    "BatchMode",
    "BatchRejected",
    "BatchService",
    "BundleFile",
    "CsrInput",
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
    "IssuedBatch",
    "Manifest",
    "ManifestDevice",
    "ManifestInvalid",
    "ManufacturerCa",
    "ModelAttribute",
    "Pending",
    "QueuedRequest",
    "ReenrollRefused",
    "RequestStatus",
    "RuleMode",
    "StoredBatch",
    "TokenRejected",
    "TokenStatus",
    "parse_manifest",
    "parse_token",
    "read_csrs",
    "require_bundle_passphrase",
    "split_pem_csrs",
    "verify_manifest",
]
