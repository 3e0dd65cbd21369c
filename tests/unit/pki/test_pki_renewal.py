"""Renewal policy: jittered renewal time, the grace window, and storm-proof rate limits."""

from __future__ import annotations

import datetime as dt
import random
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetguard.pki.errors import PkiError, RenewalRefused
from fleetguard.pki.renewal import (
    Admission,
    AdmissionOutcome,
    RateLimit,
    RateLimiter,
    Validity,
    is_due,
    renewal_time,
    require_renewable,
)

NOT_BEFORE = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
US = dt.timedelta(microseconds=1)


def _seeded(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 - renewal jitter needs spread, not secrecy


class _Extreme(random.Random):
    """An rng whose ``randint`` always returns one end of the range."""

    def __init__(self, *, high: bool) -> None:
        super().__init__(0)
        self._high = high

    def randint(self, a: int, b: int) -> int:
        return b if self._high else a


# --- renewal_time ----------------------------------------------------------------------------------


def test_thirty_day_certificate_renews_between_day_17_and_day_23() -> None:
    not_after = NOT_BEFORE + 30 * DAY
    # 2/3 of 30 days is day 20; a tenth of the lifetime is 3 days.
    assert renewal_time(NOT_BEFORE, not_after, rng=_Extreme(high=False)) == NOT_BEFORE + 17 * DAY
    assert renewal_time(NOT_BEFORE, not_after, rng=_Extreme(high=True)) == NOT_BEFORE + 23 * DAY


def test_uneven_lifetime_is_rounded_down_to_microseconds() -> None:
    not_after = NOT_BEFORE + dt.timedelta(seconds=1, microseconds=1)  # 1_000_001 us
    # 2L//3 = 666_667 us and L//10 = 100_000 us.
    assert renewal_time(NOT_BEFORE, not_after, rng=_Extreme(high=False)) == NOT_BEFORE + 566_667 * US
    assert renewal_time(NOT_BEFORE, not_after, rng=_Extreme(high=True)) == NOT_BEFORE + 766_667 * US


def test_draws_stay_within_exact_bounds_and_spread_across_them() -> None:
    not_after = NOT_BEFORE + 30 * DAY
    rng = _seeded(20260301)
    draws = [renewal_time(NOT_BEFORE, not_after, rng=rng) for _ in range(20_000)]
    low, high = NOT_BEFORE + 17 * DAY, NOT_BEFORE + 23 * DAY
    assert all(low <= draw <= high for draw in draws)
    # Uniform over 6 days: 20k draws come within an hour of each end and fill both halves.
    assert min(draws) - low < dt.timedelta(hours=1)
    assert high - max(draws) < dt.timedelta(hours=1)
    below_middle = sum(draw < NOT_BEFORE + 20 * DAY for draw in draws)
    assert 9_500 < below_middle < 10_500


def test_same_seed_gives_the_same_time() -> None:
    not_after = NOT_BEFORE + 30 * DAY
    first = renewal_time(NOT_BEFORE, not_after, rng=_seeded(12345))
    assert renewal_time(NOT_BEFORE, not_after, rng=_seeded(12345)) == first


@given(
    st.integers(min_value=1, max_value=10 * 365 * 86_400 * 1_000_000),
    st.integers(min_value=0, max_value=2**32),
)
def test_renewal_is_always_inside_the_validity(lifetime_us: int, seed: int) -> None:
    not_after = NOT_BEFORE + lifetime_us * US
    renew_at = renewal_time(NOT_BEFORE, not_after, rng=_seeded(seed))
    low = NOT_BEFORE + (lifetime_us * 2 // 3 - lifetime_us // 10) * US
    high = NOT_BEFORE + (lifetime_us * 2 // 3 + lifetime_us // 10) * US
    assert low <= renew_at <= high
    assert NOT_BEFORE <= renew_at < not_after


@pytest.mark.parametrize("not_after", [NOT_BEFORE, NOT_BEFORE - DAY])
def test_empty_or_inverted_validity_is_refused(not_after: dt.datetime) -> None:
    with pytest.raises(ValueError, match="is not after not_before"):
        renewal_time(NOT_BEFORE, not_after, rng=_seeded(1))


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="not_before must be timezone-aware"):
        renewal_time(NOT_BEFORE.replace(tzinfo=None), NOT_BEFORE + DAY, rng=_seeded(1))


# --- is_due ----------------------------------------------------------------------------------------


def test_due_from_renew_at_inclusive() -> None:
    validity = Validity(NOT_BEFORE, NOT_BEFORE + 30 * DAY)
    renew_at = NOT_BEFORE + 20 * DAY
    assert not is_due(validity, now=renew_at - US, renew_at=renew_at)
    assert is_due(validity, now=renew_at, renew_at=renew_at)


def test_expired_certificate_is_due_even_with_a_later_renew_at() -> None:
    validity = Validity(NOT_BEFORE, NOT_BEFORE + 30 * DAY)
    assert is_due(validity, now=validity.not_after, renew_at=validity.not_after + DAY)
    assert not is_due(validity, now=validity.not_after - US, renew_at=validity.not_after + DAY)


def test_validity_reports_its_lifetime() -> None:
    assert Validity(NOT_BEFORE, NOT_BEFORE + 30 * DAY).lifetime == 30 * DAY


# --- grace window ----------------------------------------------------------------------------------


def test_renewal_allowed_up_to_and_including_the_end_of_grace() -> None:
    not_after = NOT_BEFORE + 30 * DAY
    grace = 7 * DAY
    require_renewable(not_after, now=not_after - DAY, grace=grace)  # still valid
    require_renewable(not_after, now=not_after + grace, grace=grace)  # last instant of grace


def test_renewal_refused_one_microsecond_after_grace() -> None:
    not_after = NOT_BEFORE + 30 * DAY
    grace = 7 * DAY
    now = not_after + grace + US
    with pytest.raises(
        RenewalRefused, match=r"certificate expired at 2026-03-31T12:00:00\+00:00, beyond"
    ) as info:
        require_renewable(not_after, now=now, grace=grace)
    assert (info.value.not_after, info.value.now, info.value.grace) == (not_after, now, grace)
    assert isinstance(info.value, PkiError)
    assert info.value.status == 403
    assert info.value.hint == "enrol the device again with its factory identity"


def test_zero_grace_means_until_expiry() -> None:
    not_after = NOT_BEFORE + 30 * DAY
    require_renewable(not_after, now=not_after, grace=dt.timedelta(0))
    with pytest.raises(RenewalRefused):
        require_renewable(not_after, now=not_after + US, grace=dt.timedelta(0))


def test_negative_grace_is_refused() -> None:
    with pytest.raises(ValueError, match="grace must not be negative"):
        require_renewable(NOT_BEFORE, now=NOT_BEFORE, grace=-US)


# --- rate limiter ----------------------------------------------------------------------------------


def _limiter(
    *,
    device_rate: float = 1 / 60,
    device_burst: float = 2,
    fleet_rate: float = 1000,
    fleet_burst: float = 1000,
) -> RateLimiter:
    return RateLimiter(
        per_device=RateLimit(rate_per_s=device_rate, burst=device_burst),
        fleet=RateLimit(rate_per_s=fleet_rate, burst=fleet_burst),
    )


def test_device_gets_its_burst_then_waits_exactly_for_the_next_token() -> None:
    limiter = _limiter(device_rate=0.5, device_burst=2)  # a token every 2 s
    assert limiter.try_acquire("dev-1", 100.0) == Admission(AdmissionOutcome.ADMITTED, 0.0)
    assert limiter.try_acquire("dev-1", 100.0).outcome is AdmissionOutcome.ADMITTED
    assert limiter.try_acquire("dev-1", 100.0) == Admission(AdmissionOutcome.DEVICE_LIMITED, 2.0)
    assert limiter.try_acquire("dev-1", 101.0) == Admission(AdmissionOutcome.DEVICE_LIMITED, 1.0)
    assert limiter.try_acquire("dev-1", 102.0).outcome is AdmissionOutcome.ADMITTED
    assert limiter.try_acquire("dev-1", 102.0) == Admission(AdmissionOutcome.DEVICE_LIMITED, 2.0)


def test_one_device_does_not_limit_another() -> None:
    limiter = _limiter(device_burst=1)
    assert limiter.try_acquire("dev-1", 0.0).outcome is AdmissionOutcome.ADMITTED
    assert limiter.try_acquire("dev-1", 0.0).outcome is AdmissionOutcome.DEVICE_LIMITED
    assert limiter.try_acquire("dev-2", 0.0).outcome is AdmissionOutcome.ADMITTED


def test_fleet_limit_stops_a_reconnect_storm_with_exact_retry_after() -> None:
    limiter = _limiter(device_burst=5, fleet_rate=4, fleet_burst=3)  # a fleet token every 0.25 s
    outcomes = [limiter.try_acquire(f"dev-{index}", 10.0) for index in range(5)]
    assert [admission.outcome for admission in outcomes] == [AdmissionOutcome.ADMITTED] * 3 + [
        AdmissionOutcome.FLEET_LIMITED
    ] * 2
    assert outcomes[3].retry_after_s == 0.25
    assert limiter.try_acquire("dev-3", 10.125) == Admission(AdmissionOutcome.FLEET_LIMITED, 0.125)
    assert limiter.try_acquire("dev-3", 10.25).outcome is AdmissionOutcome.ADMITTED


def test_refused_request_takes_no_token_from_either_bucket() -> None:
    limiter = _limiter(device_burst=1, fleet_rate=1, fleet_burst=1)
    assert limiter.try_acquire("dev-1", 0.0).outcome is AdmissionOutcome.ADMITTED
    # dev-2 is refused by the fleet: its own token must still be there when the fleet refills.
    assert limiter.try_acquire("dev-2", 0.0).outcome is AdmissionOutcome.FLEET_LIMITED
    # dev-1 is refused by its own bucket: the fleet token that arrives at t=1 must stay for dev-2.
    assert limiter.try_acquire("dev-1", 1.0).outcome is AdmissionOutcome.DEVICE_LIMITED
    assert limiter.try_acquire("dev-2", 1.0).outcome is AdmissionOutcome.ADMITTED


def test_device_limit_is_checked_before_the_fleet_limit() -> None:
    limiter = _limiter(device_rate=0.5, device_burst=1, fleet_rate=1, fleet_burst=1)
    limiter.try_acquire("dev-1", 0.0)
    assert limiter.try_acquire("dev-1", 0.0) == Admission(AdmissionOutcome.DEVICE_LIMITED, 2.0)


def test_buckets_never_exceed_their_burst() -> None:
    limiter = _limiter(device_rate=1, device_burst=2)
    limiter.try_acquire("dev-1", 0.0)
    outcomes = [limiter.try_acquire("dev-1", 1_000_000.0).outcome for _ in range(3)]
    assert outcomes == [AdmissionOutcome.ADMITTED, AdmissionOutcome.ADMITTED, AdmissionOutcome.DEVICE_LIMITED]


def test_clock_stepping_back_adds_no_tokens() -> None:
    limiter = _limiter(device_rate=1, device_burst=1)
    assert limiter.try_acquire("dev-1", 50.0).outcome is AdmissionOutcome.ADMITTED
    assert limiter.try_acquire("dev-1", 10.0) == Admission(AdmissionOutcome.DEVICE_LIMITED, 1.0)
    assert limiter.try_acquire("dev-1", 50.5) == Admission(AdmissionOutcome.DEVICE_LIMITED, 0.5)
    assert limiter.try_acquire("dev-1", 51.0).outcome is AdmissionOutcome.ADMITTED


def test_device_buckets_are_bounded_least_recently_used_first() -> None:
    limiter = RateLimiter(
        per_device=RateLimit(rate_per_s=1 / 3600, burst=1),
        fleet=RateLimit(rate_per_s=100, burst=100),
        max_keys=2,
    )
    limiter.try_acquire("a", 0.0)
    limiter.try_acquire("b", 0.0)
    assert limiter.try_acquire("a", 0.0).outcome is AdmissionOutcome.DEVICE_LIMITED  # "a" is now recent
    limiter.try_acquire("c", 0.0)  # evicts "b", the least recently used
    assert len(limiter) == 2
    assert limiter.try_acquire("a", 0.0).outcome is AdmissionOutcome.DEVICE_LIMITED  # "a" was kept
    assert limiter.try_acquire("b", 0.0).outcome is AdmissionOutcome.ADMITTED  # forgotten: a fresh bucket


def test_concurrent_requests_never_exceed_the_fleet_burst() -> None:
    limiter = _limiter(device_burst=1000, fleet_rate=1, fleet_burst=100)
    admitted: list[int] = []
    lock = threading.Lock()

    def storm(worker: int) -> None:
        count = sum(
            limiter.try_acquire(f"dev-{worker}-{index}", 5.0).outcome is AdmissionOutcome.ADMITTED
            for index in range(500)
        )
        with lock:
            admitted.append(count)

    threads = [threading.Thread(target=storm, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) == 100


@pytest.mark.parametrize(
    ("seconds", "header"), [(0.0, "1"), (0.25, "1"), (1.0, "1"), (60.0, "60"), (60.2, "61")]
)
def test_retry_after_header_is_whole_seconds_at_least_one(seconds: float, header: str) -> None:
    assert Admission(AdmissionOutcome.FLEET_LIMITED, seconds).retry_after_header == header


@pytest.mark.parametrize(
    ("rate", "burst", "message"),
    [
        (0.0, 1.0, "rate_per_s must be positive"),
        (float("inf"), 1.0, "rate_per_s must be positive and finite"),
        (1.0, 0.5, "burst must be at least 1"),
        (1.0, float("nan"), "burst must be at least 1"),
    ],
)
def test_bad_rate_limits_are_refused(rate: float, burst: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RateLimit(rate_per_s=rate, burst=burst)


def test_zero_max_keys_is_refused() -> None:
    limit = RateLimit(rate_per_s=1, burst=1)
    with pytest.raises(ValueError, match="max_keys must be at least 1"):
        RateLimiter(per_device=limit, fleet=limit, max_keys=0)
