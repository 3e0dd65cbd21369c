"""Attacks on signed OTA updates (TUF and Uptane), each named after what the attacker tries.

Each test runs the device's real update client against a real image repository and director served
over HTTP (:mod:`ota_lab`). The attacker is the network or a compromised server (it replaces what a
URL serves), a compromised director (it signs with the director's real online keys), or the holder
of one stolen online key (it signs with :func:`ota_lab.sign`). Each test asserts the exact error and
that the device did not change: ``bootstate.json`` and both slot images, nothing left in
``downloads/`` (:func:`ota_lab.refused`), the trusted metadata the attack aims at in the client's
cache, and what the server was told: one ``failed`` report naming the error once the verified
director metadata names a campaign, none before.

python-tuf's ngclient checks expiry against the real clock, so metadata that must be expired is
dated in the past (the repositories' clocks), never by moving the device's clock alone.
"""

from __future__ import annotations

import datetime as dt
import gc
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, MetaFile, Snapshot, TargetFile, Targets, Timestamp

from fleetguard.agent.updater import UpdateResult
from fleetguard.ota.director import Director, DirectorTarget
from fleetguard.ota.errors import ScopeViolation, UpdateRejected
from fleetguard.ota.repository import (
    DEFAULT_EXPIRY,
    RoleKeys,
    TufRepository,
    replace_role_keys,
    target_file_path,
)
from fleetguard.ota.scope import device_bucket
from fleetguard.ota.wire import IMAGE_TARGETS_PREFIX, CheckInReply
from ota_lab import (
    DEVICE,
    HW,
    OLD,
    SALT,
    V2,
    V3,
    Override,
    Refusal,
    World,
    current_snapshot,
    director_url,
    endless_body,
    image_url,
    make_signer,
    open_world,
    refused,
    scope,
    serve,
    sha256_hex,
    sign,
    target_url,
    utc_now,
)

EVIL = b"evil firmware " * 1000
EVIL_PATH = f"{HW}/evil/fw.img"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with open_world(tmp_path) as opened:
        yield opened


def _install(world: World, name: str, counter: int, data: bytes) -> TargetFile:
    """Release, assign and install ``data``; the device commits it."""
    target = world.release(name, counter, data, scopes=[scope("c1")])
    world.assign(target, counter=counter)
    outcome = world.client.update_once()
    assert (outcome.result, outcome.release) == (UpdateResult.COMMITTED, name)
    return target


def _assign_evil(world: World, counter: int = 9) -> None:
    """The director (real online keys) assigns an image the image repository never signed."""
    world.director.assign(DEVICE, [DirectorTarget(EVIL_PATH, len(EVIL), sha256_hex(EVIL), HW, counter, "c1")])
    world.overrides[IMAGE_TARGETS_PREFIX + target_file_path(EVIL_PATH, sha256_hex(EVIL))] = serve(EVIL)


def _reported_failure(refusal: Refusal, fragment: str) -> None:
    """The server was told ``failed`` once, with the error's message."""
    assert [report.step for report in refusal.reports] == ["failed"]
    assert fragment in refusal.reports[0].detail
    assert refusal.reports[0].detail == str(refusal.error)[:512]  # StepReport keeps 512 characters


def _image_fetches(world: World) -> list[str]:
    return [path for _, path, _ in world.served.requests if path.startswith(IMAGE_TARGETS_PREFIX)]


def _timestamp(metadata_dir: Path) -> Timestamp:
    return Metadata[Timestamp].from_file(str(metadata_dir / "timestamp.json")).signed


# -- rollback -------------------------------------------------------------------------------------


def test_rollback_to_lower_release_counter_is_rejected(world: World) -> None:
    _install(world, "2.0", 3, V2)  # the rollback counter is now 3
    for name, counter, data in (("1.5", 2, OLD), ("2.0-rebuilt", 3, V3)):  # below it, and equal to it
        world.assign(world.release(name, counter, data, scopes=[scope("c1")]), counter=counter)

        refusal = refused(
            world,
            UpdateRejected,
            rf"release counter {counter} is not above the installed 3 \(rollback refused\)",
        )

        _reported_failure(refusal, "rollback refused")
        assert world.store.read_state().min_release_counter == 3


def test_rollback_of_metadata_to_older_timestamp_version_is_rejected(world: World) -> None:
    image = world.image.metadata_dir
    older_timestamp = (image / "timestamp.json").read_bytes()
    _install(world, "2.0", 3, V2)
    older_snapshot = (image / f"{_timestamp(image).snapshot_meta.version}.snapshot.json").read_bytes()
    seen = _timestamp(world.client.image_dir)
    older_director = (world.device_metadata_dir / "timestamp.json").read_bytes()
    three = world.release("3.0", 4, V3, scopes=[scope("c1")])
    world.assign(three, counter=4)

    # The image repository's timestamp of before 2.0, replayed.
    world.overrides[image_url("timestamp.json")] = serve(older_timestamp)
    refusal = refused(
        world,
        UpdateRejected,
        r"image repository metadata refused \(BadVersionNumberError\): "
        rf"New timestamp version {seen.version - 1} must be >= {seen.version}",
    )
    _reported_failure(refusal, "BadVersionNumberError")
    assert refusal.cache_changes("image/") == set()

    # The current timestamp, with the snapshot of before 2.0 served under the current snapshot's name.
    del world.overrides[image_url("timestamp.json")]
    current = _timestamp(image).snapshot_meta.version
    world.overrides[image_url(f"{current}.snapshot.json")] = serve(older_snapshot)
    world.assign(three, counter=4)  # the director renews: the device tries again
    refusal = refused(
        world,
        UpdateRejected,
        r"image repository metadata refused \(BadVersionNumberError\): "
        rf"Expected snapshot version {current}, got {current - 1}",
    )
    _reported_failure(refusal, "BadVersionNumberError")
    assert refusal.cache_changes("image/") <= {"image/timestamp.json"}  # the new timestamp is genuine

    # The director's timestamp of before, with a check-in reply that hides it.
    world.overrides[director_url("timestamp.json")] = serve(older_director)
    world.checkin_reply = CheckInReply(True, 99)
    seen = _timestamp(world.client.director_dir)
    refusal = refused(
        world,
        UpdateRejected,
        r"director metadata refused \(BadVersionNumberError\): "
        rf"New timestamp version 1 must be >= {seen.version}",
    )
    assert refusal.reports == []
    assert refusal.cache_changes("director/") == set()


# -- freeze ---------------------------------------------------------------------------------------


def test_freeze_with_expired_timestamp_is_rejected(world: World) -> None:
    # The director signs a timestamp that expires in a few seconds (it lives a day).
    world.director_clock.offset = dt.timedelta(seconds=4) - DEFAULT_EXPIRY["timestamp"]
    world.director.assign(DEVICE, [])
    assert world.client.update_once().result is UpdateResult.UP_TO_DATE
    frozen = (world.device_metadata_dir / "timestamp.json").read_bytes()
    expires = _timestamp(world.client.director_dir).expires
    world.director_clock.offset = dt.timedelta(0)
    world.assign(world.release("2.0", 3, V2, scopes=[scope("c1")]), counter=3)  # what the freeze hides

    # The attacker keeps serving the last timestamp and says "nothing new" past its expiry.
    world.overrides[director_url("timestamp.json")] = serve(frozen)
    world.checkin_reply = CheckInReply(False, 1)
    time.sleep(max(0.0, (expires - utc_now()).total_seconds()) + 0.2)
    refusal = refused(
        world,
        UpdateRejected,
        r"director metadata refused \(ExpiredMetadataError\): timestamp.json is expired",
    )
    assert refusal.reports == []
    assert refusal.cache_changes("director/") == set()

    # A frozen image repository: its timestamp expired before the device sees it.
    del world.overrides[director_url("timestamp.json")]
    world.checkin_reply = None
    world.image_clock.offset = -2 * DEFAULT_EXPIRY["timestamp"]
    world.assign(world.release("3.0", 4, V3, scopes=[scope("c1")]), counter=4)
    refusal = refused(
        world,
        UpdateRejected,
        r"image repository metadata refused \(ExpiredMetadataError\): timestamp.json is expired",
    )
    _reported_failure(refusal, "ExpiredMetadataError")
    assert refusal.cache_changes("image/") == set()


# -- mix-and-match ----------------------------------------------------------------------------------


def test_mix_and_match_of_release_metadata_is_rejected(world: World) -> None:
    two = world.release("2.0", 3, V2, scopes=[scope("c1")])
    three = world.release("3.0", 4, V3, scopes=[scope("c1")])
    version = world.image.targets(HW).signed.version

    # The release role's previous version (2.0 without 3.0) served under the current version's name.
    old_role = (world.image.metadata_dir / f"{version - 1}.{HW}.json").read_bytes()
    world.overrides[image_url(f"{version}.{HW}.json")] = serve(old_role)
    world.assign(three, counter=4)
    refusal = refused(
        world,
        UpdateRejected,
        r"image repository metadata refused \(BadVersionNumberError\): "
        rf"Expected hw-1 v{version}, got v{version - 1}",
    )
    _reported_failure(refusal, "BadVersionNumberError")
    assert f"image/{HW}.json" not in refusal.cache_after

    # The director names 3.0's path with 2.0's hash and length.
    del world.overrides[image_url(f"{version}.{HW}.json")]
    world.assign(three, counter=4, sha256=two.hashes["sha256"], length=two.length)
    refusal = refused(
        world,
        UpdateRejected,
        r"does not sign hw-1/3.0/fw.img with that hash and length \(arbitrary or mix-and-match image",
    )
    _reported_failure(refusal, "mix-and-match")
    assert _image_fetches(world) == []


# -- arbitrary image, endless data --------------------------------------------------------------------


def test_arbitrary_image_from_the_director_is_rejected(world: World) -> None:
    target = world.release("2.0", 3, V2, scopes=[scope("c1")])

    _assign_evil(world)
    refusal = refused(
        world,
        UpdateRejected,
        r"the image repository does not sign hw-1/evil/fw.img \(arbitrary image from the director\)",
    )
    _reported_failure(refusal, "arbitrary image")

    world.assign(target, counter=3, sha256=sha256_hex(EVIL), length=len(EVIL))
    world.overrides[IMAGE_TARGETS_PREFIX + target_file_path(target.path, sha256_hex(EVIL))] = serve(EVIL)
    refusal = refused(world, UpdateRejected, "does not sign hw-1/2.0/fw.img with that hash and length")
    _reported_failure(refusal, "with that hash and length")
    assert _image_fetches(world) == []


# Product bug: HttpsFetcher._stream closes the HTTPConnection but not the HTTPResponse when it stops
# reading (endless data, a Content-Length over the bound): on an HTTP/1.0 reply the response owns the
# socket, which stays open until garbage collection, and is then finalised with a ResourceWarning.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)
def test_endless_data_is_cut_at_the_signed_length(world: World) -> None:
    target = world.release("2.0", 3, V2, scopes=[scope("c1")])
    world.assign(target, counter=3)

    for answer in (endless_body(V2[:65536]), serve(V2 + b"and more")):  # no length, then a longer one
        world.overrides[target_url(target)] = answer
        refusal = refused(
            world, UpdateRejected, r"image hw-1/2.0/fw.img refused \(DownloadLengthMismatchError\)"
        )
        assert [report.step for report in refusal.reports] == ["downloading", "failed"]
        world.assign(target, counter=3)  # the director renews: the device tries again

    # Metadata past ngclient's bounds (UpdaterConfig: timestamp 16 kB, snapshot 2 MB).
    del world.overrides[target_url(target)]
    world.overrides[director_url("timestamp.json")] = endless_body(b" " * 65536)
    refusal = refused(world, UpdateRejected, r"director metadata refused \(DownloadLengthMismatchError\)")
    assert refusal.reports == []
    assert refusal.cache_changes("director/") == set()

    del world.overrides[director_url("timestamp.json")]
    world.assign(world.release("3.0", 4, V3, scopes=[scope("c1")]), counter=4)
    snapshot = _timestamp(world.image.metadata_dir).snapshot_meta.version
    world.overrides[image_url(f"{snapshot}.snapshot.json")] = endless_body(b" " * 65536, chunks=64)
    refusal = refused(
        world, UpdateRejected, r"image repository metadata refused \(DownloadLengthMismatchError\)"
    )
    _reported_failure(refusal, "DownloadLengthMismatchError")
    assert "image/snapshot.json" not in refusal.cache_changes("image/")
    gc.collect()  # the leaked sockets (see above) are finalised within this test


# -- fast-forward ---------------------------------------------------------------------------------------


def test_fast_forward_attack_is_recovered_only_by_root_rotation(world: World) -> None:
    # TUF spec 5.3.11: whoever holds the online timestamp key can sign a huge version. The device
    # accepts it (the key is the role's), and then refuses every lower, legitimate version.
    two = world.release("2.0", 3, V2, scopes=[scope("c1")])
    world.assign(two, counter=3)
    honest = _timestamp(world.image.metadata_dir)
    forged = Timestamp(
        version=1000, expires=utc_now() + dt.timedelta(days=1), snapshot_meta=honest.snapshot_meta
    )
    world.overrides[image_url("timestamp.json")] = serve(sign(forged, world.keys["time"]))
    assert world.client.update_once().result is UpdateResult.COMMITTED
    assert _timestamp(world.client.image_dir).version == 1000

    del world.overrides[image_url("timestamp.json")]
    three = world.release("3.0", 4, V3, scopes=[scope("c1")])
    world.assign(three, counter=4)
    legitimate = _timestamp(world.image.metadata_dir).version
    refusal = refused(
        world,
        UpdateRejected,
        rf"image repository metadata refused \(BadVersionNumberError\): New timestamp version {legitimate} "
        r"must be >= 1000",
    )
    _reported_failure(refusal, "BadVersionNumberError")
    assert refusal.cache_changes("image/") == set()

    # Recovery: a new root that rotates the timestamp key. The cached timestamp no longer verifies
    # under it, so python-tuf drops it (the effect TUF spec 5.3.11 asks for) and the lower version holds.
    new_key = make_signer(world.tmp / "keys", "time-rotated")
    world.image = TufRepository(
        world.image.directory,
        snapshot_signer=world.keys["snap"],
        timestamp_signer=new_key,
        clock=world.image_clock,
    )
    world.image.update_root(
        lambda root: replace_role_keys(root, Timestamp.type, RoleKeys((new_key.public_key,), 1)),
        [world.keys["root"]],
    )
    world.assign(three, counter=4)

    outcome = world.client.update_once()

    assert (outcome.result, outcome.release) == (UpdateResult.COMMITTED, "3.0")
    assert _timestamp(world.client.image_dir).version == world.image.timestamp_version() < 1000


def test_fast_forward_of_the_director_is_recovered_by_root_rotation(world: World) -> None:
    world.director.assign(DEVICE, [])
    assert world.client.update_once().result is UpdateResult.UP_TO_DATE
    forged = Timestamp(version=1000, expires=utc_now() + dt.timedelta(days=1), snapshot_meta=MetaFile(1))
    world.overrides[director_url("timestamp.json")] = serve(sign(forged, world.keys["director-time"]))
    world.checkin_reply = CheckInReply(True, 1000)
    assert world.client.update_once().director_version == 1000
    del world.overrides[director_url("timestamp.json")]
    world.checkin_reply = None
    two = world.release("2.0", 3, V2, scopes=[scope("c1")])
    world.assign(two, counter=3)

    # The check-in's lower version is a hint; TUF refuses it as a rollback until the key rotates.
    refusal = refused(
        world, UpdateRejected, r"\(BadVersionNumberError\): New timestamp version 2 must be >= 1000"
    )
    assert refusal.reports == []
    world.checkin_reply = CheckInReply(True, 1001)  # a server that lies about the version as well
    refused(world, UpdateRejected, r"\(BadVersionNumberError\): New timestamp version 2 must be >= 1000")
    world.checkin_reply = None

    new_key = make_signer(world.tmp / "keys", "director-time-rotated")
    world.director = Director(
        world.director.repository.directory,
        targets_signer=world.keys["director-targets"],
        snapshot_signer=world.keys["director-snap"],
        timestamp_signer=new_key,
        clock=world.director_clock,
    )
    world.director.repository.update_root(
        lambda root: replace_role_keys(root, Timestamp.type, RoleKeys((new_key.public_key,), 1)),
        [world.keys["director-root"]],
    )
    world.assign(two, counter=3)

    outcome = world.client.update_once()  # TUF spec 5.3.11: the rotated key undoes the fast-forward

    assert (outcome.result, outcome.release, outcome.director_version) == (UpdateResult.COMMITTED, "2.0", 3)


# -- director compromise ----------------------------------------------------------------------------------


def test_director_compromise_cannot_install_an_unsigned_image(world: World) -> None:
    world.release("2.0", 3, V2, scopes=[scope("c1")])

    _assign_evil(world)  # under a signed hardware's delegation, with the bytes served
    refusal = refused(
        world, UpdateRejected, r"does not sign hw-1/evil/fw.img \(arbitrary image from the director\)"
    )
    _reported_failure(refusal, "arbitrary image from the director")

    world.director.assign(DEVICE, [DirectorTarget("evil.img", len(EVIL), sha256_hex(EVIL), HW, 9, "c1")])
    refusal = refused(world, UpdateRejected, r"does not sign evil.img \(arbitrary image from the director\)")
    _reported_failure(refusal, "arbitrary image from the director")
    assert _image_fetches(world) == []


@pytest.mark.parametrize(
    ("campaign", "clock", "message"),
    [
        (
            "tiny",
            dt.timedelta(0),
            r"device dev-1 \(bucket \d+\) is outside the signed fraction of campaign tiny",
        ),
        ("other-hw", dt.timedelta(0), "hardware id 'hw-1' is not in the signed scope of campaign other-hw"),
        ("later", dt.timedelta(0), "is outside the signed window of campaign later"),
        ("c1", dt.timedelta(days=31), "is outside the signed window of campaign c1"),
        ("rogue", dt.timedelta(0), "no signed scope for campaign 'rogue' of hw-1/2.0/fw.img"),
    ],
    ids=["fraction", "hardware", "not-yet", "ended", "unsigned-campaign"],
)
def test_director_compromise_cannot_exceed_the_signed_rollout_fraction(
    world: World, campaign: str, clock: dt.timedelta, message: str
) -> None:
    assert device_bucket(SALT, DEVICE) > 0  # so that a 1 ppm scope excludes the device
    scopes = [
        scope("c1"),
        scope("tiny", fraction_ppm=1),
        scope("other-hw", hardware="hw-2"),
        scope("later", starts=dt.timedelta(days=1)),
    ]
    target = world.release("2.0", 3, V2, scopes=scopes)
    world.assign(target, counter=3, campaign=campaign)
    world.device_clock.offset = clock

    refusal = refused(world, ScopeViolation, message)

    assert [(report.step, report.campaign) for report in refusal.reports] == [("failed", campaign)]
    assert _image_fetches(world) == []


# -- one stolen online key --------------------------------------------------------------------------------


def _forge_snapshot_with_the_timestamp_key(world: World) -> str:
    """A new timestamp (valid: the key is the timestamp role's) naming a snapshot it signed too."""
    metadata, key = world.image.metadata_dir, world.keys["time"]
    timestamp = _timestamp(metadata)
    snapshot = current_snapshot(metadata).signed
    snapshot.version += 1
    snapshot.meta[f"{HW}.json"].version += 1
    timestamp.version += 1
    timestamp.snapshot_meta = MetaFile(snapshot.version)
    world.overrides[image_url("timestamp.json")] = serve(sign(timestamp, key))
    world.overrides[image_url(f"{snapshot.version}.snapshot.json")] = serve(sign(snapshot, key))
    world.overrides.update(_evil_release_role(world, snapshot.meta[f"{HW}.json"].version, key))
    return "snapshot was signed by 0/1 keys"


def _forge_release_role_with_the_timestamp_key(world: World) -> str:
    """The release role's current version, replaced by one listing the evil image, signed by the
    timestamp key."""
    version = world.image.targets(HW).signed.version
    world.overrides.update(_evil_release_role(world, version, world.keys["time"]))
    return "hw-1 was signed by 0/1 keys"


def _forge_release_role_with_the_snapshot_key(world: World) -> str:
    """The current snapshot (same version: the timestamp cannot change) naming a new release role
    version, both signed by the snapshot key."""
    metadata, key = world.image.metadata_dir, world.keys["snap"]
    snapshot = current_snapshot(metadata).signed
    snapshot.meta[f"{HW}.json"].version += 1
    world.overrides[image_url(f"{snapshot.version}.snapshot.json")] = serve(sign(snapshot, key))
    world.overrides.update(_evil_release_role(world, snapshot.meta[f"{HW}.json"].version, key))
    return "hw-1 was signed by 0/1 keys"


def _evil_release_role(world: World, version: int, key: Signer) -> dict[str, Override]:
    """The release role at ``version`` with the evil image added, signed by ``key``."""
    role = world.image.targets(HW).signed
    role.version = version
    role.targets[EVIL_PATH] = TargetFile(
        len(EVIL), {"sha256": sha256_hex(EVIL)}, EVIL_PATH,
        {"custom": {"fleetguard": {"release": "6.6", "release_counter": 9, "hardware_ids": [HW],
                                   "scopes": [scope("c1")]}}},
    )  # fmt: skip
    return {image_url(f"{version}.{HW}.json"): serve(sign(role, key))}


@pytest.mark.parametrize(
    "forge",
    [
        _forge_snapshot_with_the_timestamp_key,
        _forge_release_role_with_the_timestamp_key,
        _forge_release_role_with_the_snapshot_key,
    ],
    ids=["image-timestamp-key-signs-snapshot", "image-timestamp-key-signs-release", "image-snapshot-key"],
)
def test_stolen_single_online_key_cannot_sign_a_release(world: World, forge: Callable[[World], str]) -> None:
    # Even with the director assigning the forged image (the worst case), one image repository
    # online key signs nothing the device accepts as a release: the release roles' keys are offline.
    world.release("2.0", 3, V2, scopes=[scope("c1")])
    message = forge(world)
    _assign_evil(world)

    refusal = refused(
        world, UpdateRejected, rf"image repository metadata refused \(UnsignedMetadataError\): {message}"
    )

    _reported_failure(refusal, "UnsignedMetadataError")
    assert f"image/{HW}.json" not in refusal.cache_after
    assert _image_fetches(world) == []


def test_stolen_director_targets_key_alone_cannot_sign_a_release(world: World) -> None:
    # The director's targets key signs a forged version 1 of the device's targets (the snapshot and
    # timestamp keys are not stolen, so the version cannot move): accepted as director metadata,
    # refused by the cross-check with the image repository.
    world.assign(world.release("2.0", 3, V2, scopes=[scope("c1")]), counter=3)
    targets = Metadata[Targets].from_file(str(world.device_metadata_dir / "1.targets.json")).signed
    targets.targets = {
        EVIL_PATH: DirectorTarget(EVIL_PATH, len(EVIL), sha256_hex(EVIL), HW, 9, "c1").target_file(DEVICE)
    }
    world.overrides[director_url("1.targets.json")] = serve(sign(targets, world.keys["director-targets"]))

    refusal = refused(
        world, UpdateRejected, r"does not sign hw-1/evil/fw.img \(arbitrary image from the director\)"
    )

    _reported_failure(refusal, "arbitrary image")
    assert _image_fetches(world) == []


# -- bad input --------------------------------------------------------------------------------------------


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flipped_signature(data: bytes) -> bytes:
    signature = data.index(b'"sig":"') + len(b'"sig":"')
    flipped = b"0" if data[signature : signature + 1] != b"0" else b"1"
    return data[:signature] + flipped + data[signature + 1 :]


@pytest.mark.parametrize(
    ("where", "corrupt", "message"),
    [
        ("director", _truncated, r"director metadata refused \(DeserializationError\)"),
        ("director", lambda data: b"{" + data, r"director metadata refused \(DeserializationError\)"),
        ("image", _truncated, r"image repository metadata refused \(DeserializationError\)"),
        (
            "image",
            _flipped_signature,
            r"image repository metadata refused \(UnsignedMetadataError\): hw-1 was signed",
        ),
    ],
    ids=["director-truncated", "director-not-json", "image-truncated", "image-bad-signature"],
)
def test_corrupt_or_truncated_metadata_installs_nothing(
    world: World, where: str, corrupt: Callable[[bytes], bytes], message: str
) -> None:
    target = world.release("2.0", 3, V2, scopes=[scope("c1")])
    world.assign(target, counter=3)
    if where == "director":
        url, path = director_url("timestamp.json"), world.device_metadata_dir / "timestamp.json"
    else:
        version = world.image.targets(HW).signed.version
        url, path = image_url(f"{version}.{HW}.json"), world.image.metadata_dir / f"{version}.{HW}.json"
    world.overrides[url] = serve(corrupt(path.read_bytes()))

    refusal = refused(world, UpdateRejected, message)

    if where == "director":
        assert refusal.reports == []
        assert refusal.cache_changes("director/") == set()
    else:
        _reported_failure(refusal, "image repository metadata refused")
        assert f"image/{HW}.json" not in refusal.cache_after


@pytest.mark.parametrize(
    "served",
    [V2[:-100], b"X" + V2[1:], V3[: len(V2)]],
    ids=["truncated", "one-byte-changed", "another-image-of-that-length"],
)
def test_truncated_or_wrong_image_installs_nothing(world: World, served: bytes) -> None:
    target = world.release("2.0", 3, V2, scopes=[scope("c1")])
    world.assign(target, counter=3)
    world.overrides[target_url(target)] = serve(served)

    refusal = refused(world, UpdateRejected, r"image hw-1/2.0/fw.img refused \(LengthOrHashMismatchError\)")

    assert [report.step for report in refusal.reports] == ["downloading", "failed"]


def test_expired_director_targets_install_nothing(world: World) -> None:
    # The director's real online keys publish version 2 whose targets expired an hour ago.
    target = world.release("2.0", 3, V2, scopes=[scope("c1")])
    world.assign(target, counter=3)
    directory = world.device_metadata_dir
    targets = Metadata[Targets].from_file(str(directory / "1.targets.json")).signed
    targets.version, targets.expires = 2, (utc_now() - dt.timedelta(hours=1)).replace(microsecond=0)
    expires = (utc_now() + dt.timedelta(days=1)).replace(microsecond=0)
    snapshot = Snapshot(version=2, expires=expires, meta={"targets.json": MetaFile(2)})
    timestamp = Timestamp(version=2, expires=expires, snapshot_meta=MetaFile(2))
    (directory / "2.targets.json").write_bytes(sign(targets, world.keys["director-targets"]))
    (directory / "2.snapshot.json").write_bytes(sign(snapshot, world.keys["director-snap"]))
    (directory / "timestamp.json").write_bytes(sign(timestamp, world.keys["director-time"]))

    refusal = refused(
        world, UpdateRejected, r"director metadata refused \(ExpiredMetadataError\): New targets is expired"
    )

    assert refusal.reports == []
    assert "director/targets.json" not in refusal.cache_after
