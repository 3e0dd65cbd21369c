"""Renewal policy: when a certificate should be renewed, whether it still may be, and how fast.

Theory of operation.

- **When.** A certificate is renewed at two thirds of its lifetime, jittered by up to a tenth of its
  lifetime either way, so that a fleet enrolled in one afternoon does not come back in one minute
  (:func:`renewal_time`). The time is drawn once, at issuance, from an injected ``random.Random``
  (seed it with the serial to make it reproducible without storing it) and compared with ``now`` by
  :func:`is_due`.
- **Whether.** A device that was offline past its certificate's expiry may still renew with its old
  key during a configurable grace window after ``notAfter``; after that it must enrol again
  (:func:`require_renewable` raises :class:`~fleetguard.pki.errors.RenewalRefused`).
- **How fast.** :class:`RateLimiter` holds a token bucket per device and one for the whole fleet; a
  request must take a token from both. A refusal is an :class:`Admission` whose ``retry_after_s``
  says exactly when a token will be there; the API answers 503 with ``Retry-After``. The limiter's
  clock is a monotonic number of seconds passed in by the caller; its per-device buckets are
  bounded by an LRU cap, so a flood of distinct keys cannot exhaust memory. It is per process:
  several API replicas each enforce their own fleet bucket. Code that takes tokens depends on the
  :class:`Limiter` protocol, so that the worker processes of one server can take them from a single
  limiter held by their parent (``fleetguard.enroll.est_workers``).
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import random
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from fleetguard.pki.errors import RenewalRefused

__all__ = [
    "DEFAULT_MAX_KEYS",
    "Admission",
    "AdmissionOutcome",
    "Limiter",
    "RateLimit",
    "RateLimiter",
    "Validity",
    "is_due",
    "renewal_time",
    "require_renewable",
]

_MICROSECOND = dt.timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Validity:
    """A certificate's validity period (RFC 5280 4.1.2.5), both ends timezone-aware.

    Raises ``ValueError`` if a time is naive or ``not_after`` is not after ``not_before``.
    """

    not_before: dt.datetime
    not_after: dt.datetime

    def __post_init__(self) -> None:
        _require_aware(self.not_before, "not_before")
        _require_aware(self.not_after, "not_after")
        if self.not_after <= self.not_before:
            raise ValueError(f"not_after {self.not_after} is not after not_before {self.not_before}")

    @property
    def lifetime(self) -> dt.timedelta:
        """``not_after - not_before``."""
        return self.not_after - self.not_before


def renewal_time(not_before: dt.datetime, not_after: dt.datetime, *, rng: random.Random) -> dt.datetime:
    """Return when to renew: ``not_before + 2L/3 + j``, with ``j`` uniform in ``[-L/10, +L/10]``.

    ``L`` is the lifetime in whole microseconds; ``2L/3`` and ``L/10`` are rounded down to whole
    microseconds and ``j`` is a whole number of microseconds drawn with ``rng.randint``, so the result
    lies exactly within ``[not_before + 2L//3 - L//10, not_before + 2L//3 + L//10]`` (that is between
    56.7 % and 76.7 % of the lifetime, always before ``not_after``). Raises ``ValueError`` on an empty
    or inverted validity period or a naive time.
    """
    lifetime_us = Validity(not_before, not_after).lifetime // _MICROSECOND
    span_us = lifetime_us // 10
    offset_us = lifetime_us * 2 // 3 + rng.randint(-span_us, span_us)
    return not_before + offset_us * _MICROSECOND


def is_due(validity: Validity, *, now: dt.datetime, renew_at: dt.datetime) -> bool:
    """Return whether a certificate should be renewed at ``now``: ``renew_at`` or ``notAfter`` has come.

    An expired certificate is always due (whether it still *may* renew is :func:`require_renewable`'s
    question). Raises ``ValueError`` on a naive time.
    """
    _require_aware(now, "now")
    _require_aware(renew_at, "renew_at")
    return now >= min(renew_at, validity.not_after)


def require_renewable(not_after: dt.datetime, *, now: dt.datetime, grace: dt.timedelta) -> None:
    """Return if a certificate expiring at ``not_after`` may still be renewed with its key at ``now``.

    Renewal is allowed up to and including ``not_after + grace``; strictly later it raises
    :class:`RenewalRefused` (the device must enrol again). Raises ``ValueError`` on a negative grace
    or a naive time.
    """
    _require_aware(not_after, "not_after")
    _require_aware(now, "now")
    if grace < dt.timedelta(0):
        raise ValueError(f"grace must not be negative, got {grace}")
    if now > not_after + grace:
        raise RenewalRefused(not_after=not_after, now=now, grace=grace)


class AdmissionOutcome(enum.StrEnum):
    """Whether a renewal request may proceed, and if not, which limit stopped it."""

    ADMITTED = "admitted"
    DEVICE_LIMITED = "device-limited"
    FLEET_LIMITED = "fleet-limited"


@dataclass(frozen=True, slots=True)
class Admission:
    """The rate limiter's answer: an outcome and, when refused, the seconds until a token is free."""

    outcome: AdmissionOutcome
    retry_after_s: float

    @property
    def retry_after_header(self) -> str:
        """``retry_after_s`` as an HTTP ``Retry-After`` delay-seconds value (RFC 9110 10.2.3): at least 1."""
        return str(max(1, math.ceil(self.retry_after_s)))


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: ``rate_per_s`` tokens are added each second, up to ``burst`` tokens.

    Raises ``ValueError`` unless the rate is positive and finite and the burst is at least 1.
    """

    rate_per_s: float
    burst: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate_per_s) and self.rate_per_s > 0):
            raise ValueError(f"rate_per_s must be positive and finite, got {self.rate_per_s}")
        if not (math.isfinite(self.burst) and self.burst >= 1):
            raise ValueError(f"burst must be at least 1 token, got {self.burst}")


DEFAULT_MAX_KEYS = 1_000_000
"""Device buckets kept before the least recently used is forgotten (about 260 MB at the cap, UUID keys)."""


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float

    def refill(self, limit: RateLimit, now: float) -> None:
        # A clock that steps backwards adds nothing rather than taking tokens away.
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(limit.burst, self.tokens + elapsed * limit.rate_per_s)
        self.updated = max(self.updated, now)

    def wait_for_token(self, limit: RateLimit) -> float:
        return (1.0 - self.tokens) / limit.rate_per_s


class Limiter(Protocol):
    """Takes tokens for keys: a :class:`RateLimiter`, or a stand-in for one in another process."""

    def try_acquire(self, key: str, now: float) -> Admission:
        """Take a token for ``key`` at monotonic time ``now`` (seconds); return the outcome."""
        ...


class RateLimiter:
    """Per-device and fleet-wide token buckets for renewal requests; safe to share between threads.

    A request is admitted only if both the device's bucket and the fleet's bucket hold a token; then
    one token is taken from each. A refused request takes nothing. A device seen for the first time
    starts with a full bucket. At most ``max_keys`` device buckets are kept: the least recently used is
    dropped first, which only matters for a device that was refused recently and then not heard from
    while ``max_keys`` other devices were; the fleet bucket still bounds the total.
    """

    def __init__(self, *, per_device: RateLimit, fleet: RateLimit, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self._per_device = per_device
        self._fleet = fleet
        self._max_keys = max_keys
        self._fleet_bucket: _Bucket | None = None
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Return how many device buckets are held."""
        return len(self._buckets)

    def try_acquire(self, key: str, now: float) -> Admission:
        """Take a token for device ``key`` at monotonic time ``now`` (seconds); return the outcome.

        ``retry_after_s`` is 0 when admitted, else the exact time until the bucket that refused holds
        a whole token again.
        """
        with self._lock:
            device = self._device_bucket(key, now)
            fleet = self._fleet_bucket_at(now)
            if device.tokens < 1.0:
                return Admission(AdmissionOutcome.DEVICE_LIMITED, device.wait_for_token(self._per_device))
            if fleet.tokens < 1.0:
                return Admission(AdmissionOutcome.FLEET_LIMITED, fleet.wait_for_token(self._fleet))
            device.tokens -= 1.0
            fleet.tokens -= 1.0
            return Admission(AdmissionOutcome.ADMITTED, 0.0)

    def _device_bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(tokens=self._per_device.burst, updated=now)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.refill(self._per_device, now)
        return bucket

    def _fleet_bucket_at(self, now: float) -> _Bucket:
        if self._fleet_bucket is None:
            self._fleet_bucket = _Bucket(tokens=self._fleet.burst, updated=now)
        else:
            self._fleet_bucket.refill(self._fleet, now)
        return self._fleet_bucket


def _require_aware(value: dt.datetime, name: str) -> None:
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value}")
