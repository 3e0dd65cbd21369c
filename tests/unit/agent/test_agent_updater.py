"""UpdateClient end to end: real image repository and director, a local HTTP server, A/B slot files.

The lab (:mod:`ota_lab`, shared with ``tests/attacks/test_ota_attacks.py``) speaks the device protocol
and serves both repositories' static files; a test can replace what one URL serves. Each refusal
asserts the exact error and that the slots did not change; the attacks themselves, with every piece
of device state checked, are in ``tests/attacks/test_ota_attacks.py``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, MetaFile, Snapshot, TargetFile, Targets, Timestamp

from fleetguard.agent.slots import HealthStatus, SlotName, SlotState, UpdateStep
from fleetguard.agent.updater import OtaConfig, UpdateResult, load_ota_config, save_ota_config
from fleetguard.errors import FleetguardError
from fleetguard.ota.delta import DeltaMethod, build_delta
from fleetguard.ota.director import DirectorTarget
from fleetguard.ota.errors import ScopeViolation, UpdateRejected
from fleetguard.ota.repository import target_file_path
from fleetguard.ota.scope import device_bucket
from fleetguard.ota.wire import CheckInReply
from ota_lab import (
    DEVICE,
    HW,
    OLD,
    SALT,
    V1,
    V2,
    V3,
    World,
    current_snapshot,
    endless_body,
    open_world,
    refused,
    scope,
    sha256_hex,
    sign,
    target_url,
    utc_now,
)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with open_world(tmp_path) as opened:
        yield opened


# -- the procedure ---------------------------------------------------------------------------------


def test_an_update_is_installed_rebooted_and_committed(world: World) -> None:
    target = world.release("2.0", 3, V2, scopes=[scope("c1")])
    world.assign(target, counter=3)

    outcome = world.client.update_once()

    assert (outcome.result, outcome.release, outcome.director_version) == (UpdateResult.COMMITTED, "2.0", 1)
    assert outcome.unreported == ()
    state = world.store.read_state()
    assert (state.active, state.booted, state.min_release_counter) == (SlotName.B, SlotName.B, 3)
    assert world.store.image_path(SlotName.B).read_bytes() == V2
    assert world.steps() == ["downloading", "downloaded", "installed", "rebooted", "healthy", "committed"]
    assert {(r.campaign, r.release) for r in world.served.reports} == {("c1", "2.0")}


def test_no_update_is_one_request_of_less_than_a_kilobyte(world: World) -> None:
    world.assign(world.release("2.0", 3, V2, scopes=[scope("c1")]), counter=3)
    world.client.update_once()
    world.served.requests.clear()

    outcome = world.client.update_once()

    assert outcome.result is UpdateResult.NO_UPDATE
    assert len(world.served.requests) == 1
    method, path, size = world.served.requests[0]
    assert (method, path) == ("POST", "/ota/v1/checkin")
    assert size < 1024


def test_a_failed_health_check_rolls_back_and_is_not_retried(world: World) -> None:
    target = world.release("2.0", 3, V2, scopes=[scope("c1")])
    world.assign(target, counter=3)
    world.health.status = HealthStatus.UNHEALTHY

    outcome = world.client.update_once()

    assert (outcome.result, outcome.detail) == (UpdateResult.ROLLED_BACK, "test says unhealthy")
    state = world.store.read_state()
    assert (state.active, state.booted, state.min_release_counter) == (SlotName.A, SlotName.A, 2)
    assert state.b.state is SlotState.INVALID
    assert world.steps()[-2:] == [UpdateStep.REBOOTED, UpdateStep.ROLLED_BACK]
    world.assign(target, counter=3)  # the director renews the same assignment
    assert world.client.update_once().result is UpdateResult.NOT_RETRIED


def test_nothing_assigned_is_up_to_date(world: World) -> None:
    world.director.assign(DEVICE, [])
    outcome = world.client.update_once()
    assert (outcome.result, outcome.director_version) == (UpdateResult.UP_TO_DATE, 1)
    assert world.served.reports == []


# -- attacks: each refused with its error, the slots untouched ---------------------------------------


def test_arbitrary_image_the_image_repository_never_signed_is_rejected(world: World) -> None:
    world.release("2.0", 3, V2, scopes=[scope("c1")])
    evil = b"evil" * 1000
    world.director.assign(
        DEVICE, [DirectorTarget(f"{HW}/evil/fw.img", len(evil), sha256_hex(evil), HW, 3, "c1")]
    )
    refused(world, UpdateRejected, "does not sign hw-1/evil/fw.img .arbitrary image")
    assert world.steps() == ["failed"]


def test_arbitrary_hash_under_a_signed_path_is_rejected(world: World) -> None:
    target = world.release("2.0", 3, V2, scopes=[scope("c1")])
    evil = b"x" * len(V2)
    world.assign(target, counter=3, sha256=sha256_hex(evil))
    refused(world, UpdateRejected, "does not sign hw-1/2.0/fw.img with that hash and length")


def test_mix_and_match_of_two_releases_is_rejected(world: World) -> None:
    two = world.release("2.0", 3, V2, scopes=[scope("c1")])
    three = world.release("3.0", 4, V3, scopes=[scope("c1")])
    world.assign(three, counter=4, sha256=two.hashes["sha256"], length=two.length)
    refused(world, UpdateRejected, "mix-and-match")


def test_rollback_to_a_lower_release_counter_is_rejected(world: World) -> None:
    old = world.release("0.9", 1, OLD, scopes=[scope("c1")])
    world.assign(old, counter=1)
    refused(world, UpdateRejected, r"release counter 1 is not above the installed 2 \(rollback refused\)")


def test_director_exceeding_the_signed_rollout_fraction_is_rejected(world: World) -> None:
    assert device_bucket(SALT, DEVICE) > 0  # so that a 1 ppm scope excludes it
    target = world.release("2.0", 3, V2, scopes=[scope("c1"), scope("tiny", fraction_ppm=1)])
    world.assign(target, counter=3, campaign="tiny")
    refused(world, ScopeViolation, "outside the signed fraction of campaign tiny")


def test_image_for_other_hardware_is_rejected(world: World) -> None:
    other = world.publish(
        "hw-2/2.0/fw.img", V2, {"release": "2.0", "release_counter": 3, "hardware_ids": ["hw-2"],
                                "scopes": [scope("c1", hardware="hw-2")]},
    )  # fmt: skip
    world.assign(other, counter=3)
    refused(world, UpdateRejected, "does not approve hw-2/2.0/fw.img for hw-1")


def test_freeze_with_an_expired_director_timestamp_is_noticed(world: World) -> None:
    world.director_clock.offset = -dt.timedelta(days=2)  # the timestamp lives a day: expired when served
    world.assign(world.release("2.0", 3, V2, scopes=[scope("c1")]), counter=3)
    refused(world, UpdateRejected, r"director metadata refused \(ExpiredMetadataError\)")
    assert world.served.reports == []  # no campaign is known before the director verified

    # The server now says "nothing new" for the version cached: the expired cache is refreshed anyway.
    world.served.requests.clear()
    refused(world, UpdateRejected, "ExpiredMetadataError")
    assert len(world.served.requests) > 1


def test_director_version_going_backwards_is_rejected(world: World) -> None:
    target = world.release("2.0", 3, V2, scopes=[scope("c1")])
    world.assign(target, counter=3)
    first = (world.director.devices_dir / DEVICE / "timestamp.json").read_bytes()
    world.assign(target, counter=3)
    assert world.client.update_once().result is UpdateResult.COMMITTED
    assert world.client.director_version() == 2
    (world.director.devices_dir / DEVICE / "timestamp.json").write_bytes(first)

    # The check-in names version 1: a hint only; TUF refuses the older timestamp (rollback).
    refused(
        world, UpdateRejected, r"director metadata refused \(BadVersionNumberError\): New timestamp version 1"
    )
    world.checkin_reply = CheckInReply(True, 3)  # a server that lies about the version as well
    refused(world, UpdateRejected, r"director metadata refused \(BadVersionNumberError\)")


def test_endless_data_is_cut_at_the_signed_length(world: World) -> None:
    target = world.release("2.0", 3, V2, scopes=[scope("c1")])
    world.assign(target, counter=3)
    world.overrides[target_url(target)] = endless_body(V2[:65536])
    refused(world, UpdateRejected, r"image hw-1/2.0/fw.img refused \(DownloadLengthMismatchError\)")
    assert world.steps() == ["downloading", "failed"]


def test_a_tampered_image_on_the_server_is_rejected(world: World) -> None:
    target = world.release("2.0", 3, V2, scopes=[scope("c1")])
    world.assign(target, counter=3)
    stored = world.image.targets_dir / target_file_path(target.path, target.hashes["sha256"])
    stored.write_bytes(b"X" + V2[1:])
    refused(world, UpdateRejected, r"image hw-1/2.0/fw.img refused \(LengthOrHashMismatchError\)")


def test_stolen_online_keys_cannot_sign_an_image(world: World) -> None:
    world.release("2.0", 3, V2, scopes=[scope("c1")])
    evil = b"evil" * 1000
    snapshot_key, timestamp_key = world.keys["snap"], world.keys["time"]
    metadata = world.image.metadata_dir
    versions = {name: meta.version for name, meta in current_snapshot(metadata).signed.meta.items()}
    role = Targets.from_dict(world.image.targets(HW).signed.to_dict())
    role.version += 1
    role.targets[f"{HW}/evil/fw.img"] = TargetFile(
        len(evil), {"sha256": sha256_hex(evil)}, f"{HW}/evil/fw.img",
        {"custom": {"fleetguard": {"release": "6.6", "release_counter": 9, "hardware_ids": [HW],
                                   "scopes": [scope("c1")]}}},
    )  # fmt: skip
    versions[f"{HW}.json"] = role.version
    timestamp = Metadata[Timestamp].from_file(str(metadata / "timestamp.json")).signed
    snapshot = Snapshot(
        version=timestamp.snapshot_meta.version + 1,
        expires=utc_now() + dt.timedelta(days=1),
        meta={name: MetaFile(version) for name, version in versions.items()},
    )
    new_timestamp = Timestamp(
        timestamp.version + 1, None, utc_now() + dt.timedelta(days=1), MetaFile(snapshot.version)
    )
    for signed, signer, name in (
        (role, snapshot_key, f"{role.version}.{HW}.json"),  # the release role's key is offline: not stolen
        (snapshot, snapshot_key, f"{snapshot.version}.snapshot.json"),
        (new_timestamp, timestamp_key, "timestamp.json"),
    ):
        (metadata / name).write_bytes(sign(signed, signer))
    world.director.assign(
        DEVICE, [DirectorTarget(f"{HW}/evil/fw.img", len(evil), sha256_hex(evil), HW, 9, "c1")]
    )
    refused(world, UpdateRejected, r"image repository metadata refused \(UnsignedMetadataError\)")


# -- deltas ------------------------------------------------------------------------------------------


def _delta(world: World, base: bytes, new: bytes, name: str) -> TargetFile:
    delta = build_delta(DeltaMethod.ZSTD, base, new)
    custom = {
        "delta": {"from_sha256": sha256_hex(base), "to_sha256": sha256_hex(new), "method": str(delta.method)}
    }
    return world.publish(f"{HW}/deltas/{name}.delta", delta.to_bytes(), custom)


def _fetched(world: World) -> list[str]:
    return [path for method, path, _ in world.served.requests if path.startswith("/ota/image/targets/")]


def test_a_delta_from_the_running_image_is_applied(world: World) -> None:
    target = world.release("2.0", 3, V2, scopes=[scope("c1")])
    delta = _delta(world, V1, V2, "1-2")
    assert delta.length < len(V2)
    world.assign(target, counter=3, delta_path=delta.path)

    assert world.client.update_once().result is UpdateResult.COMMITTED

    assert world.store.image_path(SlotName.B).read_bytes() == V2
    assert _fetched(world) == ["/ota/image/targets/" + target_file_path(delta.path, delta.hashes["sha256"])]
    assert world.served.reports[0].detail == "hw-1/2.0/fw.img (delta)"


def test_a_delta_for_another_base_is_ignored_for_the_full_image(world: World) -> None:
    target = world.release("2.0", 3, V2, scopes=[scope("c1")])
    delta = _delta(world, OLD, V2, "0-2")
    world.assign(target, counter=3, delta_path=delta.path)

    assert world.client.update_once().result is UpdateResult.COMMITTED

    assert world.store.image_path(SlotName.B).read_bytes() == V2
    assert _fetched(world) == ["/ota/image/targets/" + target_file_path(target.path, target.hashes["sha256"])]


def test_a_tampered_delta_is_rejected(world: World) -> None:
    target = world.release("2.0", 3, V2, scopes=[scope("c1")])
    delta = _delta(world, V1, V2, "1-2")
    stored = world.image.targets_dir / target_file_path(delta.path, delta.hashes["sha256"])
    stored.write_bytes(stored.read_bytes()[:-1] + b"\x00")
    world.assign(target, counter=3, delta_path=delta.path)
    refused(world, UpdateRejected, r"delta hw-1/deltas/1-2.delta refused \(LengthOrHashMismatchError\)")


# -- configuration -----------------------------------------------------------------------------------


def test_bootstrap_refuses_to_replace_a_trusted_root(world: World) -> None:
    root = (world.image.metadata_dir / "1.root.json").read_bytes()
    with pytest.raises(FleetguardError, match="already trusts a director root"):
        world.client.bootstrap(root, root)


def test_the_ota_configuration_round_trips_and_is_strict(tmp_path: Path) -> None:
    config = OtaConfig("https://fleet.example.org:8443", HW, tmp_path / "slots", ("/bin/true",), 30.0)
    save_ota_config(tmp_path, config)
    assert load_ota_config(tmp_path) == config
    (tmp_path / "ota.json").write_text('{"version": 1}')
    with pytest.raises(FleetguardError, match="exactly the keys"):
        load_ota_config(tmp_path)


def test_update_init_saves_the_configuration_and_trusts_the_roots(world: World, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fleetguard.agent.main import app

    director_root, image_root = tmp_path / "director-root.json", tmp_path / "image-root.json"
    director_root.write_bytes((world.director.repository.metadata_dir / "1.root.json").read_bytes())
    image_root.write_bytes((world.image.metadata_dir / "1.root.json").read_bytes())
    state_dir = tmp_path / "agent"
    arguments = [
        "update", "init", "--state-dir", str(state_dir), "--server", "https://fleet.example.org:8443",
        "--hardware-id", HW, "--slots", str(world.store.directory), "--health-cmd", "/bin/true --quiet",
        "--director-root", str(director_root), "--image-root", str(image_root),
    ]  # fmt: skip
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    config = load_ota_config(state_dir)
    assert (config.hardware_id, config.health_command) == (HW, ("/bin/true", "--quiet"))
    assert (state_dir / "ota" / "director" / "root.json").read_bytes() == director_root.read_bytes()
    again = CliRunner().invoke(app, arguments)
    assert again.exit_code == 1
