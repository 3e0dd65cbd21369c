"""The device protocol's bodies: what is serialized parses back to the same value, and anything else
(oversized, not JSON, missing or unknown fields, wrong types, out-of-range counters, non-printable
text, timestamps without an offset) raises ReportInvalid and nothing else."""

from __future__ import annotations

import contextlib
import datetime as dt
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetguard.ota.errors import ReportInvalid
from fleetguard.ota.wire import MAX_BODY, CheckIn, CheckInReply, StepReport

TEXT = st.text(
    st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp", "Cf", "Co", "Cn", "Zs")),
    min_size=1,
    max_size=128,
)
COUNTER = st.integers(min_value=0, max_value=2**62 - 1)
MOMENT = st.datetimes(
    min_value=dt.datetime(2000, 1, 1),  # noqa: DTZ001 - hypothesis takes naive bounds
    max_value=dt.datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=st.just(dt.UTC),
)


@given(TEXT, TEXT, COUNTER, COUNTER)
def test_a_check_in_round_trips(hardware_id: str, release: str, counter: int, version: int) -> None:
    value = CheckIn(hardware_id, release, counter, version)

    assert CheckIn.parse(value.to_bytes()) == value


@given(st.booleans(), COUNTER)
def test_a_check_in_reply_round_trips(update: bool, version: int) -> None:
    value = CheckInReply(update, version)

    assert CheckInReply.parse(value.to_bytes()) == value


@given(TEXT, TEXT, TEXT, st.text(max_size=512), MOMENT)
def test_a_step_report_round_trips(
    campaign: str, release: str, step: str, detail: str, at: dt.datetime
) -> None:
    value = StepReport(campaign, release, step, detail, at)
    data = value.to_bytes()
    if len(data) > MAX_BODY:  # a detail of 512 characters that escape to 6 bytes each
        with pytest.raises(ReportInvalid, match=r"body is \d+ bytes; at most 4096"):
            StepReport.parse(data)
        return

    assert StepReport.parse(data) == value


@given(st.binary(max_size=MAX_BODY + 10))
def test_arbitrary_bytes_parse_or_raise_report_invalid(data: bytes) -> None:
    for kind in (CheckIn, CheckInReply, StepReport):
        with contextlib.suppress(ReportInvalid):
            kind.parse(data)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    )
)
def test_arbitrary_json_parses_or_raises_report_invalid(value: object) -> None:
    data = json.dumps(value).encode()
    for kind in (CheckIn, CheckInReply, StepReport):
        with contextlib.suppress(ReportInvalid):
            kind.parse(data)


def _check_in(**fields: object) -> bytes:
    body: dict[str, object] = {
        "hardware_id": "cam-x",
        "release": "1.0",
        "release_counter": 1,
        "director_version": 0,
    }
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"x" * (MAX_BODY + 1), r"body is 4097 bytes; at most 4096"),
        (b"{", r"body is not JSON"),
        (b"\xff", r"body is not JSON"),
        (b"[1]", r"body must be a JSON object"),
        (b'{"hardware_id": "a", "hardware_id": "b"}', r"duplicate key 'hardware_id'"),
        (_check_in(release_counter=float("nan")), r"NaN is not JSON"),
        (_check_in(extra=1), r"missing \[\], unknown \['extra'\]"),
        (_check_in(release=...), r"missing \['release'\], unknown \[\]"),
        (_check_in(release_counter=True), r"release_counter must be a non-negative integer"),
        (_check_in(release_counter=-1), r"release_counter must be a non-negative integer"),
        (_check_in(release_counter=2**62), r"release_counter must be a non-negative integer"),
        (_check_in(director_version=1.0), r"director_version must be a non-negative integer"),
        (_check_in(director_version="1"), r"director_version must be a non-negative integer"),
        (_check_in(hardware_id=""), r"hardware_id must be printable text of 1 to 128 characters"),
        (_check_in(hardware_id="a" * 129), r"hardware_id must be printable text"),
        (_check_in(release="1.0\n"), r"release must be printable text"),
        (_check_in(release=None), r"release must be printable text"),
        (b"[" * 5000 + b"]" * 5000, r"body is 10000 bytes"),
        (b"[" * 2000 + b"]" * 2000, r"body must be a JSON object|body is not JSON"),
    ],
)
def test_a_bad_check_in_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(ReportInvalid, match=message):
        CheckIn.parse(data)


def _report(**fields: object) -> bytes:
    body: dict[str, object] = {
        "campaign": "c1", "release": "2.0", "step": "downloading", "detail": "", "at": "2026-01-05T10:00:00Z",
    }  # fmt: skip
    body.update(fields)
    return json.dumps(body).encode()


def test_a_report_parses_to_utc() -> None:
    parsed = StepReport.parse(_report(at="2026-01-05T12:00:00+02:00", detail="ok"))

    assert parsed == StepReport("c1", "2.0", "downloading", "ok", dt.datetime(2026, 1, 5, 10, tzinfo=dt.UTC))
    assert parsed.at.tzinfo is dt.UTC


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_report(at="2026-01-05T10:00:00"), r"at is not a UTC timestamp: timestamp .* has no UTC offset"),
        (_report(at="yesterday"), r"at is not a UTC timestamp"),
        (_report(at=1767607200), r"at must be printable text"),
        (_report(detail="x" * 513), r"detail must be a string of at most 512 characters"),
        (_report(detail=None), r"detail must be a string"),
        (_report(step=""), r"step must be printable text"),
        (_report(campaign="c\x001"), r"campaign must be printable text"),
    ],
)
def test_a_bad_report_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(ReportInvalid, match=message):
        StepReport.parse(data)


def test_a_reply_with_a_non_boolean_update_is_refused() -> None:
    with pytest.raises(ReportInvalid, match=r"update must be true or false"):
        CheckInReply.parse(b'{"update": 1, "director_version": 3}')


def test_serialized_bodies_are_compact_and_sorted() -> None:
    assert CheckInReply(True, 3).to_bytes() == b'{"director_version":3,"update":true}'
    assert CheckIn("cam-x", "1.0", 1, 0).to_bytes() == (
        b'{"director_version":0,"hardware_id":"cam-x","release":"1.0","release_counter":1}'
    )
    report = StepReport(
        "c1",
        "2.0",
        "failed",
        "y" * 600,
        dt.datetime(2026, 1, 5, 11, tzinfo=dt.timezone(dt.timedelta(hours=1))),
    )
    assert json.loads(report.to_bytes()) == {
        "campaign": "c1", "release": "2.0", "step": "failed", "detail": "y" * 512,
        "at": "2026-01-05T10:00:00+00:00",
    }  # fmt: skip
