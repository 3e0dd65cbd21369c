"""Errors of the device agent: one base, leaves that say what the device should do next."""

from __future__ import annotations

from fleetguard.errors import Conflict, FleetguardError, InvalidInput, LimitExceeded, Unavailable

__all__ = [
    "AgentConfigInvalid",
    "AgentError",
    "AgentNotEnrolled",
    "AntiRollbackRefused",
    "BrokerRefused",
    "BrokerUnreachable",
    "EnrollmentPending",
    "EstRequestFailed",
    "EstServerBusy",
    "EstServerUnreachable",
    "ImageMismatch",
    "ImageTooLarge",
    "KeyStoreError",
    "RenewalImpossible",
    "SlotError",
    "SlotInputInvalid",
    "SlotIoFailed",
    "SlotStateInvalid",
    "SlotTransitionRefused",
]


class AgentError(FleetguardError):
    """Base of the agent's errors."""

    code = "agent"


class AgentConfigInvalid(InvalidInput, AgentError):
    """An option or the agent's saved configuration is wrong."""

    code = "agent-config-invalid"


class AgentNotEnrolled(AgentError):
    """The device has no operational certificate yet."""

    status = 409
    code = "agent-not-enrolled"

    def __init__(self, state_dir: str) -> None:
        super().__init__(
            f"the agent in {state_dir} is not enrolled",
            hint="run `fleetguard-agent enroll` with an enrollment token or a factory certificate",
        )


class KeyStoreError(AgentError):
    """The key store cannot create, find or use the device key."""

    code = "agent-key-store"


class EnrollmentPending(AgentError):
    """The server queued the request for an operator's approval (RFC 7030 4.2.3: 202 + Retry-After)."""

    status = 202
    code = "agent-enrollment-pending"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message, hint=f"run the same command again in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


class EstServerBusy(Unavailable, AgentError):
    """The server answered 503; ``retry_after_s`` is its Retry-After when it sent one."""

    code = "agent-est-busy"

    def __init__(self, message: str, *, retry_after_s: float | None) -> None:
        super().__init__(message, hint="the agent backs off and tries again")
        self.retry_after_s = retry_after_s


class EstServerUnreachable(Unavailable, AgentError):
    """No HTTP answer: connection refused, TLS failure, timeout."""

    code = "agent-est-unreachable"


class EstRequestFailed(AgentError):
    """The server refused the request (4xx or 5xx other than 503); ``http_status`` is its status."""

    code = "agent-est-refused"

    def __init__(self, operation: str, http_status: int, reason: str) -> None:
        super().__init__(f"EST {operation} refused with HTTP {http_status}: {reason}")
        self.http_status = http_status
        self.reason = reason


class RenewalImpossible(AgentError):
    """The certificate can no longer be renewed (revoked, or expired beyond the grace window)."""

    status = 409
    code = "agent-renewal-impossible"


class BrokerUnreachable(Unavailable, AgentError):
    """No MQTT session: connection refused, TLS failure, no CONNACK in time, or the session was lost."""

    code = "agent-broker-unreachable"


class BrokerRefused(AgentError):
    """The broker answered CONNECT or SUBSCRIBE with a failure reason code (MQTT 5.0 3.2.2.2, 3.9.3).

    ``reason_code`` is the MQTT reason code: 0x87 "Not authorized" for a quarantined or unknown
    device, 0x8A "Banned", ...
    """

    status = 403
    code = "agent-broker-refused"

    def __init__(self, message: str, *, reason_code: int) -> None:
        super().__init__(message, hint="the agent backs off and tries again")
        self.reason_code = reason_code


class SlotError(AgentError):
    """Base of the A/B slot store's errors (:mod:`fleetguard.agent.slots`)."""

    code = "agent-slot"


class SlotStateInvalid(SlotError):
    """``bootstate.json`` is missing, unreadable, corrupt, of an unknown version, or inconsistent.

    The store never resets it to defaults: that could boot a slot nobody verified.
    """

    code = "agent-slot-state-invalid"

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(
            f"the boot state {path} is not valid: {problem}",
            hint="the agent does not reset it; restore it or re-provision the device",
        )
        self.path = path
        self.problem = problem


class SlotTransitionRefused(Conflict, SlotError):
    """The operation is not allowed in the slots' current state (install while a switch is pending, ...)."""

    code = "agent-slot-transition-refused"

    def __init__(self, operation: str, problem: str) -> None:
        super().__init__(f"cannot {operation}: {problem}")
        self.operation = operation
        self.problem = problem


class SlotInputInvalid(InvalidInput, SlotError):
    """A release name, counter, digest, length or tries count is malformed or out of range."""

    code = "agent-slot-input-invalid"


class AntiRollbackRefused(SlotError):
    """The release's counter is below the device's anti-rollback counter, or reuses the committed one
    for a different image."""

    status = 409
    code = "agent-anti-rollback"

    def __init__(self, message: str, *, counter: int, minimum: int) -> None:
        super().__init__(message, hint="the device only installs releases at or above its rollback counter")
        self.counter = counter
        self.minimum = minimum


class ImageMismatch(SlotError):
    """The image written to the inactive slot does not have the declared length or SHA-256."""

    status = 422
    code = "agent-image-mismatch"

    def __init__(self, message: str, *, expected: str, actual: str) -> None:
        super().__init__(message, hint="the slot was marked invalid; download the image again")
        self.expected = expected
        self.actual = actual


class ImageTooLarge(LimitExceeded, SlotError):
    """The image is longer than its declared length (or the store's limit)."""

    code = "agent-image-too-large"


class SlotIoFailed(SlotError):
    """A slot image or the boot state could not be read or written."""

    code = "agent-slot-io"


class TufUpdateFailed(AgentError):
    """A TUF client operation (``init``, ``refresh`` or ``download``) failed.

    The metadata directory holds only metadata that verified: the refused file was not written.
    ``operation`` names the operation (:mod:`fleetguard.agent.tuf_client`); ``reason`` is python-tuf's
    account of the failure (a refused signature, an expired or rolled-back role, a hash mismatch, a
    failed download, ...).
    """

    status = 502
    code = "agent-tuf-update-failed"

    def __init__(self, operation: str, reason: str) -> None:
        super().__init__(
            f"TUF {operation} failed: {reason}",
            hint="the device keeps the metadata it trusts; fix the repository or the arguments and retry",
        )
        self.operation = operation
        self.reason = reason
