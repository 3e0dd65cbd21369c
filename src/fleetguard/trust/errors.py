"""Errors of the policy decision point."""

from __future__ import annotations

from fleetguard.errors import Conflict, FleetguardError, InvalidInput, NotFound

__all__ = [
    "PolicyConflict",
    "PolicyInvalid",
    "PolicySetEmpty",
    "PolicyVersionNotFound",
    "TrustError",
    "TrustInputInvalid",
]


class TrustError(FleetguardError):
    """Base of the trust package's errors."""

    code = "trust"


class PolicyInvalid(InvalidInput, TrustError):
    """A policy does not parse or does not validate against the schema; names where."""

    code = "policy-invalid"

    def __init__(self, message: str, *, line: int, column: int, policy_id: str | None = None) -> None:
        where = f"line {line}, column {column}" + ("" if policy_id is None else f" (policy {policy_id!r})")
        super().__init__(f"{where}: {message}", hint="fix the policy; nothing was applied")
        self.line = line
        self.column = column
        self.policy_id = policy_id
        self.detail = message


class PolicySetEmpty(InvalidInput, TrustError):
    """A policy set without a single policy: refused, never read as "allow all"."""

    code = "policy-set-empty"

    def __init__(self) -> None:
        super().__init__(
            "the policy set has no policy; an empty set would deny everything and is refused",
            hint="start from `fleetguard policy show --default`",
        )


class PolicyVersionNotFound(NotFound, TrustError):
    """No policy set with that version."""

    code = "policy-version-not-found"


class TrustInputInvalid(InvalidInput, TrustError):
    """A decision request or posture value is malformed."""

    code = "trust-input-invalid"


class PolicyConflict(Conflict, TrustError):
    """The policy set changed since the caller read it."""

    code = "policy-conflict"
