"""The enrollment token text ``fge_<id>_<secret>`` and a token's status, without a database.

Property tests: any string either parses to the id and secret it spells or raises ``TokenRejected``
(never another exception); every generated token round-trips; a token changed in one character is
either still well-formed or refused.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetguard.enroll import EnrollmentToken, TokenRejected, TokenStatus, parse_token
from fleetguard.enroll.tokens import TokenText

NOW = dt.datetime(2026, 3, 14, 12, 0, tzinfo=dt.UTC)
URLSAFE = string.ascii_letters + string.digits + "-_"
ids = st.text(alphabet="0123456789abcdef", min_size=12, max_size=12)
secrets_ = st.text(alphabet=URLSAFE, min_size=43, max_size=43)


def _parsed(text: str) -> TokenText | TokenRejected:
    try:
        return parse_token(text)
    except TokenRejected as exc:
        return exc


@given(st.text())
def test_any_string_parses_or_is_rejected(text: str) -> None:
    outcome = _parsed(text)
    if isinstance(outcome, TokenRejected):
        assert (outcome.reason, outcome.status) == ("malformed token: expected fge_<id>_<secret>", 401)
    else:
        assert str(outcome) == text


@given(st.binary(max_size=200).map(lambda raw: raw.decode("latin-1")))
def test_arbitrary_bytes_as_text_parse_or_are_rejected(text: str) -> None:
    with contextlib.suppress(TokenRejected):  # anything else fails the test
        parse_token(text)


@given(ids, secrets_)
def test_well_formed_tokens_round_trip(token_id: str, secret: str) -> None:
    token = TokenText(token_id, secret)
    assert parse_token(str(token)) == token


@given(st.data())
def test_a_token_changed_in_one_place_is_refused_or_still_well_formed(data: st.DataObject) -> None:
    text = str(TokenText.generate())
    position = data.draw(st.integers(min_value=0, max_value=len(text) - 1))
    replacement = data.draw(st.characters())
    mutated = text[:position] + replacement + text[position + 1 :]
    outcome = _parsed(mutated)
    assert isinstance(outcome, TokenRejected) or str(outcome) == mutated


@pytest.mark.parametrize(
    "text",
    [
        "",
        "fge_",
        "fge_0123456789ab_" + "A" * 42,
        "fge_0123456789ab_" + "A" * 44,
        "fge_0123456789AB_" + "A" * 43,  # the id is lower-case hex
        "fge_0123456789ab_" + "A" * 42 + "=",  # no base64 padding
        "fge_0123456789ab_" + "A" * 42 + "\n",
        "fgt_0123456789ab_" + "A" * 43,  # an API token is not an enrollment token
        " fge_0123456789ab_" + "A" * 43,
        "fge_0123456789ab_" + "A" * 43 + "x" * 1_000_000,
    ],
)
def test_malformed_tokens_are_rejected(text: str) -> None:
    with pytest.raises(TokenRejected, match="malformed token"):
        parse_token(text)


def test_generated_tokens_are_unique_and_well_formed() -> None:
    tokens = {str(TokenText.generate()) for _ in range(100)}
    assert len(tokens) == 100
    assert all(parse_token(token) for token in tokens)


def _token(**changes: dt.datetime | None) -> EnrollmentToken:
    values: dict[str, dt.datetime | None] = {
        "created_at": NOW,
        "expires_at": NOW + dt.timedelta(hours=1),
        "used_at": None,
        "revoked_at": None,
    }
    values.update(changes)
    return EnrollmentToken(
        id="0123456789ab", device_id="cam-1", created_at=NOW, expires_at=values["expires_at"] or NOW,
        used_at=values["used_at"], used_source=None, revoked_at=values["revoked_at"],
    )  # fmt: skip


@pytest.mark.parametrize(
    ("token", "status", "reason"),
    [
        (_token(), TokenStatus.ACTIVE, None),
        (_token(expires_at=NOW), TokenStatus.EXPIRED, "expired at 2026-03-14T12:00:00+00:00"),
        (_token(used_at=NOW), TokenStatus.USED, "already used"),
        (_token(revoked_at=NOW, used_at=NOW), TokenStatus.REVOKED, "revoked"),
    ],
)
def test_token_status_and_usability(token: EnrollmentToken, status: TokenStatus, reason: str | None) -> None:
    assert token.status(NOW) is status
    if reason is None:
        token.require_usable("cam-1", NOW)
        return
    with pytest.raises(TokenRejected) as rejected:
        token.require_usable("cam-1", NOW)
    assert rejected.value.reason == reason


@pytest.mark.parametrize(
    ("device_id", "reason"),
    [("cam-2", "the token was issued for another device"), (None, "no device id: send it as the HTTP Basic")],
)
def test_token_is_bound_to_its_device(device_id: str | None, reason: str) -> None:
    with pytest.raises(TokenRejected, match=reason):
        _token().require_usable(device_id, NOW)
