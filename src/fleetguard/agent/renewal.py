"""When the agent renews its certificate, and how long it waits after a failure. Pure: time is an argument.

Theory of operation. A certificate is renewed at 2/3 of its lifetime (``renew_at``), moved by a
jitter of up to ±5 % of the lifetime so that a fleet enrolled in one hour does not renew in one
second. The jitter is drawn from a generator seeded with the device id and the certificate serial:
the same certificate always gets the same renewal time, across restarts, and different devices get
different ones.

After a failure the agent waits ``retry_delay``: exponential backoff from 30 s doubling to a cap of
one hour, with "full jitter" (a uniform draw below the bound) so that devices that failed together
do not retry together, and never less than the server's Retry-After. A device that was offline past
its certificate's expiry still tries to re-enroll: the server accepts an expired certificate inside
its grace window (:mod:`fleetguard.pki.renewal`), and refuses it beyond, which the agent reports as
needing a new enrollment.
"""

from __future__ import annotations

import datetime as dt
import enum
import random
from dataclasses import dataclass

__all__ = ["CertificatePhase", "RenewalPolicy", "phase_of", "renew_at", "retry_delay"]


@dataclass(frozen=True, slots=True)
class RenewalPolicy:
    """The renewal point, its jitter, and the backoff bounds."""

    fraction: float = 2 / 3
    jitter: float = 0.05
    backoff_initial_s: float = 30.0
    backoff_max_s: float = 3600.0

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1 or not 0 <= self.jitter < min(self.fraction, 1 - self.fraction):
            raise ValueError("renewal fraction must be in (0, 1) and the jitter keep it inside the lifetime")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError("backoff bounds must satisfy 0 < initial <= max")


class CertificatePhase(enum.StrEnum):
    """Where a certificate is in its life, as the agent sees it."""

    VALID = "valid"
    DUE = "due"
    EXPIRED = "expired"


def renew_at(
    not_before: dt.datetime, not_after: dt.datetime, *, seed: str, policy: RenewalPolicy = RenewalPolicy()
) -> dt.datetime:
    """Return when to renew the certificate valid from ``not_before`` to ``not_after``."""
    lifetime = not_after - not_before
    offset = random.Random(seed).uniform(-policy.jitter, policy.jitter)  # noqa: S311 - spreading load, not secrecy
    return not_before + lifetime * (policy.fraction + offset)


def phase_of(
    now: dt.datetime,
    not_before: dt.datetime,
    not_after: dt.datetime,
    *,
    seed: str,
    policy: RenewalPolicy = RenewalPolicy(),
) -> CertificatePhase:
    """Return whether the certificate is valid, due for renewal, or expired at ``now``."""
    if now >= not_after:
        return CertificatePhase.EXPIRED
    if now >= renew_at(not_before, not_after, seed=seed, policy=policy):
        return CertificatePhase.DUE
    return CertificatePhase.VALID


def retry_delay(
    attempt: int, *, retry_after_s: float | None, rng: random.Random, policy: RenewalPolicy = RenewalPolicy()
) -> float:
    """Return seconds to wait before retry ``attempt`` (0 for the first retry)."""
    bound = min(policy.backoff_max_s, policy.backoff_initial_s * 2 ** min(attempt, 32))
    delay = rng.uniform(policy.backoff_initial_s / 2, bound)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return min(delay, max(policy.backoff_max_s, retry_after_s or 0.0))
