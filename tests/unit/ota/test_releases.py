"""ReleaseService on a real installation: publication behind the firmware gate, release counters that
only go up, staged publication under a 2-of-2 release role and its reconciliation, and binary deltas
from earlier releases; every refusal leaves the database, the target files and the signed metadata
as they were.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select

from fleetguard.errors import Conflict, InvalidInput
from fleetguard.firmware.errors import ReleaseBlocked
from fleetguard.ota.errors import ReleaseNotFound, SigningError
from fleetguard.ota.releases import DELTA_BASES, Release, ReleaseState
from fleetguard.ota.repository import Published, Staged, target_file_path
from fleetguard.store.models import OtaDeltaRow, OtaReleaseRow

from .conftest import HW, HW2, T0, Ota, needs_mksquashfs

pytestmark = needs_mksquashfs


def _files(base: Path) -> list[str]:
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())


def _deltas(ota: Ota) -> list[tuple[str, str, str, str, int]]:
    with ota.runtime.database.reading() as session:
        rows = session.scalars(select(OtaDeltaRow).order_by(OtaDeltaRow.target_path)).all()
        return [(r.hardware_id, r.from_sha256, r.to_sha256, r.target_path, r.length) for r in rows]


def _release_rows(ota: Ota) -> int:
    with ota.runtime.database.reading() as session:
        return len(session.scalars(select(OtaReleaseRow)).all())


# --- publication -----------------------------------------------------------------------------------


def test_a_release_is_published_as_a_signed_target_with_its_counter(ota: Ota) -> None:
    release = ota.publish(ota.images.v1, "1.0", 1)

    sha256 = release.sha256
    path = f"{HW}/1.0/fw-1.sqfs"
    assert release == Release(
        id=release.id, hardware_id=HW, release="1.0", release_counter=1, target_path=path, sha256=sha256,
        length=ota.images.v1.stat().st_size, state=ReleaseState.PUBLISHED, actor="alice", created_at=T0,
        published_at=T0,
    )  # fmt: skip
    assert ota.image_targets() == {
        path: {"fleetguard": {"release": "1.0", "release_counter": 1, "hardware_ids": [HW], "scopes": []}}
    }
    stored = ota.repositories.image.targets_dir / target_file_path(path, sha256)
    assert stored.read_bytes() == ota.images.v1.read_bytes()
    assert ota.releases.get(HW, "1.0") == release
    assert ota.releases.by_id(release.id) == release
    assert ota.events("ota.release.published") == [
        (
            "alice",
            f"release:{HW}/1.0",
            {"hardware_id": HW, "release": "1.0", "release_counter": 1, "sha256": sha256,
             "length": release.length, "deltas": 0},
        )
    ]  # fmt: skip
    assert [(e[2]["reason"]) for e in ota.events("firmware.gate_passed")] == [
        "no unwaived finding at or above high"
    ]


def test_releases_are_listed_newest_counter_first(ota: Ota) -> None:
    ota.publish(ota.images.v1, "1.0", 1)
    ota.publish(ota.images.v2, "2.0", 7)

    assert [(r.release, r.release_counter) for r in ota.releases.releases()] == [("2.0", 7), ("1.0", 1)]
    assert [r.release for r in ota.releases.releases(HW)] == ["2.0", "1.0"]
    assert ota.releases.releases("cam-none") == []


def test_an_unknown_release_is_not_found(ota: Ota) -> None:
    with pytest.raises(ReleaseNotFound, match=r"no release '9.9' for hardware 'cam-x'"):
        ota.releases.get(HW, "9.9")
    with pytest.raises(ReleaseNotFound, match=r"no release with id 'nope'"):
        ota.releases.by_id("nope")


# --- the firmware gate -----------------------------------------------------------------------------


def test_the_gate_refuses_an_image_with_findings_and_nothing_is_published(ota: Ota) -> None:
    ota.publish(ota.images.v1, "1.0", 1)
    version, targets = ota.image_version(), ota.image_targets()
    files = _files(ota.repositories.image.targets_dir)

    with pytest.raises(ReleaseBlocked, match=r"refused: \d+ finding\(s\) at or above high not waived"):
        ota.publish(ota.images.blocked, "2.0", 2)

    assert [r.release for r in ota.releases.releases()] == ["1.0"]
    assert _release_rows(ota) == 1
    assert _deltas(ota) == []
    assert _files(ota.repositories.image.targets_dir) == files
    assert not (ota.repositories.image.targets_dir / HW / "2.0").exists()
    assert (ota.image_version(), ota.image_targets()) == (version, targets)
    assert ota.events("ota.release.staged") == []
    assert len(ota.events("ota.release.published")) == 1
    assert [e[2]["blocking"] > 0 for e in ota.events("firmware.gate_blocked")] == [True]


def test_an_image_never_scanned_is_refused(ota: Ota) -> None:
    timestamp = ota.repositories.image.timestamp_version()

    with pytest.raises(ReleaseBlocked, match=r"refused: the image was never scanned"):
        ota.releases.publish(
            ota.images.v1, hardware_ids=[HW], release="1.0", counter=1, signers=[ota.keys.hw], actor="alice"
        )

    assert ota.releases.releases() == []
    assert _files(ota.repositories.image.targets_dir) == []
    assert ota.repositories.image.timestamp_version() == timestamp


# --- counters and names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("release", "counter", "message"),
    [
        ("2.0", 5, r"release counter 5 must be above 5 \(1.0 of cam-x\); devices refuse lower counters"),
        ("2.0", 4, r"release counter 4 must be above 5 \(1.0 of cam-x\)"),
        ("1.0", 6, r"release 1.0 of cam-x exists already"),
    ],
)
def test_a_counter_that_does_not_increase_or_a_reused_name_is_a_conflict(
    ota: Ota, release: str, counter: int, message: str
) -> None:
    ota.publish(ota.images.v1, "1.0", 5)
    version, count = ota.image_version(), ota.event_count()

    with pytest.raises(Conflict, match=message):
        ota.publish(ota.images.v2, release, counter)

    assert [(r.release, r.release_counter) for r in ota.releases.releases()] == [("1.0", 5)]
    assert ota.image_version() == version
    assert ota.event_count() == count  # refused before the scan and the gate


@pytest.mark.parametrize(
    ("hardware_ids", "release", "counter", "error", "message"),
    [
        ([], "1.0", 1, InvalidInput, "name at least one hardware id"),
        ([HW], "../1.0", 1, InvalidInput, "release name '../1.0' must be letters"),
        ([HW], "", 1, InvalidInput, "release name '' must be letters"),
        ([HW], "1.0", 0, InvalidInput, "release counter 0 must be a positive integer"),
        ([HW], "1.0", 2**62, InvalidInput, "must be a positive integer"),
        (["cam/x"], "1.0", 1, SigningError, "hardware id 'cam/x' must be letters"),
    ],
)
def test_bad_names_and_counters_are_refused(
    ota: Ota,
    *,
    hardware_ids: list[str],
    release: str,
    counter: int,
    error: type[Exception],
    message: str,
) -> None:
    count = ota.event_count()

    with pytest.raises(error, match=message):
        ota.releases.publish(
            ota.images.v1, hardware_ids=hardware_ids, release=release, counter=counter,
            signers=[ota.keys.hw], actor="alice", scan=True,
        )  # fmt: skip

    assert ota.releases.releases() == []
    assert ota.event_count() == count


def test_an_unreadable_image_is_refused(ota: Ota, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"cannot read image .*missing.sqfs"):
        ota.releases.publish(
            tmp_path / "missing.sqfs", hardware_ids=[HW], release="1.0", counter=1, signers=[ota.keys.hw],
            actor="alice",
        )  # fmt: skip


def test_a_key_that_is_not_the_release_roles_is_refused(ota: Ota) -> None:
    timestamp = ota.repositories.image.timestamp_version()

    with pytest.raises(SigningError, match=r"is not a key of role hw-cam-x"):
        ota.publish(ota.images.v1, "1.0", 1, signers=[ota.keys.hw2])

    assert ota.releases.releases() == []
    assert ota.repositories.image.timestamp_version() == timestamp


# --- staged publication (k of n) -------------------------------------------------------------------


def test_a_release_under_a_two_key_role_is_staged_until_reconciled(ota: Ota) -> None:
    ota.add_two_key_hardware()

    staged = ota.publish(ota.images.v1, "1.0", 1, hardware_id=HW2, signers=[ota.keys.hw])

    assert (staged.state, staged.published_at) == (ReleaseState.STAGED, None)
    assert ota.repositories.image.staged() == [Staged("hw-cam-y", 1, 1, 2)]
    assert [e[1] for e in ota.events("ota.release.staged")] == [f"release:{HW2}/1.0"]
    assert ota.releases.reconcile() == []  # still one signature short
    assert ota.releases.get(HW2, "1.0").state is ReleaseState.STAGED

    ota.clock.advance(dt.timedelta(hours=2))
    assert ota.repositories.image.sign_staged("hw-cam-y", [ota.keys.hw2]) == Published("hw-cam-y", 1)
    (published,) = ota.releases.reconcile()

    assert (published.id, published.state, published.published_at) == (
        staged.id, ReleaseState.PUBLISHED, ota.clock.now,
    )  # fmt: skip
    assert ota.releases.get(HW2, "1.0") == published
    assert list(ota.image_targets(HW2)) == [staged.target_path]
    assert [(e[0], e[1]) for e in ota.events("ota.release.published")] == [("alice", f"release:{HW2}/1.0")]
    assert ota.releases.reconcile() == []


def test_a_staged_release_counts_against_later_counters_but_is_no_delta_base(ota: Ota) -> None:
    ota.add_two_key_hardware()
    ota.publish(ota.images.v1, "1.0", 1, hardware_id=HW2, signers=[ota.keys.hw, ota.keys.hw2])
    ota.publish(ota.images.v2, "2.0", 2, hardware_id=HW2, signers=[ota.keys.hw])

    with pytest.raises(Conflict, match=r"must be above 2 \(2.0 of cam-y\)"):
        ota.publish(ota.images.v3, "3.0", 2, hardware_id=HW2, signers=[ota.keys.hw])
    with pytest.raises(SigningError, match=r"a new version of hw-cam-y is staged"):
        ota.publish(ota.images.v3, "3.0", 3, hardware_id=HW2, signers=[ota.keys.hw, ota.keys.hw2])
    assert [r.release for r in ota.releases.releases(HW2)] == ["2.0", "1.0"]
    assert [d[1] for d in _deltas(ota)] == [ota.releases.get(HW2, "1.0").sha256]


# --- deltas ----------------------------------------------------------------------------------------


def test_a_delta_from_the_previous_release_is_built_signed_and_recorded_when_smaller(ota: Ota) -> None:
    one = ota.publish(ota.images.v1, "1.0", 1)
    two = ota.publish(ota.images.v2, "2.0", 2)

    path = f"{HW}/deltas/{one.sha256[:16]}-{two.sha256[:16]}.delta"
    ((hardware_id, source, target, delta_path, length),) = _deltas(ota)
    assert (hardware_id, source, target, delta_path) == (HW, one.sha256, two.sha256, path)
    assert 0 < length < two.length // 2
    targets = ota.image_targets()
    assert sorted(targets) == sorted([one.target_path, two.target_path, path])
    assert targets[path]["fleetguard"]["delta"]["from_sha256"] == one.sha256
    assert targets[path]["fleetguard"]["delta"]["to_sha256"] == two.sha256
    assert targets[path]["fleetguard"]["delta"]["method"] in {"zstd-patch-from", "bsdiff4"}
    assert ota.events("ota.release.published")[-1][2]["deltas"] == 1
    # The work file beside the image is gone.
    assert sorted(p.name for p in ota.images.v2.parent.iterdir() if p.name.startswith(".")) == []


def test_deltas_come_from_the_last_two_published_releases(ota: Ota) -> None:
    one = ota.publish(ota.images.v1, "1.0", 1)
    two = ota.publish(ota.images.v2, "2.0", 2)
    ota.publish(ota.images.unrelated, "2.5", 3)  # nothing in common: no delta pays off
    four = ota.publish(ota.images.v3, "4.0", 4)

    assert DELTA_BASES == 2
    pairs = {(d[1], d[2]) for d in _deltas(ota)}
    assert (one.sha256, two.sha256) in pairs
    assert (two.sha256, four.sha256) in pairs
    assert (one.sha256, four.sha256) not in pairs  # three releases back
    assert not any(d[2] == ota.releases.get(HW, "2.5").sha256 for d in _deltas(ota))
