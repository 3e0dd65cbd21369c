"""The patch compliance report with a fake clock: which devices are current, behind or unknown, and
the patch lag of each published release (median and 90th percentile of publication to commit)."""

from __future__ import annotations

import datetime as dt

from fleetguard.inventory.lifecycle import Action
from fleetguard.ota.compliance import (
    ComplianceReport,
    DeviceCompliance,
    Posture,
    ReleaseLag,
    compliance_report,
)
from fleetguard.store.models import OtaDeviceStatusRow

from .conftest import HW, HW2, T0, Ota, needs_mksquashfs

pytestmark = needs_mksquashfs

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


def _status(
    ota: Ota, device_id: str, hardware_id: str, release: str, counter: int, *, committed: dt.datetime | None
) -> None:
    with ota.runtime.database.transaction() as session:
        session.add(
            OtaDeviceStatusRow(
                device_id=device_id, hardware_id=hardware_id, release=release, release_counter=counter,
                reported_at=committed or T0, committed_at=committed,
            )
        )  # fmt: skip


def _report(ota: Ota, hardware_id: str | None = None) -> ComplianceReport:
    return compliance_report(
        ota.runtime.database, ota.runtime.inventory, ota.releases, now=ota.clock.now, hardware_id=hardware_id
    )


def _fleet(ota: Ota) -> None:
    ota.publish(ota.images.v1, "1.0", 1)  # at T0
    ota.clock.advance(DAY)
    ota.publish(ota.images.v2, "2.0", 2)  # at T0 + 1 day
    for device_id, version in [
        ("a", "1.0"),
        ("b", "1.0"),
        ("c", "1.0"),
        ("d", ""),
        ("e", "9.9"),
        ("h", "1.0"),
    ]:
        ota.register(f"cam-{device_id}", version=version)
    ota.register("cam-f")
    ota.transition("cam-f", Action.DECOMMISSION)
    ota.register("lamp-1", model="lamp")
    _status(ota, "cam-a", HW, "2.0", 2, committed=T0 + DAY + HOUR)
    _status(ota, "cam-b", HW, "2.0", 2, committed=T0 + DAY + 3 * HOUR)
    _status(ota, "cam-h", "cam-z", "7.0", 7, committed=None)  # another hardware id: the inventory decides
    _status(ota, "cam-f", HW, "2.0", 2, committed=T0 + DAY + 2 * HOUR)  # decommissioned since
    ota.clock.advance(DAY)  # now: T0 + 2 days


def test_devices_are_current_behind_or_unknown(ota: Ota) -> None:
    _fleet(ota)

    report = _report(ota)

    assert report.at == T0 + 2 * DAY
    assert report.counts == {"current": 2, "behind": 2, "unknown": 2}
    assert report.devices == (
        DeviceCompliance("cam-a", HW, "2.0", 2, 0, Posture.CURRENT, "2.0"),
        DeviceCompliance("cam-b", HW, "2.0", 2, 0, Posture.CURRENT, "2.0"),
        DeviceCompliance("cam-c", HW, "1.0", 1, 1, Posture.BEHIND, "2.0"),
        DeviceCompliance("cam-d", HW, None, None, None, Posture.UNKNOWN, "2.0"),
        DeviceCompliance("cam-e", HW, "9.9", None, None, Posture.UNKNOWN, "2.0"),
        DeviceCompliance("cam-h", HW, "1.0", 1, 1, Posture.BEHIND, "2.0"),
    )


def test_the_patch_lag_of_each_release(ota: Ota) -> None:
    _fleet(ota)

    lags = {lag.release: lag for lag in _report(ota).releases}

    # cam-a committed 1 h after publication, cam-b 3 h, cam-f (decommissioned since) 2 h.
    assert lags["2.0"] == ReleaseLag(
        hardware_id=HW, release="2.0", release_counter=2, published_at=T0 + DAY, running=2, committed=3,
        lag_median=2 * HOUR, lag_p90=dt.timedelta(hours=2, minutes=48), waiting=4, waiting_since=DAY,
    )  # fmt: skip
    assert lags["1.0"] == ReleaseLag(
        hardware_id=HW, release="1.0", release_counter=1, published_at=T0, running=2, committed=0,
        lag_median=None, lag_p90=None, waiting=2, waiting_since=2 * DAY,
    )  # fmt: skip


def test_a_single_commit_is_its_own_median_and_percentile(ota: Ota) -> None:
    ota.publish(ota.images.v1, "1.0", 1)
    ota.register("cam-a")
    _status(ota, "cam-a", HW, "1.0", 1, committed=T0 + 5 * HOUR)
    ota.clock.advance(6 * HOUR)

    (lag,) = _report(ota).releases

    assert (lag.committed, lag.lag_median, lag.lag_p90, lag.waiting, lag.waiting_since) == (
        1, 5 * HOUR, 5 * HOUR, 0, 6 * HOUR,
    )  # fmt: skip


def test_staged_releases_do_not_count_and_the_report_can_name_one_hardware_id(ota: Ota) -> None:
    ota.publish(ota.images.v1, "1.0", 1)
    ota.add_two_key_hardware()
    ota.publish(ota.images.v1, "1.0", 1, hardware_id=HW2, signers=[ota.keys.hw, ota.keys.hw2])
    ota.publish(ota.images.v2, "2.0", 2, hardware_id=HW2, signers=[ota.keys.hw])  # staged
    ota.register("cam-a")
    ota.register("y-1", model=HW2)

    everything = _report(ota)
    only_y = _report(ota, HW2)

    assert [(d.device_id, d.posture, d.latest) for d in everything.devices] == [
        ("cam-a", Posture.CURRENT, "1.0"), ("y-1", Posture.CURRENT, "1.0"),
    ]  # fmt: skip
    assert [(lag.hardware_id, lag.release) for lag in everything.releases] == [(HW, "1.0"), (HW2, "1.0")]
    assert [d.device_id for d in only_y.devices] == ["y-1"]
    assert only_y.counts == {"current": 1, "behind": 0, "unknown": 0}


def test_no_release_means_an_empty_report(ota: Ota) -> None:
    ota.register("cam-a")

    report = _report(ota)

    assert (report.devices, report.releases, report.counts) == (
        (),
        (),
        {"current": 0, "behind": 0, "unknown": 0},
    )
