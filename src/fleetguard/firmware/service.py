"""The firmware service: scans stored against firmware versions, the fleet's exposure, the release gate.

Theory of operation. :meth:`FirmwareService.scan` runs the pipeline of :mod:`fleetguard.firmware.scan`
on an image (no network: the vulnerability database is the shipped one merged with what operators
imported under ``<data dir>/firmware/vulndb``) and stores the result with the firmware version and
device type it belongs to, appending ``firmware.scanned``. The fleet link is the inventory's
``firmware_version`` (and device type, where the scan names one): :meth:`exposed_devices` lists the
devices running firmware whose latest scan has a known-exploited (CISA KEV) vulnerability, or any
vulnerability. The release gate (:meth:`check_release`, used by OTA before a release is published)
refuses an image whose latest scan has findings at or above the configured severity that no
operator waived; every decision, waiver and threshold change is in the event log. An image never
scanned is refused (fail closed), and so is one that extracted nothing.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from fleetguard.errors import InvalidInput
from fleetguard.events.entry import NewEvent
from fleetguard.events.log import EventLog
from fleetguard.events.relay import publish_committed
from fleetguard.firmware.errors import ReleaseBlocked, ScanNotFound
from fleetguard.firmware.model import Category, Finding, ScanResult, Severity
from fleetguard.firmware.report_json import from_json, to_json
from fleetguard.firmware.scan import ScanOptions, scan_image
from fleetguard.firmware.vulndb import VulnDb
from fleetguard.inventory.model import Device, DeviceFilter
from fleetguard.inventory.service import Inventory
from fleetguard.store.database import Database
from fleetguard.store.models import FirmwareScanRow, FirmwareSettingRow, FirmwareWaiverRow

__all__ = ["DEFAULT_GATE", "Exposure", "FirmwareService", "GateDecision", "StoredScan", "Waiver"]

DEFAULT_GATE = Severity.HIGH
_MAX_REASON = 1000
_KEV = "known_exploited"


@dataclass(frozen=True, slots=True)
class StoredScan:
    """A stored scan and what it belongs to."""

    id: str
    result: ScanResult
    firmware_version: str | None
    device_type: str | None
    actor: str
    scanned_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Waiver:
    """An operator's waiver of a finding rule (at one path, or anywhere) for one image."""

    id: str
    image_sha256: str
    rule: str
    path: str | None
    reason: str
    actor: str
    created_at: dt.datetime
    expires_at: dt.datetime | None

    def covers(self, finding: Finding, now: dt.datetime) -> bool:
        """Whether this waiver applies to ``finding`` at ``now``."""
        if self.expires_at is not None and now >= self.expires_at:
            return False
        return finding.rule == self.rule and (self.path is None or self.path == finding.path)


@dataclass(frozen=True, slots=True)
class GateDecision:
    """The release gate's answer for one image: allowed, and the findings that decided it."""

    image_sha256: str
    scan_id: str | None
    threshold: Severity
    allowed: bool
    blocking: tuple[Finding, ...]
    waived: tuple[Finding, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Exposure:
    """A device running firmware whose scan has the listed vulnerabilities."""

    device: Device
    scan_id: str
    vulnerabilities: tuple[str, ...]
    known_exploited: tuple[str, ...]


class FirmwareService:
    """Scans, exposure and the release gate of one installation."""

    def __init__(
        self,
        database: Database,
        log: EventLog,
        inventory: Inventory,
        *,
        data_dir: Path,
        clock: Callable[[], dt.datetime],
        on_commit: Callable[[], object] | None = None,
    ) -> None:
        self._db, self._log, self._inventory = database, log, inventory
        self._vulndb_dir = data_dir / "firmware" / "vulndb"
        self._work_dir = data_dir / "firmware" / "work"
        self._clock, self._on_commit = clock, on_commit

    # -- vulnerability database -------------------------------------------------------------------

    def vulndb(self) -> VulnDb:
        """The shipped database merged with the records operators imported."""
        return VulnDb.load(self._vulndb_dir) if self._vulndb_dir.exists() else VulnDb.load_default()

    def import_vulndb(self, path: Path, *, actor: str) -> int:
        """Import an OSV or NVD JSON export; return how many records were added or updated.

        Raises ``VulnDbInvalid`` naming where the file is malformed; nothing is imported then.
        """
        db = self.vulndb()
        report = db.import_file(path)
        self._vulndb_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        db.save(self._vulndb_dir)
        self._append(
            actor,
            "firmware:vulndb",
            "firmware.vulndb_imported",
            {"file": path.name[:200], "records": report.records},
        )
        return int(report.records)

    # -- scans --------------------------------------------------------------------------------------

    def scan(
        self,
        image: Path,
        *,
        actor: str,
        name: str | None = None,
        firmware_version: str | None = None,
        device_type: str | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> StoredScan:
        """Scan ``image`` and store the result; return it.

        Raises ``ImageInvalid``/``ExtractionLimit`` only for what cannot be scanned at all; an image
        that yields nothing is stored as such (never as clean).
        """
        _check_text("firmware version", firmware_version, 128)
        _check_text("device type", device_type, 128)
        self._work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        options = ScanOptions(work_root=self._work_dir, vulndb=self.vulndb(), now=self._clock())
        result = scan_image(image, options, name=name or image.name, progress=progress)
        stored = StoredScan(str(uuid.uuid4()), result, firmware_version, device_type, actor, self._clock())
        kev = _known_exploited(result.findings)
        with self._db.transaction() as session:
            session.add(
                FirmwareScanRow(
                    id=stored.id,
                    image_sha256=result.image_sha256,
                    image_name=result.image_name[:256],
                    image_size=result.image_size,
                    firmware_version=firmware_version,
                    device_type=device_type,
                    risk=result.risk,
                    max_severity=_max_severity(result.findings).value,
                    findings=len(result.findings),
                    known_exploited=len(kev),
                    result=to_json(result),
                    actor=actor,
                    scanned_at=stored.scanned_at,
                )
            )
            self._log.append(
                session,
                NewEvent(
                    actor=actor,
                    subject=f"firmware:{result.image_sha256}",
                    action="firmware.scanned",
                    data={
                        "scan": stored.id,
                        "name": result.image_name[:200],
                        "risk": result.risk,
                        "findings": len(result.findings),
                        "known_exploited": len(kev),
                        "components": len(result.components),
                        "files": result.file_count,
                        "firmware_version": firmware_version or "",
                        "device_type": device_type or "",
                    },
                ),
                now=stored.scanned_at,
            )
        publish_committed(self._on_commit)
        return stored

    def scans(self, *, image_sha256: str | None = None, limit: int = 100) -> list[StoredScan]:
        """Stored scans, newest first."""
        query = select(FirmwareScanRow).order_by(FirmwareScanRow.scanned_at.desc()).limit(min(limit, 1000))
        if image_sha256 is not None:
            query = query.where(FirmwareScanRow.image_sha256 == image_sha256)
        with self._db.reading() as session:
            return [_stored(row) for row in session.scalars(query).all()]

    def get_scan(self, scan_id: str) -> StoredScan:
        """One stored scan; raise :class:`ScanNotFound`."""
        with self._db.reading() as session:
            row = session.get(FirmwareScanRow, scan_id)
            if row is None:
                raise ScanNotFound(f"no firmware scan {scan_id[:64]!r}", hint="fleetguard firmware scans")
            return _stored(row)

    def latest(self, image_sha256: str) -> StoredScan | None:
        """The newest scan of an image, or None."""
        found = self.scans(image_sha256=image_sha256, limit=1)
        return found[0] if found else None

    # -- fleet --------------------------------------------------------------------------------------

    def exposed_devices(self, *, known_exploited_only: bool = True) -> list[Exposure]:
        """Devices whose firmware's latest applicable scan has (known-exploited) vulnerabilities.

        A scan applies to the devices of its firmware version, and of its device type when it names
        one; each device is judged by the newest scan that applies to it, and listed once.
        """
        out: list[Exposure] = []
        for version, scans in sorted(self._scans_by_version().items()):
            for device in self._inventory.iterate(DeviceFilter(firmware_version=version)):
                stored = next((s for s in scans if s.device_type in (None, device.device_type)), None)
                if stored is None:
                    continue
                vulns = [f for f in stored.result.findings if f.category is Category.VULNERABILITY]
                kev = _known_exploited(vulns)
                if kev or (vulns and not known_exploited_only):
                    rules = tuple(sorted({f.rule for f in vulns}))
                    out.append(Exposure(device, stored.id, rules, tuple(kev)))
        return out

    def _scans_by_version(self) -> dict[str, list[StoredScan]]:
        """Every scan that names a firmware version, newest first, by version."""
        with self._db.reading() as session:
            rows = session.scalars(
                select(FirmwareScanRow)
                .where(FirmwareScanRow.firmware_version.is_not(None))
                .order_by(FirmwareScanRow.scanned_at.desc(), FirmwareScanRow.id)
            ).all()
            out: dict[str, list[StoredScan]] = {}
            for row in rows:
                assert row.firmware_version is not None
                out.setdefault(row.firmware_version, []).append(_stored(row))
            return out

    # -- release gate -------------------------------------------------------------------------------

    def gate_threshold(self) -> Severity:
        """Findings at or above this severity block a release unless waived (default: high)."""
        with self._db.reading() as session:
            row = session.get(FirmwareSettingRow, "gate")
            return DEFAULT_GATE if row is None else Severity(str(row.value["threshold"]))

    def set_gate_threshold(self, threshold: Severity, *, actor: str) -> None:
        """Change the gate's threshold (logged)."""
        now = self._clock()
        with self._db.transaction() as session:
            row = session.get(FirmwareSettingRow, "gate") or FirmwareSettingRow(name="gate")
            row.value, row.updated_at = {"threshold": threshold.value}, now
            session.add(row)
            self._log.append(
                session,
                NewEvent(
                    actor=actor,
                    subject="firmware:gate",
                    action="firmware.gate_changed",
                    data={"threshold": threshold.value},
                ),
                now=now,
            )
        publish_committed(self._on_commit)

    def waive(
        self,
        image_sha256: str,
        rule: str,
        *,
        reason: str,
        actor: str,
        path: str | None = None,
        expires_at: dt.datetime | None = None,
    ) -> Waiver:
        """Waive a finding rule (at ``path``, or anywhere) for one image; logged with the reason."""
        if not reason.strip() or len(reason) > _MAX_REASON:
            raise InvalidInput(f"a waiver needs a reason of 1 to {_MAX_REASON} characters")
        _check_text("rule", rule, 128)
        if self.latest(image_sha256) is None:
            raise ScanNotFound(f"no scan of image {image_sha256[:64]}", hint="scan it first")
        now = self._clock()
        waiver = Waiver(str(uuid.uuid4()), image_sha256, rule, path, reason, actor, now, expires_at)
        with self._db.transaction() as session:
            session.add(
                FirmwareWaiverRow(
                    id=waiver.id,
                    image_sha256=image_sha256,
                    rule=rule,
                    path=path,
                    reason=reason,
                    actor=actor,
                    created_at=now,
                    expires_at=expires_at,
                )
            )
            self._log.append(
                session,
                NewEvent(
                    actor=actor,
                    subject=f"firmware:{image_sha256}",
                    action="firmware.waived",
                    reason=reason,
                    data={
                        "rule": rule,
                        "path": path or "*",
                        "waiver": waiver.id,
                        "expires_at": "" if expires_at is None else expires_at.isoformat(),
                    },
                ),
                now=now,
            )
        publish_committed(self._on_commit)
        return waiver

    def waivers(self, image_sha256: str) -> list[Waiver]:
        """The waivers recorded for an image, oldest first."""
        with self._db.reading() as session:
            rows = session.scalars(
                select(FirmwareWaiverRow)
                .where(FirmwareWaiverRow.image_sha256 == image_sha256)
                .order_by(FirmwareWaiverRow.created_at)
            ).all()
            return [
                Waiver(r.id, r.image_sha256, r.rule, r.path, r.reason, r.actor, r.created_at, r.expires_at)
                for r in rows
            ]

    def check_release(self, image_sha256: str, *, actor: str) -> GateDecision:
        """Decide whether an image may be released, and log the decision. Fails closed."""
        threshold = self.gate_threshold()
        stored = self.latest(image_sha256)
        now = self._clock()
        if stored is None:
            decision = GateDecision(
                image_sha256, None, threshold, False, (), (), "the image was never scanned"
            )
        elif stored.result.extracted_nothing:
            decision = GateDecision(
                image_sha256,
                stored.id,
                threshold,
                False,
                (),
                (),
                "nothing could be extracted (encrypted or unknown format): the image cannot be vouched for",
            )
        else:
            waivers = self.waivers(image_sha256)
            # What could not be examined (a layer partial, failed or encrypted: a bomb in front of the
            # root filesystem, an encrypted payload beside a decoy) blocks whatever the threshold.
            over = [f for f in stored.result.findings if f.severity.rank >= threshold.rank or _unexamined(f)]
            waived = tuple(f for f in over if any(w.covers(f, now) for w in waivers))
            blocking = tuple(f for f in over if f not in waived)
            reason = (
                f"{len(blocking)} finding(s) at or above {threshold.value} not waived"
                if blocking
                else f"no unwaived finding at or above {threshold.value}"
            )
            decision = GateDecision(
                image_sha256, stored.id, threshold, not blocking, blocking, waived, reason
            )
        action = "firmware.gate_passed" if decision.allowed else "firmware.gate_blocked"
        self._append(
            actor,
            f"firmware:{image_sha256}",
            action,
            {
                "scan": decision.scan_id or "",
                "threshold": threshold.value,
                "blocking": len(decision.blocking),
                "waived": len(decision.waived),
                "reason": decision.reason[:300],
            },
        )
        return decision

    def require_release(self, image_sha256: str, *, actor: str) -> GateDecision:
        """:meth:`check_release`, raising :class:`ReleaseBlocked` when the gate refuses (for OTA)."""
        decision = self.check_release(image_sha256, actor=actor)
        if not decision.allowed:
            rules = ", ".join(sorted({f.rule for f in decision.blocking}))[:300]
            raise ReleaseBlocked(
                f"release of {image_sha256[:16]}… refused: {decision.reason}"
                + (f" ({rules})" if rules else ""),
                hint="fix the firmware, or waive each finding with a reason: fleetguard firmware waive",
            )
        return decision

    def _append(self, actor: str, subject: str, action: str, data: dict[str, str | int]) -> None:
        now = self._clock()
        with self._db.transaction() as session:
            self._log.append(
                session, NewEvent(actor=actor, subject=subject, action=action, data=data), now=now
            )
        publish_committed(self._on_commit)


def _stored(row: FirmwareScanRow) -> StoredScan:
    return StoredScan(
        row.id, from_json(row.result), row.firmware_version, row.device_type, row.actor, row.scanned_at
    )


def _unexamined(finding: Finding) -> bool:
    return finding.category is Category.EXTRACTION and finding.severity is not Severity.INFO


def _known_exploited(findings: Sequence[Finding]) -> list[str]:
    return sorted({f.rule for f in findings if dict(f.details).get(_KEV) == "yes"})


def _max_severity(findings: Sequence[Finding]) -> Severity:
    return max((f.severity for f in findings), key=lambda s: s.rank, default=Severity.INFO)


def _check_text(what: str, value: str | None, limit: int) -> None:
    if value is not None and (not value.strip() or len(value) > limit or not value.isprintable()):
        raise InvalidInput(f"{what} must be 1 to {limit} printable characters")
