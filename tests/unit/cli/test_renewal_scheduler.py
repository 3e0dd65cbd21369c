"""The renewal scheduler: what is due (window, grace, revocation, supersession, paging) and the thread."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, field

import pytest

from fleetguard.cli.renewal_scheduler import (
    DueReport,
    DueWindow,
    RenewalScheduler,
    describe,
    find_due,
)
from fleetguard.config import Settings
from fleetguard.errors import Unavailable
from fleetguard.pki.revocation import RevocationReason
from fleetguard.pki.service import CertificateRecord, CertificateStatus, FleetView

NOW = dt.datetime(2026, 3, 14, 15, 9, 26, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
LIFE = 30 * DAY
WINDOW = DueWindow(grace=30 * DAY, horizon=LIFE / 2)


def _record(
    serial: int,
    *,
    device: str | None = "cam-1",
    not_before: dt.datetime = NOW - 25 * DAY,
    life: dt.timedelta = LIFE,
    status: CertificateStatus = CertificateStatus.VALID,
    renewed_from: int | None = None,
) -> CertificateRecord:
    revoked = status is CertificateStatus.REVOKED
    return CertificateRecord(
        serial=serial, device_id=device, profile="device" if device else "server", subject=f"CN={device}",
        issuer_id="issuing-1", crl_partition=serial % 1024, not_before=not_before,
        not_after=not_before + life, sha256=serial.to_bytes(32), status=status,
        revoked_at=not_before if revoked else None,
        reason=RevocationReason.KEY_COMPROMISE if revoked else None, renewed_from=renewed_from, der=b"",
    )  # fmt: skip


@dataclass
class FakeCertificates:
    """The two methods of CertificateService that find_due reads, over a list, with the same semantics."""

    records: list[CertificateRecord]
    server_renewals: list[CertificateRecord] = field(default_factory=list)
    calls: int = 0
    failure: Exception | None = None
    called: threading.Event = field(default_factory=threading.Event)

    def certificates(
        self,
        *,
        view: FleetView = FleetView.ALL,
        device_id: str | None = None,
        within: dt.timedelta = 7 * DAY,
        now: dt.datetime | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> list[CertificateRecord]:
        self.calls += 1
        self.called.set()
        if self.failure is not None:
            raise self.failure
        moment = now or NOW
        cursor = next(((r.not_after, r.serial) for r in self.records if r.serial == after), None)
        chosen = [
            r
            for r in self.records
            if _in_view(r, view, moment, within)
            and (device_id is None or r.device_id == device_id)
            and (cursor is None or (r.not_after, r.serial) > cursor)
        ]
        return sorted(chosen, key=lambda r: (r.not_after, r.serial))[:limit]

    def renewal_due(self, record: CertificateRecord) -> dt.datetime:
        return record.not_before + (record.not_after - record.not_before) * 2 / 3

    def renew_servers(self, *, actor: str, now: dt.datetime | None = None) -> list[CertificateRecord]:
        renewed, self.server_renewals = self.server_renewals, []
        return renewed


def _in_view(record: CertificateRecord, view: FleetView, now: dt.datetime, within: dt.timedelta) -> bool:
    valid = record.status is CertificateStatus.VALID
    match view:
        case FleetView.EXPIRING:
            return valid and now < record.not_after <= now + within
        case FleetView.EXPIRED:
            return valid and record.not_after <= now
        case FleetView.REVOKED:
            return not valid
        case FleetView.ALL:
            return True


def _due_serials(report: DueReport) -> list[int]:
    return [d.record.serial for d in report.due]


def test_due_means_renewal_time_passed_valid_and_within_the_grace_window() -> None:
    source = FakeCertificates(
        [
            _record(1, device="due", not_before=NOW - 21 * DAY),  # renew at day 20
            _record(2, device="young", not_before=NOW - 19 * DAY),  # renew at day 20: tomorrow
            _record(3, device="expired-in-grace", not_before=NOW - 50 * DAY),  # expired 20 days ago
            _record(4, device="expired-beyond-grace", not_before=NOW - 61 * DAY),  # expired 31 days ago
            _record(5, device="revoked", not_before=NOW - 21 * DAY, status=CertificateStatus.REVOKED),
            _record(6, device=None, not_before=NOW - 21 * DAY),  # a server certificate
        ]
    )
    report = find_due(source, WINDOW, now=NOW)
    assert _due_serials(report) == [3, 1, 6]  # most urgent (earliest notAfter) first
    assert report.complete
    assert report.due[1].renew_at == NOW - DAY


def test_the_grace_window_includes_its_last_instant() -> None:
    record = _record(7, not_before=NOW - LIFE - 30 * DAY)
    assert record.not_after == NOW - WINDOW.grace
    assert _due_serials(find_due(FakeCertificates([record]), WINDOW, now=NOW)) == [7]


def test_a_renewed_certificate_is_not_due_only_its_successor_when_due() -> None:
    old = _record(10, not_before=NOW - 21 * DAY)
    renewed = _record(11, not_before=NOW - 2 * DAY)
    other_old = _record(20, device="cam-2", not_before=NOW - 28 * DAY)
    other_renewed_long_ago = _record(21, device="cam-2", not_before=NOW - 22 * DAY)
    source = FakeCertificates([old, renewed, other_old, other_renewed_long_ago])
    assert _due_serials(find_due(source, WINDOW, now=NOW)) == [21]


def test_a_renewal_in_the_same_second_supersedes_by_its_link() -> None:
    # notBefore has whole seconds: a renewal right after issuance shares it; renewed_from decides.
    old = _record(90, not_before=NOW - 21 * DAY)
    renewed = _record(10, not_before=NOW - 21 * DAY, renewed_from=90)
    assert _due_serials(find_due(FakeCertificates([old, renewed]), WINDOW, now=NOW)) == [10]


def test_a_revoked_successor_leaves_the_previous_certificate_due() -> None:
    old = _record(10, not_before=NOW - 21 * DAY)
    revoked = _record(11, not_before=NOW - 2 * DAY, status=CertificateStatus.REVOKED)
    assert _due_serials(find_due(FakeCertificates([old, revoked]), WINDOW, now=NOW)) == [10]


def test_paging_reads_every_certificate_of_a_batch_with_one_notafter() -> None:
    # Server certificates (no device), so that only the paging is exercised, not the device look-ups.
    batch = [_record(serial, device=None, not_before=NOW - 21 * DAY) for serial in range(1, 2502)]
    later = [_record(serial, device=None, not_before=NOW - 20.5 * DAY) for serial in (5001, 5000)]
    report = find_due(FakeCertificates([*reversed(batch), *later]), WINDOW, now=NOW)
    assert _due_serials(report) == [*range(1, 2502), 5000, 5001]
    assert report.scanned == 2503


def test_the_scan_stops_at_max_scan_and_says_so() -> None:
    records = [_record(serial, device=f"d{serial}", not_before=NOW - 21 * DAY) for serial in range(1, 11)]
    report = find_due(FakeCertificates(records), WINDOW, now=NOW, max_scan=4)
    assert _due_serials(report) == [1, 2, 3, 4]
    assert not report.complete
    assert describe(report) == (
        "4+ certificates due for renewal (devices renew their own over EST): 1 (d1), 2 (d2), 3 (d3), 4 (d4); "
        "the check stopped after 4 certificates, more may be due"
    )


def test_certificates_outside_the_window_are_not_read() -> None:
    fresh = [_record(serial, device=f"d{serial}", not_before=NOW - DAY) for serial in range(1, 50)]
    report = find_due(FakeCertificates(fresh), WINDOW, now=NOW)
    assert report.due == ()
    assert report.scanned == 0


def test_window_from_settings() -> None:
    settings = Settings(renewal_grace_days=3, device_certificate_days=10)
    assert DueWindow.from_settings(settings) == DueWindow(grace=3 * DAY, horizon=5 * DAY)


def test_a_round_logs_the_count_and_first_serials(caplog: pytest.LogCaptureFixture) -> None:
    records = [_record(serial, device=f"d{serial}", not_before=NOW - 21 * DAY) for serial in range(10, 17)]
    scheduler = RenewalScheduler(FakeCertificates(records), WINDOW, clock=lambda: NOW)
    with caplog.at_level(logging.INFO, logger="fleetguard.cli.renewal_scheduler"):
        report = scheduler.run_round()
    assert report is not None
    assert len(report.due) == 7
    assert caplog.messages == [
        "7 certificates due for renewal (devices renew their own over EST): "
        "a (d10), b (d11), c (d12), d (d13), e (d14), ..."
    ]


def test_the_clock_decides(caplog: pytest.LogCaptureFixture) -> None:
    clock = [NOW - 2 * DAY]
    due_yesterday = _record(1, not_before=NOW - 21 * DAY)
    scheduler = RenewalScheduler(FakeCertificates([due_yesterday]), WINDOW, clock=lambda: clock[0])
    with caplog.at_level(logging.INFO, logger="fleetguard.cli.renewal_scheduler"):
        assert scheduler.check().due == ()
        assert scheduler.run_round() is not None
        assert caplog.messages == []  # nothing due: nothing logged at INFO
        clock[0] = NOW
        assert _due_serials(scheduler.check()) == [1]


def test_a_failed_round_is_logged_and_returns_none(caplog: pytest.LogCaptureFixture) -> None:
    source = FakeCertificates([], failure=Unavailable("database is locked"))
    scheduler = RenewalScheduler(source, WINDOW, clock=lambda: NOW)
    assert scheduler.run_round() is None
    assert caplog.messages == ["renewal check failed: database is locked"]


def test_the_thread_checks_every_interval_and_stops() -> None:
    source = FakeCertificates([_record(1)])
    scheduler = RenewalScheduler(source, WINDOW, interval_s=0.01, clock=lambda: NOW)
    scheduler.start()
    try:
        assert source.called.wait(5)
    finally:
        scheduler.stop()
    calls = source.calls
    time.sleep(0.05)
    assert source.calls == calls  # stopped: no round after stop() returned


def test_a_round_renews_the_servers_own_certificates_and_logs_them(caplog: pytest.LogCaptureFixture) -> None:
    server = _record(0xABC, device=None)
    source = FakeCertificates(records=[], server_renewals=[server])
    scheduler = RenewalScheduler(source, DueWindow(grace=DAY, horizon=DAY), clock=lambda: NOW)
    with caplog.at_level(logging.INFO, logger="fleetguard"):
        scheduler.run_round()
    assert "renewed server certificate abc" in caplog.text
    assert source.server_renewals == []
