"""Fleet patch compliance: which devices run which release, how far behind, and the patch lag.

What a device runs is what it last reported (check-in or commit, ``ota_device_status``), else what the
inventory says (``firmware_version`` matched to a release name of its hardware id); a device with
neither is *unknown*, never counted as current. "Behind" counts the published releases of the device's
hardware id with a higher release counter. The patch lag of a release is the time from its
publication to each device's commit of it (median and 90th percentile), and for devices still behind,
how long the release has been waiting for them.
"""

from __future__ import annotations

import datetime as dt
import enum
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select

from fleetguard.inventory.lifecycle import State
from fleetguard.inventory.model import Device, DeviceFilter
from fleetguard.inventory.service import Inventory
from fleetguard.ota.releases import Release, ReleaseService, ReleaseState
from fleetguard.store.database import Database
from fleetguard.store.models import OtaDeviceStatusRow

__all__ = ["ComplianceReport", "DeviceCompliance", "Posture", "ReleaseLag", "compliance_report"]


class Posture(enum.StrEnum):
    """Where a device stands against its hardware id's newest release."""

    CURRENT = "current"
    BEHIND = "behind"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class DeviceCompliance:
    """One device's patch state."""

    device_id: str
    hardware_id: str
    release: str | None
    release_counter: int | None
    behind: int | None
    posture: Posture
    latest: str | None


@dataclass(frozen=True, slots=True)
class ReleaseLag:
    """One published release: who runs it, and how long patching took."""

    hardware_id: str
    release: str
    release_counter: int
    published_at: dt.datetime
    running: int
    committed: int
    lag_median: dt.timedelta | None
    lag_p90: dt.timedelta | None
    waiting: int
    waiting_since: dt.timedelta


@dataclass(frozen=True, slots=True)
class ComplianceReport:
    """The fleet's patch compliance at ``at``."""

    at: dt.datetime
    devices: tuple[DeviceCompliance, ...]
    releases: tuple[ReleaseLag, ...]

    @property
    def counts(self) -> dict[str, int]:
        """Devices per posture (every posture present, zeros included)."""
        counted = Counter(device.posture for device in self.devices)
        return {posture.value: counted.get(posture, 0) for posture in Posture}


def compliance_report(
    database: Database,
    inventory: Inventory,
    releases: ReleaseService,
    *,
    now: dt.datetime,
    hardware_id: str | None = None,
) -> ComplianceReport:
    """Build the report for every device whose model is a hardware id with releases."""
    published = [r for r in releases.releases(hardware_id) if r.state is ReleaseState.PUBLISHED]
    by_hardware: dict[str, list[Release]] = defaultdict(list)
    for release in published:
        by_hardware[release.hardware_id].append(release)
    with database.reading() as session:
        status = {row.device_id: row for row in session.scalars(select(OtaDeviceStatusRow))}
    devices = [
        _device(device.id, model, device.firmware_version, status.get(device.id), by_hardware[model])
        for model in sorted(by_hardware)
        for device in _fleet(inventory, model)
    ]
    commits = [row for row in status.values() if row.committed_at is not None]
    lags = tuple(_lag(release, devices, commits, now) for release in published)
    return ComplianceReport(now, tuple(devices), lags)


def _fleet(inventory: Inventory, model: str) -> Iterable[Device]:
    return (d for d in inventory.iterate(DeviceFilter(model=model)) if d.state is not State.DECOMMISSIONED)


def _device(
    device_id: str,
    hardware_id: str,
    inventory_version: str,
    status: OtaDeviceStatusRow | None,
    releases: Sequence[Release],
) -> DeviceCompliance:
    newest = max(releases, key=lambda r: r.release_counter)
    name: str | None
    counter: int | None
    if status is not None and status.hardware_id == hardware_id:
        name, counter = status.release, status.release_counter
    else:
        known = next((r for r in releases if r.release == inventory_version), None)
        name, counter = inventory_version or None, None if known is None else known.release_counter
    if counter is None:
        return DeviceCompliance(device_id, hardware_id, name, None, None, Posture.UNKNOWN, newest.release)
    behind = sum(1 for r in releases if r.release_counter > counter)
    posture = Posture.CURRENT if behind == 0 else Posture.BEHIND
    return DeviceCompliance(device_id, hardware_id, name, counter, behind, posture, newest.release)


def _lag(
    release: Release,
    devices: Sequence[DeviceCompliance],
    commits: Sequence[OtaDeviceStatusRow],
    now: dt.datetime,
) -> ReleaseLag:
    published_at = release.published_at or release.created_at
    mine = [d for d in devices if d.hardware_id == release.hardware_id]
    running = sum(1 for d in mine if d.release_counter == release.release_counter)
    waiting = sum(1 for d in mine if d.release_counter is None or d.release_counter < release.release_counter)
    lags = sorted(
        row.committed_at - published_at
        for row in commits
        if row.hardware_id == release.hardware_id and row.release_counter == release.release_counter
        and row.committed_at is not None and row.committed_at >= published_at
    )  # fmt: skip
    return ReleaseLag(
        hardware_id=release.hardware_id, release=release.release, release_counter=release.release_counter,
        published_at=published_at, running=running, committed=len(lags),
        lag_median=_quantile(lags, 0.5), lag_p90=_quantile(lags, 0.9), waiting=waiting,
        waiting_since=max(dt.timedelta(0), now - published_at),
    )  # fmt: skip


def _quantile(values: Sequence[dt.timedelta], q: float) -> dt.timedelta | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    seconds = statistics.quantiles([v.total_seconds() for v in values], n=100, method="inclusive")
    return dt.timedelta(seconds=seconds[round(q * 100) - 1])
