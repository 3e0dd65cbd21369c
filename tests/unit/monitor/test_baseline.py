"""Baselines: learning vs enforcement, Welford with forgetting, bounded top-N, strict JSON round trip."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.errors import InvalidInput
from fleetguard.monitor.baseline import (
    MAX_TOP_N,
    Baseline,
    BaselineInvalid,
    Counted,
    Phase,
    RunningStat,
    Scope,
    WindowSample,
    summarize_window,
)
from fleetguard.monitor.model import FlowRecord

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
T0 = NOW.timestamp()


def flow(start: float, dst: str, dport: int = 443, src: str = "10.0.0.9", octets: int = 100) -> FlowRecord:
    return FlowRecord(start, 1.0, src, dst, 40000, dport, "tcp", octets, octets, 2, 2, "SF")


def sample(octets: int, *destinations: str) -> WindowSample:
    return WindowSample(octets, 1, 1, tuple(Counted(d, 1) for d in destinations), (Counted("tcp/443", 1),))


def test_summarize_window_counts_initiators_inside_the_window() -> None:
    flows = [
        flow(T0, "203.0.113.7"),
        flow(T0 + 10, "203.0.113.7", dport=8883),
        flow(T0 + 20, "198.51.100.1"),
        flow(T0 + 300, "203.0.113.7"),  # next window
        flow(T0, "10.0.0.9", src="203.0.113.7"),  # not a device of ours
    ]
    samples = summarize_window(flows, {"10.0.0.9"}, start=T0, end=T0 + 300)
    assert samples == {
        "10.0.0.9": WindowSample(
            600, 12, 3,
            (Counted("203.0.113.7", 2), Counted("198.51.100.1", 1)),
            (Counted("tcp/443", 2), Counted("tcp/8883", 1)),
        )
    }  # fmt: skip


def test_welford_without_forgetting_is_the_population_variance() -> None:
    values = [3.0, 7.0, 7.0, 19.0, 24.0]
    stat = RunningStat()
    for value in values:
        stat = stat.update(value, 1.0)
    assert stat.weight == 5
    assert stat.mean == pytest.approx(statistics.fmean(values))
    assert stat.variance == pytest.approx(statistics.pvariance(values))


def test_forgetting_follows_a_level_shift() -> None:
    stat = RunningStat()
    for _ in range(200):
        stat = stat.update(100.0, 0.9)
    for _ in range(50):
        stat = stat.update(1000.0, 0.9)
    assert stat.mean == pytest.approx(1000.0, rel=0.01)
    assert stat.weight == pytest.approx(10.0, rel=0.01)  # 1 / (1 - decay)


def test_learning_then_enforcing() -> None:
    baseline = Baseline.new("10.0.0.9", Scope.DEVICE, now=NOW, learning_s=3600, min_windows=2)
    assert baseline.phase(NOW) is Phase.LEARNING
    baseline = baseline.learn(sample(1000, "203.0.113.7"), NOW).learn(sample(1200, "203.0.113.8"), NOW)
    assert baseline.phase(NOW) is Phase.LEARNING  # the period is not over
    later = NOW + dt.timedelta(hours=1)
    assert baseline.phase(later) is Phase.ENFORCING
    assert baseline.knows_destination("203.0.113.8")
    enforced = baseline.learn(sample(5000, "203.0.113.7", "198.51.100.66"), later)
    assert not enforced.knows_destination("198.51.100.66")  # enforcement does not learn new destinations
    assert enforced.destinations[0] == Counted("203.0.113.7", 2)
    assert enforced.windows == 3
    assert enforced.octets.weight > baseline.octets.weight  # statistics keep following the device


def test_not_enough_windows_keeps_learning() -> None:
    baseline = Baseline.new("camera", Scope.TYPE, now=NOW, learning_s=0, min_windows=3)
    baseline = baseline.learn(sample(1, "a"), NOW).learn(sample(1, "b"), NOW)
    assert baseline.phase(NOW + dt.timedelta(days=30)) is Phase.LEARNING


def test_top_n_is_bounded_by_count() -> None:
    baseline = Baseline.new("10.0.0.9", Scope.DEVICE, now=NOW, top_n=3)
    many = WindowSample(1, 1, 1, tuple(Counted(f"203.0.113.{i}", i) for i in range(1, 10)), ())
    learned = baseline.learn(many, NOW)
    assert [c.key for c in learned.destinations] == ["203.0.113.9", "203.0.113.8", "203.0.113.7"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"window_s": 0.0}, "window_s must be positive"),
        ({"decay": 1.5}, "decay must be in"),
        ({"top_n": MAX_TOP_N + 1}, "top_n must be in"),
        ({"learning_until": dt.datetime(2025, 1, 1)}, "timezone-aware"),  # noqa: DTZ001 - the naive time is the point
        ({"destinations": (Counted("a", 1), Counted("a", 2))}, "duplicate key"),
        ({"octets": RunningStat(1.0, math.nan, 0.0)}, "finite"),
    ],
)
def test_invalid_baselines_are_refused(changes: dict[str, object], message: str) -> None:
    base = Baseline.new("10.0.0.9", Scope.DEVICE, now=NOW)
    with pytest.raises(BaselineInvalid, match=message):
        dataclasses.replace(base, **changes)  # type: ignore[arg-type]


# --- JSON ---------------------------------------------------------------------------------------

_keys = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)
_floats = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
_stats = st.builds(RunningStat, st.floats(0, 1e6), _floats, st.floats(0, 1e12))
_counted = st.lists(st.tuples(_keys, st.integers(0, 2**53)), max_size=8, unique_by=lambda kv: kv[0]).map(
    lambda pairs: tuple(Counted(k, c) for k, c in pairs)
)
# hypothesis takes naive bounds and attaches the time zone itself
_times = st.datetimes(
    min_value=dt.datetime(1971, 1, 1),  # noqa: DTZ001
    max_value=dt.datetime(9998, 1, 1),  # noqa: DTZ001
    timezones=st.just(dt.UTC),
)
baselines = st.builds(
    Baseline,
    subject=_keys,
    scope=st.sampled_from(Scope),
    window_s=st.floats(1e-3, 1e7),
    learning_until=_times,
    min_windows=st.integers(0, 10_000),
    decay=st.floats(0.01, 1.0),
    top_n=st.just(16),
    windows=st.integers(0, 2**40),
    destinations=_counted,
    ports=_counted,
    octets=_stats,
    packets=_stats,
    connections=_stats,
)


@settings(max_examples=150, deadline=None)
@given(baselines)
def test_json_round_trip(baseline: Baseline) -> None:
    text = baseline.to_json()
    assert Baseline.from_json(text) == baseline
    assert Baseline.from_json(text.encode()).to_json() == text


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_random_input_is_refused_with_baseline_invalid_only(data: str | bytes) -> None:
    with pytest.raises(BaselineInvalid):
        Baseline.from_json(data)


def _valid_document() -> dict[str, object]:
    baseline = Baseline.new("10.0.0.9", Scope.DEVICE, now=NOW).learn(sample(100, "203.0.113.7"), NOW)
    document: dict[str, object] = json.loads(baseline.to_json())
    return document


_MUTATIONS: list[tuple[str, object, str]] = [
    ("version", 2, "version 2 is not 1"),
    ("scope", "fleet", "scope is invalid"),
    ("windows", True, "windows must be an integer"),
    ("windows", -1, "windows must be an integer"),
    ("window_s", "300", "window_s must be a finite number"),
    ("learning_until", "2025-01-01T00:00:00", "must carry a UTC offset"),
    ("learning_until", "yesterday", "not an ISO 8601 time"),
    ("destinations", [["203.0.113.7"]], r"must be \[key, count\]"),
    ("destinations", [["", 1]], "destinations must be a string"),
    ("destinations", [["a", 1]] * 2, "duplicate key"),
    ("ports", [[f"tcp/{i}", 1] for i in range(MAX_TOP_N + 1)], "at most 1024"),
    ("octets", {"weight": 1.0, "mean": 0.0}, "missing"),
    ("packets", {"weight": -1.0, "mean": 0.0, "m2": 0.0}, "must not be negative"),
    ("subject", "x" * 257, "subject must be a string"),
]


@pytest.mark.parametrize(("key", "value", "message"), _MUTATIONS)
def test_strict_parsing_refuses_each_bad_field(key: str, value: object, message: str) -> None:
    document = _valid_document()
    document[key] = value
    with pytest.raises(BaselineInvalid, match=message):
        Baseline.from_json(json.dumps(document))


def test_extra_missing_duplicate_keys_and_nan_are_refused() -> None:
    document = _valid_document()
    with pytest.raises(BaselineInvalid, match=r"unexpected \['extra'\]"):
        Baseline.from_json(json.dumps({**document, "extra": 1}))
    del document["ports"]
    with pytest.raises(BaselineInvalid, match=r"missing \['ports'\]"):
        Baseline.from_json(json.dumps(document))
    with pytest.raises(BaselineInvalid, match="duplicate key"):
        Baseline.from_json('{"version": 1, "version": 1}')
    with pytest.raises(BaselineInvalid, match="non-finite number NaN"):
        Baseline.from_json('{"version": NaN}')
    with pytest.raises(BaselineInvalid, match="exceeds"):
        Baseline.from_json(" " * (256 * 1024 + 1))


def test_baseline_invalid_is_invalid_input() -> None:
    assert issubclass(BaselineInvalid, InvalidInput)
    assert BaselineInvalid.status == 422
