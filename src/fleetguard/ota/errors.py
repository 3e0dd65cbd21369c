"""Errors of the OTA capability (repositories, releases, rollouts, deltas, the device's update client)."""

from __future__ import annotations

from fleetguard.errors import Conflict, FleetguardError, InvalidInput, LimitExceeded, NotFound

__all__ = [
    "CampaignNotFound",
    "CampaignStateError",
    "DeltaInvalid",
    "DeltaMismatch",
    "DeltaTooLarge",
    "MetadataInvalid",
    "OtaError",
    "ReleaseNotFound",
    "ReportInvalid",
    "ScopeViolation",
    "SigningError",
    "UpdateRejected",
]


class OtaError(FleetguardError):
    """Base of the OTA package's errors."""

    code = "ota"


class MetadataInvalid(InvalidInput, OtaError):
    """TUF metadata is malformed, unsigned, under its threshold, expired, or inconsistent."""

    code = "ota-metadata-invalid"


class SigningError(OtaError):
    """A role cannot be signed: missing keys, threshold not reached, a key that is not the role's."""

    status = 409
    code = "ota-signing"


class ReleaseNotFound(NotFound, OtaError):
    """No release with that id (or image)."""

    code = "ota-release-not-found"


class CampaignNotFound(NotFound, OtaError):
    """No rollout campaign with that id."""

    code = "ota-campaign-not-found"


class CampaignStateError(Conflict, OtaError):
    """The requested rollout transition is not allowed from the campaign's current state."""

    code = "ota-campaign-state"


class ReportInvalid(InvalidInput, OtaError):
    """A device reported a step that is unknown, out of order, or for a release it was not offered."""

    code = "ota-report-invalid"


class ScopeViolation(OtaError):
    """The device is outside the signed rollout scope (fraction, hardware, window)."""

    status = 403
    code = "ota-scope-violation"


class UpdateRejected(OtaError):
    """The update client refused an update: verification failed and nothing was installed."""

    status = 422
    code = "ota-update-rejected"


class DeltaInvalid(InvalidInput, OtaError):
    """A delta is malformed, truncated, of an unknown method, or would exceed its bounds."""

    code = "ota-delta-invalid"


class DeltaMismatch(OtaError):
    """A delta applied to the wrong base, or its output does not have the expected hash and length."""

    status = 422
    code = "ota-delta-mismatch"


class DeltaTooLarge(LimitExceeded, OtaError):
    """A delta or its output is larger than allowed."""

    code = "ota-delta-too-large"
