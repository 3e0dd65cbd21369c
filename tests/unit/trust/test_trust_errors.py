"""The trust package's errors: where, what, and which HTTP status."""

from __future__ import annotations

from fleetguard.errors import Conflict, FleetguardError, InvalidInput, NotFound
from fleetguard.trust import PolicyConflict, PolicyInvalid, PolicySetEmpty, TrustError, TrustInputInvalid
from fleetguard.trust.errors import PolicyVersionNotFound


def test_policy_invalid_names_line_column_and_policy() -> None:
    error = PolicyInvalid("attribute `stat` not found", line=3, column=18, policy_id="typo")

    assert str(error) == (
        "line 3, column 18 (policy 'typo'): attribute `stat` not found (fix the policy; nothing was applied)"
    )
    assert (error.line, error.column, error.policy_id, error.detail) == (
        3,
        18,
        "typo",
        "attribute `stat` not found",
    )
    assert (error.status, error.code) == (422, "policy-invalid")


def test_policy_invalid_without_a_policy() -> None:
    error = PolicyInvalid("unexpected end of input", line=1, column=9)

    assert error.message == "line 1, column 9: unexpected end of input"
    assert error.policy_id is None


def test_an_empty_set_is_an_input_error_with_a_way_out() -> None:
    error = PolicySetEmpty()

    assert error.message == "the policy set has no policy; an empty set would deny everything and is refused"
    assert error.hint == "start from `fleetguard policy show --default`"
    assert (error.status, error.code) == (422, "policy-set-empty")


def test_the_error_tree() -> None:
    assert issubclass(TrustError, FleetguardError)
    for leaf, base, status in [
        (PolicyInvalid, InvalidInput, 422),
        (PolicySetEmpty, InvalidInput, 422),
        (TrustInputInvalid, InvalidInput, 422),
        (PolicyVersionNotFound, NotFound, 404),
        (PolicyConflict, Conflict, 409),
    ]:
        assert issubclass(leaf, TrustError)
        assert issubclass(leaf, base)
        assert leaf.status == status
