"""The signed rollout scope: parsing, the window, the fraction and the device bucket."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetguard.ota.errors import MetadataInvalid, ScopeViolation
from fleetguard.ota.scope import PPM, RolloutScope, device_bucket, require_in_scope

START = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
END = dt.datetime(2030, 1, 8, tzinfo=dt.UTC)
SALT = "0123456789abcdef"


def _scope(**changes: Any) -> RolloutScope:
    fields: dict[str, Any] = {
        "campaign": "spring-2030",
        "fraction_ppm": PPM,
        "salt": SALT,
        "hardware_ids": ("board-a", "board-b"),
        "not_before": START,
        "not_after": END,
    }
    fields.update(changes)
    return RolloutScope(**fields)


def _custom(**changes: object) -> dict[str, object]:
    custom = _scope().to_custom()
    custom.update(changes)
    return custom


def test_to_custom_is_the_documented_json() -> None:
    assert _scope().to_custom() == {
        "campaign": "spring-2030",
        "fraction_ppm": PPM,
        "salt": SALT,
        "hardware_ids": ["board-a", "board-b"],
        "not_before": "2030-01-01T00:00:00Z",
        "not_after": "2030-01-08T00:00:00Z",
    }


def test_from_custom_converts_offsets_to_utc() -> None:
    scope = RolloutScope.from_custom(_custom(not_before="2030-01-01T02:00:00+02:00"))
    assert scope.not_before == START
    assert scope.not_before.tzinfo == dt.UTC


@pytest.mark.parametrize(
    ("custom", "message"),
    [
        (["not", "an", "object"], "scope must be a JSON object"),
        ("scope", "scope must be a JSON object"),
        (None, "scope must be a JSON object"),
        ({k: v for k, v in _custom().items() if k != "campaign"}, "scope lacks 'campaign'"),
        ({k: v for k, v in _custom().items() if k != "salt"}, "scope lacks 'salt'"),
        ({k: v for k, v in _custom().items() if k != "hardware_ids"}, "scope lacks 'hardware_ids'"),
        ({k: v for k, v in _custom().items() if k != "fraction_ppm"}, "scope lacks 'fraction_ppm'"),
        ({k: v for k, v in _custom().items() if k != "not_before"}, "scope lacks 'not_before'"),
        ({k: v for k, v in _custom().items() if k != "not_after"}, "scope lacks 'not_after'"),
        (_custom(campaign=""), "scope campaign '' is not a valid name"),
        (_custom(campaign="-leading-dash"), "scope campaign '-leading-dash' is not a valid name"),
        (_custom(campaign="a/b"), "is not a valid name"),
        (_custom(campaign="x" * 129), "is not a valid name"),
        (_custom(campaign=123), "scope campaign must be a string"),
        (_custom(fraction_ppm=0), "scope fraction 0 ppm is outside 1..1000000"),
        (_custom(fraction_ppm=-1), "scope fraction -1 ppm is outside"),
        (_custom(fraction_ppm=PPM + 1), "scope fraction 1000001 ppm is outside"),
        (_custom(fraction_ppm=True), "scope fraction_ppm must be an integer"),
        (_custom(fraction_ppm=0.5), "scope fraction_ppm must be an integer"),
        (_custom(fraction_ppm="1000"), "scope fraction_ppm must be an integer"),
        (_custom(salt="0123456789ABCDEF"), "scope salt must be 16 to 64 lower-case hex digits"),
        (_custom(salt="0123456789abcde"), "scope salt must be 16 to 64 lower-case hex digits"),
        (_custom(salt="0" * 65), "scope salt must be 16 to 64 lower-case hex digits"),
        (_custom(salt="0123456789abcdeg"), "scope salt must be 16 to 64 lower-case hex digits"),
        # A signed number must not become a salt that happens to be 16 digits long.
        (_custom(salt=1234567890123456), "scope salt must be a string"),
        (_custom(hardware_ids=[]), "scope must name 1 to 256 hardware ids"),
        (_custom(hardware_ids=[f"b{i}" for i in range(257)]), "scope must name 1 to 256 hardware ids"),
        (_custom(hardware_ids="board-a"), "scope hardware_ids must be a list of strings"),
        (_custom(hardware_ids=["board-a", 7]), "scope hardware_ids must be a list of strings"),
        (_custom(hardware_ids=["../board"]), "scope hardware id '../board' is not a valid name"),
        (_custom(not_before="2030-01-01T00:00:00"), "scope window is not a valid UTC time: .*no UTC offset"),
        (_custom(not_after="next tuesday"), "scope window is not a valid UTC time"),
        (_custom(not_before=20300101), "scope not_before must be a string"),
        (_custom(not_after=None), "scope not_after must be a string"),
        # Year 1 shifted to UTC underflows datetime (OverflowError): still a malformed scope.
        (_custom(not_before="0001-01-01T00:00:00+01:00"), "scope window is not a valid UTC time"),
        (_custom(not_after="2030-01-01T00:00:00Z"), "scope window ends before it starts"),
        (_custom(not_after="2029-12-31T23:59:59Z"), "scope window ends before it starts"),
    ],
)
def test_from_custom_refuses_malformed_fields(custom: object, message: str) -> None:
    with pytest.raises(MetadataInvalid, match=message):
        RolloutScope.from_custom(custom)


def test_naive_window_is_refused_by_the_constructor() -> None:
    with pytest.raises(MetadataInvalid, match="scope window must be timezone-aware"):
        _scope(not_before=dt.datetime(2030, 1, 1))  # noqa: DTZ001 - the naive value under test


def test_limits_are_inclusive() -> None:
    assert _scope(fraction_ppm=1).fraction_ppm == 1
    assert len(_scope(hardware_ids=tuple(f"b{i}" for i in range(256))).hardware_ids) == 256
    assert _scope(campaign="c" * 128).campaign == "c" * 128
    assert _scope(salt="f" * 64).salt == "f" * 64


def test_window_not_before_is_inclusive_and_not_after_exclusive() -> None:
    scope = _scope()
    require_in_scope(scope, device_id="dev-1", hardware_id="board-a", now=START)
    require_in_scope(scope, device_id="dev-1", hardware_id="board-a", now=END - dt.timedelta(microseconds=1))
    with pytest.raises(
        ScopeViolation, match=r"2030-01-08T00:00:00Z is outside the signed window of campaign"
    ):
        require_in_scope(scope, device_id="dev-1", hardware_id="board-a", now=END)
    with pytest.raises(
        ScopeViolation,
        match=r"is outside the signed window of campaign spring-2030 \(2030-01-01T00:00:00Z \.\. "
        r"2030-01-08T00:00:00Z\)",
    ):
        require_in_scope(
            scope, device_id="dev-1", hardware_id="board-a", now=START - dt.timedelta(microseconds=1)
        )


def test_window_compares_instants_not_offsets() -> None:
    tokyo = dt.timezone(dt.timedelta(hours=9))
    require_in_scope(_scope(), device_id="d", hardware_id="board-a", now=START.astimezone(tokyo))


def test_other_hardware_is_refused() -> None:
    with pytest.raises(
        ScopeViolation, match="hardware id 'board-z' is not in the signed scope of campaign spring-2030"
    ):
        require_in_scope(_scope(), device_id="dev-1", hardware_id="board-z", now=START)


def test_fraction_admits_exactly_the_buckets_below_it() -> None:
    device = "dev-42"
    bucket = device_bucket(SALT, device)
    require_in_scope(_scope(fraction_ppm=bucket + 1), device_id=device, hardware_id="board-a", now=START)
    if bucket > 0:
        with pytest.raises(
            ScopeViolation,
            match=rf"device dev-42 \(bucket {bucket}\) is outside the signed fraction of campaign "
            rf"spring-2030 \({bucket} ppm\)",
        ):
            require_in_scope(_scope(fraction_ppm=bucket), device_id=device, hardware_id="board-a", now=START)


def test_covers_is_a_strict_bound() -> None:
    scope = _scope(fraction_ppm=500_000)
    assert scope.covers(0)
    assert scope.covers(499_999)
    assert not scope.covers(500_000)
    assert _scope(fraction_ppm=PPM).covers(PPM - 1)


def test_bucket_is_stable_and_documented() -> None:
    # SHA-256 of "<salt>\0<device>", first 8 bytes big-endian, modulo 10**6.
    digest = hashlib.sha256(b"0123456789abcdef\x00dev-1").digest()
    assert device_bucket(SALT, "dev-1") == int.from_bytes(digest[:8], "big") % PPM
    assert device_bucket(SALT, "dev-1") == device_bucket(SALT, "dev-1")
    assert device_bucket(SALT, "dev-1") != device_bucket("fedcba9876543210", "dev-1")


def test_bucket_is_roughly_uniform() -> None:
    buckets = [device_bucket(SALT, f"device-{i}") for i in range(10_000)]
    assert all(0 <= b < PPM for b in buckets)
    tenths = [0] * 10
    for bucket in buckets:
        tenths[bucket * 10 // PPM] += 1
    # Binomial(10000, 0.1): sd 30; 850..1150 is five standard deviations.
    assert all(850 <= count <= 1150 for count in tenths), tenths
    # A 10% fraction admits about 10% of devices.
    admitted = sum(1 for b in buckets if _scope(fraction_ppm=100_000).covers(b))
    assert 850 <= admitted <= 1150


_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True)
_instants = st.datetimes(
    min_value=dt.datetime(1970, 1, 1),  # noqa: DTZ001 - hypothesis takes naive bounds, then adds tz
    max_value=dt.datetime(2200, 1, 1),  # noqa: DTZ001
    timezones=st.just(dt.UTC),
).map(lambda value: value.replace(microsecond=0))


@st.composite
def _scopes(draw: st.DrawFn) -> RolloutScope:
    start = draw(_instants)
    length = draw(st.integers(min_value=1, max_value=10**9))
    return RolloutScope(
        campaign=draw(_names),
        fraction_ppm=draw(st.integers(min_value=1, max_value=PPM)),
        salt=draw(st.from_regex(r"[0-9a-f]{16,64}", fullmatch=True)),
        hardware_ids=tuple(draw(st.lists(_names, min_size=1, max_size=5))),
        not_before=start,
        not_after=start + dt.timedelta(seconds=length),
    )


@given(_scopes())
def test_to_custom_from_custom_round_trips(scope: RolloutScope) -> None:
    assert RolloutScope.from_custom(scope.to_custom()) == scope


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
_field_values = _json | st.sampled_from(
    ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2030-01-01T00:00:00Z", SALT, "spring"]
)


@given(st.dictionaries(st.sampled_from(list(_custom())), _field_values, max_size=6))
def test_from_custom_on_arbitrary_objects_raises_only_metadata_invalid(fields: dict[str, object]) -> None:
    try:
        scope = RolloutScope.from_custom(fields)
    except MetadataInvalid:
        return
    assert RolloutScope.from_custom(scope.to_custom()) == scope


@given(_json)
def test_from_custom_on_arbitrary_json_raises_only_metadata_invalid(value: object) -> None:
    with pytest.raises(MetadataInvalid):
        RolloutScope.from_custom(value)


@given(
    st.builds(
        dict,
        campaign=_names | _json,
        fraction_ppm=st.integers(min_value=-5, max_value=PPM + 5) | _json,
        salt=st.from_regex(r"[0-9a-f]{14,66}", fullmatch=True) | _json,
        hardware_ids=st.lists(_names | _json, max_size=3) | _json,
        not_before=_instants.map(lambda v: v.isoformat()) | _field_values,
        not_after=_instants.map(lambda v: v.isoformat()) | _field_values,
    )
)
def test_from_custom_on_near_valid_objects_raises_only_metadata_invalid(fields: dict[str, object]) -> None:
    try:
        scope = RolloutScope.from_custom(fields)
    except MetadataInvalid:
        return
    assert scope.to_custom()["campaign"] == fields["campaign"]
