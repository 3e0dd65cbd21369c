"""Errors of the segmentation capability."""

from __future__ import annotations

from fleetguard.errors import FleetguardError, InvalidInput, LimitExceeded, NotFound, Unavailable

__all__ = [
    "CaptureInvalid",
    "MudInvalid",
    "MudSignatureInvalid",
    "MudTooLarge",
    "ProfileNotFound",
    "RulesetRejected",
    "SegmentError",
]


class SegmentError(FleetguardError):
    """Base of the segmentation package's errors."""

    code = "segment"


class MudInvalid(InvalidInput, SegmentError):
    """A MUD file does not parse or breaks RFC 8520 / RFC 8519; ``path`` names where (JSON pointer)."""

    code = "mud-invalid"

    def __init__(self, message: str, *, path: str = "") -> None:
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{message}", hint="fix the MUD file; nothing was applied")
        self.path = path
        self.detail = message


class MudTooLarge(LimitExceeded, SegmentError):
    """A MUD file or signature is over the size limit, or has too many ACLs or ACEs."""

    code = "mud-too-large"


class MudSignatureInvalid(InvalidInput, SegmentError):
    """A MUD file's detached CMS signature is missing, malformed, or not by a trusted signer."""

    code = "mud-signature-invalid"


class ProfileNotFound(NotFound, SegmentError):
    """No stored MUD profile has that URL."""

    code = "mud-profile-not-found"


class CaptureInvalid(InvalidInput, SegmentError):
    """A packet capture or flow-record file is corrupt, truncated or over its limits."""

    code = "capture-invalid"


class RulesetRejected(Unavailable, SegmentError):
    """nft refused a ruleset or an element update; the ruleset in force is unchanged."""

    code = "ruleset-rejected"
