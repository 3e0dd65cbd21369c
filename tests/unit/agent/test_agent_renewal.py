"""When to renew and how long to back off: the pure schedule of ``fleetguard.agent.renewal``."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetguard.agent.renewal import CertificatePhase, RenewalPolicy, phase_of, renew_at, retry_delay

NOT_BEFORE = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
LIFETIME = dt.timedelta(days=90)
NOT_AFTER = NOT_BEFORE + LIFETIME
SEEDS = [f"dev-{n}:{n * 7919:x}" for n in range(500)]


class TopOfRange(random.Random):
    """A generator whose uniform draw is always the upper bound: the backoff's ceiling, exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


class BottomOfRange(random.Random):
    """A generator whose uniform draw is always the lower bound."""

    def uniform(self, a: float, b: float) -> float:
        return a


def _fraction(when: dt.datetime) -> float:
    return (when - NOT_BEFORE) / LIFETIME


# -- renew_at -------------------------------------------------------------------------------------


def test_renewal_is_at_two_thirds_of_the_lifetime_within_five_percent() -> None:
    fractions = [_fraction(renew_at(NOT_BEFORE, NOT_AFTER, seed=seed)) for seed in SEEDS]

    assert all(2 / 3 - 0.05 <= fraction <= 2 / 3 + 0.05 for fraction in fractions)


def test_the_same_seed_gives_the_same_time() -> None:
    first = renew_at(NOT_BEFORE, NOT_AFTER, seed="dev-1:1f")

    assert [renew_at(NOT_BEFORE, NOT_AFTER, seed="dev-1:1f") for _ in range(5)] == [first] * 5


def test_different_seeds_spread_over_the_whole_jitter_window() -> None:
    fractions = [_fraction(renew_at(NOT_BEFORE, NOT_AFTER, seed=seed)) for seed in SEEDS]

    assert len(set(fractions)) == len(SEEDS)
    assert min(fractions) < 2 / 3 - 0.045
    assert max(fractions) > 2 / 3 + 0.045
    # each tenth of the window gets some devices: the fleet does not renew in one burst
    deciles = {int((fraction - (2 / 3 - 0.05)) / 0.01) for fraction in fractions}
    assert deciles >= set(range(10))


def test_a_certificate_serial_changes_the_time() -> None:
    assert renew_at(NOT_BEFORE, NOT_AFTER, seed="dev-1:1f") != renew_at(
        NOT_BEFORE, NOT_AFTER, seed="dev-1:20"
    )


def test_the_policy_moves_the_renewal_point() -> None:
    policy = RenewalPolicy(fraction=0.5, jitter=0.0)

    assert renew_at(NOT_BEFORE, NOT_AFTER, seed="x", policy=policy) == NOT_BEFORE + LIFETIME / 2


def test_renewal_time_keeps_the_timezone() -> None:
    assert renew_at(NOT_BEFORE, NOT_AFTER, seed="x").tzinfo is dt.UTC


@given(
    # hypothesis takes naive bounds; timezones= makes every value aware
    not_before=st.datetimes(
        min_value=dt.datetime(1970, 1, 1),  # noqa: DTZ001
        max_value=dt.datetime(2200, 1, 1),  # noqa: DTZ001
        timezones=st.just(dt.UTC),
    ),
    lifetime=st.timedeltas(min_value=dt.timedelta(0), max_value=dt.timedelta(days=365 * 30)),
    seed=st.text(max_size=40),
    fraction=st.floats(min_value=0.05, max_value=0.95),
    jitter_share=st.floats(min_value=0.0, max_value=0.99),
)
def test_renewal_time_is_always_inside_the_validity(
    not_before: dt.datetime, lifetime: dt.timedelta, seed: str, fraction: float, jitter_share: float
) -> None:
    policy = RenewalPolicy(fraction=fraction, jitter=jitter_share * min(fraction, 1 - fraction))
    not_after = not_before + lifetime

    when = renew_at(not_before, not_after, seed=seed, policy=policy)

    assert not_before <= when <= not_after


# -- phase_of -------------------------------------------------------------------------------------


def test_phase_boundaries() -> None:
    due = renew_at(NOT_BEFORE, NOT_AFTER, seed="s")
    tick = dt.timedelta(microseconds=1)

    assert phase_of(NOT_BEFORE, NOT_BEFORE, NOT_AFTER, seed="s") is CertificatePhase.VALID
    assert phase_of(due - tick, NOT_BEFORE, NOT_AFTER, seed="s") is CertificatePhase.VALID
    assert phase_of(due, NOT_BEFORE, NOT_AFTER, seed="s") is CertificatePhase.DUE
    assert phase_of(NOT_AFTER - tick, NOT_BEFORE, NOT_AFTER, seed="s") is CertificatePhase.DUE
    assert phase_of(NOT_AFTER, NOT_BEFORE, NOT_AFTER, seed="s") is CertificatePhase.EXPIRED
    assert phase_of(NOT_AFTER + LIFETIME, NOT_BEFORE, NOT_AFTER, seed="s") is CertificatePhase.EXPIRED


def test_phase_uses_the_policy() -> None:
    policy = RenewalPolicy(fraction=0.25, jitter=0.0)
    now = NOT_BEFORE + LIFETIME * 0.3

    assert phase_of(now, NOT_BEFORE, NOT_AFTER, seed="s", policy=policy) is CertificatePhase.DUE
    assert phase_of(now, NOT_BEFORE, NOT_AFTER, seed="s") is CertificatePhase.VALID


# -- retry_delay ----------------------------------------------------------------------------------


def test_backoff_doubles_from_thirty_seconds_to_the_one_hour_cap() -> None:
    ceilings = [retry_delay(attempt, retry_after_s=None, rng=TopOfRange()) for attempt in range(10)]

    assert ceilings == [30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0, 3600.0, 3600.0]


def test_backoff_never_goes_below_half_the_initial_delay() -> None:
    floors = {retry_delay(attempt, retry_after_s=None, rng=BottomOfRange()) for attempt in range(10)}

    assert floors == {15.0}


def test_backoff_is_a_uniform_draw_below_the_bound() -> None:
    rng = random.Random(1)  # noqa: S311 - a reproducible draw, not a secret
    for attempt, bound in enumerate([30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0, 3600.0]):
        delays = [retry_delay(attempt, retry_after_s=None, rng=rng) for _ in range(200)]
        assert all(15.0 <= delay <= bound for delay in delays)
        assert max(delays) > 0.9 * bound  # full jitter reaches the bound
        assert len(set(delays)) == len(delays)  # devices that failed together spread out


def test_backoff_survives_an_absurd_attempt_count() -> None:
    assert retry_delay(10**9, retry_after_s=None, rng=TopOfRange()) == 3600.0


@pytest.mark.parametrize(
    ("attempt", "retry_after", "expected"),
    [
        (0, 120.0, 120.0),  # above the first bound (30 s): the server's word wins
        (0, 10.0, 30.0),  # below the draw: the draw stands
        (5, 7200.0, 7200.0),  # above the cap: still honoured
        (12, 86400.0, 86400.0),
        (12, 0.0, 3600.0),
    ],
)
def test_backoff_is_never_below_retry_after(attempt: int, retry_after: float, expected: float) -> None:
    assert retry_delay(attempt, retry_after_s=retry_after, rng=TopOfRange()) == expected
    assert retry_delay(attempt, retry_after_s=retry_after, rng=BottomOfRange()) >= retry_after


def test_backoff_follows_the_policy_bounds() -> None:
    policy = RenewalPolicy(backoff_initial_s=1.0, backoff_max_s=5.0)

    delays = [
        retry_delay(attempt, retry_after_s=None, rng=TopOfRange(), policy=policy) for attempt in range(5)
    ]

    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]


# -- RenewalPolicy --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [
        {"fraction": 0.0},
        {"fraction": 1.0},
        {"fraction": 1.5},
        {"fraction": -0.1},
        {"jitter": -0.01},
        {"fraction": 0.9, "jitter": 0.1},  # would move the renewal past the expiry
        {"fraction": 0.1, "jitter": 0.1},  # would move the renewal before the start
        {"fraction": 0.5, "jitter": 0.5},
    ],
)
def test_policy_refuses_a_renewal_point_outside_the_lifetime(arguments: dict[str, float]) -> None:
    with pytest.raises(
        ValueError, match=r"renewal fraction must be in \(0, 1\) and the jitter keep it inside"
    ):
        RenewalPolicy(**arguments)


@pytest.mark.parametrize(
    "arguments",
    [
        {"backoff_initial_s": 0.0},
        {"backoff_initial_s": -1.0},
        {"backoff_initial_s": 61.0, "backoff_max_s": 60.0},
    ],
)
def test_policy_refuses_backoff_bounds_out_of_order(arguments: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"backoff bounds must satisfy 0 < initial <= max"):
        RenewalPolicy(**arguments)


def test_default_policy() -> None:
    policy = RenewalPolicy()

    assert (policy.fraction, policy.jitter, policy.backoff_initial_s, policy.backoff_max_s) == (
        2 / 3,
        0.05,
        30.0,
        3600.0,
    )
    assert RenewalPolicy(backoff_initial_s=60.0, backoff_max_s=60.0).backoff_max_s == 60.0
