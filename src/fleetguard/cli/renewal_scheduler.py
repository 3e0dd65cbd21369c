"""Which certificates are due for renewal, and the scheduler thread that ``fleetguard up`` runs.

Theory of operation. A certificate is *due* at ``now`` when

1. its renewal time has come: ``renewal_due(record) <= now`` (two thirds of its life, jittered by a
   tenth either way and stable per serial, see :mod:`fleetguard.pki.renewal`);
2. it is valid (not revoked) and expired at most ``grace`` ago: beyond the grace window renewal is
   refused and the device must enrol again, so listing it as due would be wrong;
3. it is its device's current certificate: renewing leaves the previous certificate valid until it
   expires, and that one is due no longer (it is superseded by a valid certificate that renewed it
   or that is newer).

:func:`find_due` does not read the whole fleet. Renewal comes at 17/30 of a certificate's life at
the earliest, so a due certificate's ``notAfter`` lies in ``(now - grace, now + horizon]`` with
``horizon`` at least 13/30 of the lifetime (:class:`DueWindow` uses half the configured device
certificate lifetime). It pages through that window in (``notAfter``, serial) order, most urgent
first, stops after ``max_scan`` certificates (the report then says it is incomplete), and reads the
certificates of each device that has a candidate once, to drop superseded ones. A certificate
issued with a longer lifetime than the one configured now enters the window late, but still well
before it expires.

:class:`RenewalScheduler` runs :func:`find_due` every ``interval_s`` seconds in a daemon thread and
logs what is due. Device certificates are renewed by their devices (over EST, issue 4), so for them
it reports the count and the first serials at INFO and changes nothing; CRLs need no re-signing here,
the revocation publisher rebuilds them when half their validity has passed. A failed round is logged
and retried at the next interval, as the checkpointer does.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from fleetguard.config import Settings
from fleetguard.errors import FleetguardError
from fleetguard.pki.service import CertificateRecord, CertificateStatus, FleetView
from fleetguard.types import utc_now

__all__ = [
    "DEFAULT_MAX_SCAN",
    "RENEWAL_CHECK_INTERVAL_S",
    "CertificateSource",
    "DueRenewal",
    "DueReport",
    "DueWindow",
    "RenewalScheduler",
    "describe",
    "find_due",
]

RENEWAL_CHECK_INTERVAL_S = 60.0
"""How often ``fleetguard up`` looks for due renewals; certificates live for days, a minute is plenty."""

DEFAULT_MAX_SCAN = 10_000
"""Certificates read per round at most: a bound on one round's work, not on the fleet."""

_PAGE = 1000
_DEVICE_CERTIFICATES = 10_000  # the service's largest page: a device with more is not sensible
_SAMPLE = 5  # serials named in the log line
_MICROSECOND = dt.timedelta(microseconds=1)
_JOIN_TIMEOUT_S = 30.0

_logger = logging.getLogger(__name__)


class CertificateSource(Protocol):
    """What :func:`find_due` reads: :class:`~fleetguard.pki.service.CertificateService` provides it."""

    def certificates(
        self,
        *,
        view: FleetView = ...,
        device_id: str | None = ...,
        within: dt.timedelta = ...,
        now: dt.datetime | None = ...,
        limit: int = ...,
        after: int | None = ...,
    ) -> list[CertificateRecord]:
        """Return one fleet view, ordered by ``notAfter`` then serial."""
        ...

    def renewal_due(self, record: CertificateRecord) -> dt.datetime:
        """Return when ``record`` should be renewed."""
        ...

    def renew_servers(self, *, actor: str, now: dt.datetime | None = ...) -> list[CertificateRecord]:
        """Re-issue the server's own certificates that are due; return the new ones."""
        ...


@dataclass(frozen=True, slots=True)
class DueWindow:
    """How far back (``grace``) and ahead (``horizon``) of ``now`` a due certificate's ``notAfter`` lies."""

    grace: dt.timedelta
    horizon: dt.timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> DueWindow:
        """Return the window for the configured renewal grace and device certificate lifetime."""
        return cls(
            grace=dt.timedelta(days=settings.renewal_grace_days),
            # Renewal comes at 2/3 - 1/10 = 17/30 of the life at the earliest: 13/30 < 1/2 before the end.
            horizon=dt.timedelta(days=settings.device_certificate_days) / 2,
        )


@dataclass(frozen=True, slots=True)
class DueRenewal:
    """A certificate whose renewal time has come."""

    record: CertificateRecord
    renew_at: dt.datetime


@dataclass(frozen=True, slots=True)
class DueReport:
    """What is due at ``at``, most urgent (earliest ``notAfter``) first.

    ``complete`` is False when the scan stopped after ``scanned`` certificates: more may be due.
    """

    at: dt.datetime
    due: tuple[DueRenewal, ...]
    scanned: int
    complete: bool


def find_due(
    source: CertificateSource, window: DueWindow, *, now: dt.datetime, max_scan: int = DEFAULT_MAX_SCAN
) -> DueReport:
    """Return the certificates due for renewal at ``now`` (see the module docstring).

    Raises what ``source`` raises (``StoreUnavailable`` for a database that cannot be read).
    """
    # notAfter >= now - grace, inclusive as in require_renewable; the view's lower bound is exclusive.
    low = now - window.grace - _MICROSECOND
    candidates: list[DueRenewal] = []
    scanned = 0
    complete = True
    for record in _window(source, low, now + window.horizon):
        if scanned == max_scan:
            complete = False
            break
        scanned += 1
        renew_at = source.renewal_due(record)
        if renew_at <= now:
            candidates.append(DueRenewal(record, renew_at))
    current = _current_by_device(source, {c.record.device_id for c in candidates})
    due = tuple(
        c for c in candidates if c.record.device_id is None or c.record.serial in current[c.record.device_id]
    )
    return DueReport(at=now, due=due, scanned=scanned, complete=complete)


def _window(source: CertificateSource, low: dt.datetime, high: dt.datetime) -> Iterator[CertificateRecord]:
    """Yield the valid certificates with ``low < notAfter <= high`` in (notAfter, serial) order.

    Keyset paging: after a full page ending at (t, s), first the rest of the tie at ``notAfter == t``
    (serials after s), then the window from t on, exclusive. Certificates issued in one batch share
    their notAfter, so ties are common.
    """
    start = low
    while start < high:
        page = source.certificates(view=FleetView.EXPIRING, now=start, within=high - start, limit=_PAGE)
        yield from page
        if len(page) < _PAGE:
            return
        yield from _tie(source, page[-1])
        start = page[-1].not_after


def _tie(source: CertificateSource, last: CertificateRecord) -> Iterator[CertificateRecord]:
    after = last.serial
    while True:
        page = source.certificates(
            view=FleetView.EXPIRING, now=last.not_after - _MICROSECOND, within=_MICROSECOND,
            limit=_PAGE, after=after,
        )  # fmt: skip
        yield from page
        if len(page) < _PAGE:
            return
        after = page[-1].serial


def _current_by_device(source: CertificateSource, device_ids: set[str | None]) -> dict[str, set[int]]:
    """Return, per device, the serials of its valid certificates that no valid certificate supersedes.

    A certificate is superseded by a valid one that renewed it (``renewed_from``) or that is newer
    (a later notBefore). notBefore has whole seconds, so the renewal link decides within a second.
    """
    current: dict[str, set[int]] = {}
    for device_id in sorted(d for d in device_ids if d is not None):
        records = source.certificates(view=FleetView.ALL, device_id=device_id, limit=_DEVICE_CERTIFICATES)
        valid = [r for r in records if r.status is CertificateStatus.VALID]
        renewed = {r.renewed_from for r in valid}
        latest = max((r.not_before for r in valid), default=None)
        current[device_id] = {r.serial for r in valid if r.not_before == latest and r.serial not in renewed}
    return current


class RenewalScheduler:
    """Logs the certificates due for renewal every ``interval_s`` seconds, in a daemon thread."""

    def __init__(
        self,
        source: CertificateSource,
        window: DueWindow,
        *,
        interval_s: float = RENEWAL_CHECK_INTERVAL_S,
        clock: Callable[[], dt.datetime] = utc_now,
        max_scan: int = DEFAULT_MAX_SCAN,
    ) -> None:
        self._source = source
        self._window = window
        self._interval_s = interval_s
        self._clock = clock
        self._max_scan = max_scan
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleetguard-renewal-scheduler", daemon=True)

    def check(self) -> DueReport:
        """Return what is due now (by the scheduler's clock); raises as :func:`find_due`."""
        return find_due(self._source, self._window, now=self._clock(), max_scan=self._max_scan)

    def start(self) -> None:
        """Start the background thread; its first round comes after one interval."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (a round in progress finishes first)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(_JOIN_TIMEOUT_S)

    def run_round(self) -> DueReport | None:
        """Renew the server's own certificates that are due, then report device certificates due.

        Returns the report, or None if the check failed.
        """
        try:
            for record in self._source.renew_servers(actor="renewal scheduler", now=self._clock()):
                _logger.info("renewed server certificate %x (%s)", record.serial, record.subject)
            report = self.check()
        except FleetguardError as exc:
            _logger.error("renewal check failed: %s", exc)  # noqa: TRY400 - one line, no traceback
            return None
        if report.due or not report.complete:
            _logger.info("%s", describe(report))
        return report

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            self.run_round()


def describe(report: DueReport) -> str:
    """Return one line for people: how many certificates are due, and the first few serials."""
    count = f"{len(report.due)}{'' if report.complete else '+'}"
    sample = ", ".join(
        f"{d.record.serial:x} ({d.record.device_id or d.record.subject})" for d in report.due[:_SAMPLE]
    )
    more = ", ..." if len(report.due) > _SAMPLE else ""
    line = f"{count} certificates due for renewal (devices renew their own over EST)"
    if sample:
        line += f": {sample}{more}"
    if not report.complete:
        line += f"; the check stopped after {report.scanned} certificates, more may be due"
    return line
