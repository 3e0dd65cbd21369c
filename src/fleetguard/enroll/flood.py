"""Flood limits on enrollment: token buckets per source address and for the installation.

Theory of operation. Every ``simpleenroll`` takes a token from its source's bucket and from the
installation's (:class:`fleetguard.pki.renewal.RateLimiter`, keyed by source instead of device); a
``simplereenroll`` takes one only when it is refused, since a device holding a current certificate
is limited per device by the PKI already, while a source sending certificates that are not ours
must not write the event log at its own pace. An empty bucket answers 503 with ``Retry-After`` (RFC
7030 4.2.3). Throttled requests are logged at most once per source per ``throttle_log_interval_s``:
logging each would let the flood write the log at flood rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fleetguard.enroll.errors import EnrollmentThrottled
from fleetguard.pki.renewal import AdmissionOutcome, Limiter, RateLimit, RateLimiter

__all__ = ["EnrollmentLimits", "FloodGuard"]


def _per_source() -> RateLimit:
    return RateLimit(rate_per_s=1.0, burst=20)


def _total() -> RateLimit:
    return RateLimit(rate_per_s=100.0, burst=500)


@dataclass(frozen=True, slots=True)
class EnrollmentLimits:
    """The bounds that protect enrollment from its input; every field has a safe default.

    ``per_source``: enrollments per client address (a production line behind one address enrolls
    ``burst`` devices at once, then ``rate_per_s``); ``total``: enrollments for the installation;
    ``max_sources``: source buckets kept (least recently used dropped first); ``max_pending``:
    requests awaiting approval; ``pending_retry_after_s``: the ``Retry-After`` of a 202 answer.
    """

    per_source: RateLimit = field(default_factory=_per_source)
    total: RateLimit = field(default_factory=_total)
    max_sources: int = 100_000
    max_pending: int = 10_000
    pending_retry_after_s: int = 60
    throttle_log_interval_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_sources < 1 or self.max_pending < 1:
            raise ValueError("max_sources and max_pending must be at least 1")
        if self.pending_retry_after_s < 1 or self.throttle_log_interval_s <= 0:
            raise ValueError("pending_retry_after_s must be at least 1 and throttle_log_interval_s positive")


class FloodGuard:
    """The per-source and installation-wide enrollment buckets; ``monotonic`` gives seconds.

    ``limiter`` and ``log_limiter`` replace the buckets made from ``limits`` (the EST worker
    processes take their tokens from their parent's: ``fleetguard.enroll.est_workers``).
    """

    def __init__(
        self,
        limits: EnrollmentLimits,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        limiter: Limiter | None = None,
        log_limiter: Limiter | None = None,
    ) -> None:
        self._monotonic = monotonic
        if limiter is None:
            limiter = RateLimiter(
                per_device=limits.per_source, fleet=limits.total, max_keys=limits.max_sources
            )
        if log_limiter is None:
            once = RateLimit(rate_per_s=1.0 / limits.throttle_log_interval_s, burst=1)
            # The installation-wide bucket of throttle log entries bounds them when many sources
            # flood at once.
            log_limiter = RateLimiter(
                per_device=once, fleet=RateLimit(rate_per_s=10.0, burst=100), max_keys=limits.max_sources
            )
        self.limiter: Limiter = limiter
        self.log_limiter: Limiter = log_limiter

    def check(self, source: str) -> EnrollmentThrottled | None:
        """Take a token for ``source``; return the error to raise when a bucket is empty, else None."""
        admission = self.limiter.try_acquire(source, self._monotonic())
        match admission.outcome:
            case AdmissionOutcome.ADMITTED:
                return None
            case AdmissionOutcome.DEVICE_LIMITED:
                reason = f"too many enrollment requests from {source[:64]}"
            case AdmissionOutcome.FLEET_LIMITED:
                reason = "too many enrollment requests for this installation"
        return EnrollmentThrottled(reason, retry_after_s=admission.retry_after_s)

    def admit(self, source: str) -> None:
        """Take a token for ``source``; raise ``EnrollmentThrottled`` (503) when a bucket is empty."""
        throttled = self.check(source)
        if throttled is not None:
            raise throttled

    def should_log_throttle(self, source: str) -> bool:
        """Return whether a throttled request from ``source`` is to be logged now."""
        admission = self.log_limiter.try_acquire(source, self._monotonic())
        return admission.outcome is AdmissionOutcome.ADMITTED
