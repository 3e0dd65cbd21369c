"""TufRepository: verified reads, k-of-n staging, root rotation, delegations, targets, refresh."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import Root, TargetFile, Targets

from fleetguard.ota.errors import MetadataInvalid, SigningError
from fleetguard.ota.repository import (
    Published,
    RoleKeys,
    Staged,
    TufRepository,
    add_delegation,
    replace_role_keys,
    target_file_path,
)

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> dt.datetime:
        return self.now


def _signers(count: int) -> list[Signer]:
    return [CryptoSigner.generate_ed25519() for _ in range(count)]


def _keys(signers: list[Signer], threshold: int) -> RoleKeys:
    return RoleKeys(tuple(signer.public_key for signer in signers), threshold)


@dataclass
class World:
    directory: Path
    clock: Clock
    repo: TufRepository
    root: list[Signer]
    targets: list[Signer]
    snapshot: Signer
    timestamp: Signer
    hw: list[Signer] = field(default_factory=list)

    def reopen(self, *, timestamp: Signer | None = None, snapshot: Signer | None = None) -> TufRepository:
        return TufRepository(
            self.directory,
            snapshot_signer=snapshot or self.snapshot,
            timestamp_signer=timestamp or self.timestamp,
            clock=self.clock,
        )


def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != ".lock"
    }


@pytest.fixture
def world(tmp_path: Path) -> World:
    clock = Clock()
    root, targets, (snapshot, timestamp) = _signers(3), _signers(1), _signers(2)
    repo = TufRepository(tmp_path, snapshot_signer=snapshot, timestamp_signer=timestamp, clock=clock)
    repo.create(
        root=_keys(root, 2), targets=_keys(targets, 1), root_signers=root[:2], targets_signers=targets
    )
    return World(tmp_path, clock, repo, root, targets, snapshot, timestamp)


@pytest.fixture
def delegated(world: World) -> World:
    """``world`` with role ``hw-a`` (2 of 3 keys) delegated ``hw-a/*`` by targets."""
    world.hw = _signers(3)
    result = world.repo.update_targets(
        "targets", lambda t: add_delegation(t, "hw-a", _keys(world.hw, 2), ["hw-a/*"]), world.targets
    )
    assert result == Published("targets", 2)
    return world


def _add(path: str, length: int = 3) -> Callable[[Targets], None]:
    def change(targets: Targets) -> None:
        targets.targets[path] = TargetFile(length, {"sha256": "ab" * 32}, path)

    return change


# -- creation and reads ----------------------------------------------------------------------------


def test_create_writes_version_one_of_every_role(world: World) -> None:
    names = sorted(p.name for p in (world.directory / "metadata").iterdir())
    assert names == ["1.root.json", "1.snapshot.json", "1.targets.json", "root.json", "timestamp.json"]
    assert (world.directory / "metadata" / "root.json").read_bytes() == (
        world.directory / "metadata" / "1.root.json"
    ).read_bytes()
    root = world.repo.root().signed
    assert root.version == 1
    assert root.consistent_snapshot is True
    assert root.expires == NOW + dt.timedelta(days=365)
    assert root.roles["timestamp"].keyids == [world.timestamp.public_key.keyid]
    assert root.roles["snapshot"].keyids == [world.snapshot.public_key.keyid]
    assert world.repo.targets().signed.version == 1
    assert world.repo.targets().signed.expires == NOW + dt.timedelta(days=90)
    assert world.repo.timestamp_version() == 1
    assert world.repo.role_keys("root") == _keys(world.root, 2)
    assert world.repo.role_keys("targets") == _keys(world.targets, 1)


def test_create_refuses_an_existing_repository(world: World) -> None:
    before = _files(world.directory)
    with pytest.raises(SigningError, match="already holds a repository"):
        world.repo.create(
            root=_keys(world.root, 2),
            targets=_keys(world.targets, 1),
            root_signers=world.root,
            targets_signers=world.targets,
        )
    assert _files(world.directory) == before


def test_create_under_the_root_threshold_is_a_signing_error(tmp_path: Path) -> None:
    root, targets, (snapshot, timestamp) = _signers(3), _signers(1), _signers(2)
    repo = TufRepository(tmp_path, snapshot_signer=snapshot, timestamp_signer=timestamp, clock=Clock())
    with pytest.raises(SigningError, match=r"root is not signed by a threshold of its keys: .*1/2 keys"):
        repo.create(
            root=_keys(root, 2), targets=_keys(targets, 1), root_signers=root[:1], targets_signers=targets
        )
    assert not (tmp_path / "metadata").exists()


def test_create_with_a_foreign_signer_is_a_signing_error(tmp_path: Path) -> None:
    root, targets, (snapshot, timestamp, outsider) = _signers(3), _signers(1), _signers(3)
    repo = TufRepository(tmp_path, snapshot_signer=snapshot, timestamp_signer=timestamp, clock=Clock())
    with pytest.raises(
        SigningError, match=f"key {outsider.public_key.keyid[:16]} is not a key of role targets"
    ):
        repo.create(
            root=_keys(root, 2), targets=_keys(targets, 1), root_signers=root, targets_signers=[outsider]
        )
    assert not (tmp_path / "metadata").exists()


@pytest.mark.parametrize(
    ("count", "threshold", "duplicate", "message"),
    [
        (0, 1, False, "a role needs at least one key"),
        (2, 0, False, "threshold 0 must be between 1 and 2 keys"),
        (2, 3, False, "threshold 3 must be between 1 and 2 keys"),
        (2, 1, True, "a role's keys must be distinct"),
    ],
)
def test_role_keys_validation(count: int, threshold: int, duplicate: bool, message: str) -> None:
    keys = [signer.public_key for signer in _signers(count)]
    if duplicate:
        keys[1] = keys[0]
    with pytest.raises(SigningError, match=message):
        RoleKeys(tuple(keys), threshold)


def test_role_keys_accepts_threshold_n_of_n() -> None:
    signers = _signers(3)
    assert _keys(signers, 3).threshold == 3


# -- updates and k-of-n ----------------------------------------------------------------------------


def test_update_targets_publishes_role_then_snapshot_then_timestamp(world: World) -> None:
    world.clock.now = NOW + dt.timedelta(hours=1)
    assert world.repo.update_targets("targets", _add("a.bin"), world.targets) == Published("targets", 2)
    targets = world.repo.targets().signed
    assert targets.version == 2
    assert list(targets.targets) == ["a.bin"]
    assert targets.expires == NOW + dt.timedelta(days=90, hours=1)
    assert world.repo.timestamp_version() == 2
    assert (world.directory / "metadata" / "2.snapshot.json").exists()
    assert world.repo.targets().signed.version == 2


def test_unsigned_update_is_staged_not_published(world: World) -> None:
    before = world.repo.timestamp_version()
    assert world.repo.update_targets("targets", _add("a.bin"), []) == Staged("targets", 2, 0, 1)
    assert world.repo.targets().signed.version == 1
    assert world.repo.timestamp_version() == before


def test_k_of_n_one_signature_stages_a_second_publishes(delegated: World) -> None:
    repo, hw = delegated.repo, delegated.hw
    timestamp = repo.timestamp_version()
    assert repo.update_targets("hw-a", _add("hw-a/fw-1.bin"), hw[:1]) == Staged("hw-a", 1, 1, 2)
    assert repo.staged() == [Staged("hw-a", 1, 1, 2)]
    assert repo.timestamp_version() == timestamp
    with pytest.raises(MetadataInvalid, match="no role 'hw-a' in this repository"):
        repo.targets("hw-a")
    # The same holder signing again does not count twice.
    assert repo.sign_staged("hw-a", hw[:1]) == Staged("hw-a", 1, 1, 2)
    assert repo.sign_staged("hw-a", hw[1:2]) == Published("hw-a", 1)
    assert repo.staged() == []
    assert list(repo.targets("hw-a").signed.targets) == ["hw-a/fw-1.bin"]
    assert repo.timestamp_version() == timestamp + 1
    assert repo.role_keys("hw-a") == _keys(hw, 2)


def test_k_of_n_threshold_signers_at_once_publish(delegated: World) -> None:
    assert delegated.repo.update_targets("hw-a", _add("hw-a/x"), delegated.hw[1:]) == Published("hw-a", 1)


def test_signer_that_is_not_the_roles_is_refused(delegated: World) -> None:
    repo = delegated.repo
    outsider = _signers(1)[0]
    before = _files(delegated.directory)
    with pytest.raises(SigningError, match=f"key {outsider.public_key.keyid[:16]} is not a key of role hw-a"):
        repo.update_targets("hw-a", _add("hw-a/x"), [delegated.hw[0], outsider])
    assert _files(delegated.directory) == before
    # The targets key is not a key of the delegated role either.
    with pytest.raises(SigningError, match="is not a key of role hw-a"):
        repo.update_targets("hw-a", _add("hw-a/x"), delegated.targets)
    repo.update_targets("hw-a", _add("hw-a/x"), delegated.hw[:1])
    staged = _files(delegated.directory)
    with pytest.raises(SigningError, match="is not a key of role hw-a"):
        repo.sign_staged("hw-a", [outsider])
    assert _files(delegated.directory) == staged
    assert repo.staged() == [Staged("hw-a", 1, 1, 2)]


def test_update_while_staged_is_refused(delegated: World) -> None:
    repo = delegated.repo
    repo.update_targets("hw-a", _add("hw-a/x"), delegated.hw[:1])
    before = _files(delegated.directory)
    with pytest.raises(SigningError, match="a new version of hw-a is staged and waiting for signatures"):
        repo.update_targets("hw-a", _add("hw-a/y"), delegated.hw)
    assert _files(delegated.directory) == before
    # Another role is independent.
    assert repo.update_targets("targets", _add("z"), delegated.targets) == Published("targets", 3)


def test_discard_staged_drops_the_pending_version(delegated: World) -> None:
    repo = delegated.repo
    timestamp = repo.timestamp_version()
    repo.update_targets("hw-a", _add("hw-a/x"), delegated.hw[:1])
    repo.discard_staged("hw-a")
    assert repo.staged() == []
    assert repo.timestamp_version() == timestamp
    with pytest.raises(SigningError, match="nothing is staged for hw-a"):
        repo.sign_staged("hw-a", delegated.hw)
    assert repo.update_targets("hw-a", _add("hw-a/y"), delegated.hw[:2]) == Published("hw-a", 1)
    assert list(repo.targets("hw-a").signed.targets) == ["hw-a/y"]


@pytest.mark.parametrize("role", ["../metadata/timestamp", "a/b", "", "/etc/passwd", ".hidden"])
def test_staged_role_names_cannot_be_paths(world: World, role: str) -> None:
    before = _files(world.directory)
    with pytest.raises(SigningError, match="is not a role name"):
        world.repo.discard_staged(role)
    with pytest.raises(SigningError, match="is not a role name"):
        world.repo.sign_staged(role, world.targets)
    assert _files(world.directory) == before


def test_update_of_an_undelegated_role_is_refused(world: World) -> None:
    before = _files(world.directory)
    with pytest.raises(MetadataInvalid, match="role 'hw-z' is not delegated by targets"):
        world.repo.update_targets("hw-z", _add("hw-z/x"), world.targets)
    assert _files(world.directory) == before


def test_add_delegation_validation() -> None:
    keys = _keys(_signers(1), 1)
    targets = Targets()
    add_delegation(targets, "hw-a", keys, ["hw-a/*"])
    assert targets.delegations is not None
    assert targets.delegations.roles is not None
    role = targets.delegations.roles["hw-a"]
    assert role.terminating is True
    assert role.paths == ["hw-a/*"]
    assert role.keyids == [keys.keys[0].keyid]
    with pytest.raises(SigningError, match="role hw-a is delegated already"):
        add_delegation(targets, "hw-a", keys, ["hw-a/*"])
    for name in ("root", "targets", "snapshot", "timestamp", "a b", "hw/a", "../x", "-x", "x" * 65, ""):
        with pytest.raises(SigningError, match="is not a valid delegated role name"):
            add_delegation(targets, name, keys, ["x/*"])
    assert list(targets.delegations.roles) == ["hw-a"]


def test_replace_delegated_role_keys_retires_the_old_keys(delegated: World) -> None:
    repo, old = delegated.repo, delegated.hw
    new = _signers(2)
    repo.update_targets("targets", lambda t: replace_role_keys(t, "hw-a", _keys(new, 1)), delegated.targets)
    assert repo.role_keys("hw-a") == _keys(new, 1)
    with pytest.raises(SigningError, match="is not a key of role hw-a"):
        repo.update_targets("hw-a", _add("hw-a/x"), old[:2])
    assert repo.update_targets("hw-a", _add("hw-a/x"), new[:1]) == Published("hw-a", 1)


# -- root rotation ----------------------------------------------------------------------------------


def _rotate_root(new: list[Signer]) -> Callable[[Root], None]:
    def change(root: Root) -> None:
        replace_role_keys(root, "root", _keys(new, 2))

    return change


def test_root_rotation_with_only_new_keys_stays_staged(world: World) -> None:
    new = _signers(3)
    before = _files(world.directory / "metadata")
    assert world.repo.update_root(_rotate_root(new), new[:3]) == Staged("root", 2, 3, 2)
    assert _files(world.directory / "metadata") == before
    assert world.repo.root().signed.version == 1
    # Completed by the old keys' threshold.
    assert world.repo.sign_staged("root", world.root[:1]) == Staged("root", 2, 3, 2)
    assert world.repo.sign_staged("root", world.root[1:2]) == Published("root", 2)
    root = world.repo.root().signed
    assert root.version == 2
    assert world.repo.role_keys("root") == _keys(new, 2)
    assert (world.directory / "metadata" / "2.root.json").read_bytes() == (
        world.directory / "metadata" / "root.json"
    ).read_bytes()
    assert world.repo.staged() == []


def test_root_rotation_with_only_old_keys_stays_staged(world: World) -> None:
    new = _signers(3)
    before = _files(world.directory / "metadata")
    assert world.repo.update_root(_rotate_root(new), world.root) == Staged("root", 2, 0, 2)
    assert world.repo.staged() == [Staged("root", 2, 0, 2)]
    assert _files(world.directory / "metadata") == before
    with pytest.raises(SigningError, match="a new root is staged and waiting for signatures"):
        world.repo.update_root(_rotate_root(new), world.root + new)
    assert world.repo.sign_staged("root", new[:1]) == Staged("root", 2, 1, 2)
    assert _files(world.directory / "metadata") == before
    assert world.repo.sign_staged("root", new[1:2]) == Published("root", 2)
    assert world.repo.root().signed.version == 2


def test_root_rotation_refuses_a_key_of_neither_root(world: World) -> None:
    new, outsider = _signers(3), _signers(1)[0]
    before = _files(world.directory)
    with pytest.raises(SigningError, match="is not a key of role root"):
        world.repo.update_root(_rotate_root(new), [*world.root, outsider])
    assert _files(world.directory) == before


def test_root_update_with_old_and_new_thresholds_publishes_and_keeps_serving(world: World) -> None:
    new = _signers(3)
    assert world.repo.update_root(_rotate_root(new), world.root[:2] + new[:2]) == Published("root", 2)
    assert world.repo.timestamp_version() == 2
    # The next change is signed under the new root; the old root keys are no longer trusted.
    assert world.repo.update_targets("targets", _add("a"), world.targets) == Published("targets", 2)
    with pytest.raises(SigningError, match="is not a key of role root"):
        world.repo.update_root(lambda root: None, world.root[:1])


def test_timestamp_key_rotation_publishes_under_the_new_key(world: World) -> None:
    new_timestamp = _signers(1)[0]
    repo = world.reopen(timestamp=new_timestamp)
    rotate = lambda root: replace_role_keys(root, "timestamp", _keys([new_timestamp], 1))  # noqa: E731
    assert repo.update_root(rotate, world.root[:2]) == Published("root", 2)
    assert repo.role_keys("timestamp") == _keys([new_timestamp], 1)
    assert repo.timestamp_version() == 2
    assert repo.refresh(force=True) is True
    assert repo.update_targets("targets", _add("a"), world.targets) == Published("targets", 2)
    # A repository still signing with the retired key refuses to publish what clients would refuse.
    before = _files(world.directory)
    with pytest.raises(SigningError, match="the root does not trust this repository's timestamp key"):
        world.repo.refresh(force=True)
    with pytest.raises(SigningError, match="the root does not trust this repository's timestamp key"):
        world.repo.update_targets("targets", _add("b"), world.targets)
    assert _files(world.directory) == before


def test_root_rotation_refuses_to_publish_without_the_new_online_key(world: World) -> None:
    new_timestamp = _signers(1)[0]
    before = _files(world.directory)
    rotate = lambda root: replace_role_keys(root, "timestamp", _keys([new_timestamp], 1))  # noqa: E731
    with pytest.raises(SigningError, match="the root does not trust this repository's timestamp key"):
        world.repo.update_root(rotate, world.root[:2])
    assert _files(world.directory) == before
    assert world.repo.root().signed.version == 1


def test_snapshot_key_rotation(world: World) -> None:
    new_snapshot = _signers(1)[0]
    repo = world.reopen(snapshot=new_snapshot)
    rotate = lambda root: replace_role_keys(root, "snapshot", _keys([new_snapshot], 1))  # noqa: E731
    assert repo.update_root(rotate, world.root[:2]) == Published("root", 2)
    assert repo.update_targets("targets", _add("a"), world.targets) == Published("targets", 2)


# -- tampering: reads fail closed and nothing is re-signed -------------------------------------------


def _flip(path: Path, old: bytes, new: bytes) -> bytes:
    data = path.read_bytes()
    assert data.count(old) == 1
    tampered = data.replace(old, new)
    path.write_bytes(tampered)
    return tampered


def test_byte_flipped_targets_is_refused_and_not_resigned(world: World) -> None:
    path = world.directory / "metadata" / "1.targets.json"
    tampered = _flip(path, b'"expires":"2030-04-01', b'"expires":"2031-04-01')
    with pytest.raises(MetadataInvalid, match=r"targets version 1: .*signed by 0/1 keys"):
        world.repo.targets()
    timestamp = (world.directory / "metadata" / "timestamp.json").read_bytes()
    with pytest.raises(MetadataInvalid, match="targets version 1"):
        world.repo.update_targets("targets", _add("a"), world.targets)
    assert path.read_bytes() == tampered
    assert not (world.directory / "metadata" / "2.targets.json").exists()
    assert (world.directory / "metadata" / "timestamp.json").read_bytes() == timestamp


def test_flipped_signature_byte_is_refused(world: World) -> None:
    path = world.directory / "metadata" / "1.targets.json"
    signature = json.loads(path.read_bytes())["signatures"][0]["sig"]
    flipped = ("1" if signature[0] != "1" else "2") + signature[1:]
    _flip(path, signature.encode(), flipped.encode())
    with pytest.raises(MetadataInvalid, match="signed by 0/1 keys"):
        world.repo.targets()


def test_removed_timestamp_signature_fails_closed(world: World) -> None:
    path = world.directory / "metadata" / "timestamp.json"
    document = json.loads(path.read_bytes())
    document["signatures"] = []
    path.write_bytes(json.dumps(document).encode())
    before = _files(world.directory)
    with pytest.raises(MetadataInvalid, match=r"timestamp version 1: .*signed by 0/1 keys"):
        world.repo.refresh(force=True)
    with pytest.raises(MetadataInvalid, match="timestamp version 1"):
        world.repo.targets()
    assert _files(world.directory) == before


def test_tampered_root_is_refused(world: World) -> None:
    path = world.directory / "metadata" / "1.root.json"
    _flip(path, b'"version":1', b'"version":7')
    with pytest.raises(MetadataInvalid, match="root version 7"):
        world.repo.root()


def test_gap_in_the_root_chain_is_refused(world: World) -> None:
    metadata = world.directory / "metadata"
    (metadata / "3.root.json").write_bytes((metadata / "1.root.json").read_bytes())
    with pytest.raises(MetadataInvalid, match=r"root versions are not 1..N: \[1, 3\]"):
        world.repo.root()


def test_a_root_not_signed_by_its_predecessor_is_refused(world: World, tmp_path: Path) -> None:
    other = _signers(3)
    forged = TufRepository(
        tmp_path / "forged",
        snapshot_signer=world.snapshot,
        timestamp_signer=world.timestamp,
        clock=world.clock,
    )
    forged.create(
        root=_keys(other, 1),
        targets=_keys(world.targets, 1),
        root_signers=other[:1],
        targets_signers=world.targets,
    )
    forged_root = forged.root()
    forged_root.signed.version = 2
    forged_root.signatures.clear()
    forged_root.sign(other[0])
    (world.directory / "metadata" / "2.root.json").write_bytes(forged_root.to_bytes())
    with pytest.raises(MetadataInvalid, match=r"root version 2: .*signed by 0/2 keys"):
        world.repo.root()


def test_unparseable_and_mistyped_files_are_refused(world: World) -> None:
    metadata = world.directory / "metadata"
    (metadata / "timestamp.json").write_bytes((metadata / "1.snapshot.json").read_bytes())
    with pytest.raises(MetadataInvalid, match="holds snapshot metadata, not timestamp"):
        world.repo.timestamp_version()
    (metadata / "timestamp.json").write_bytes(b"{not json")
    with pytest.raises(MetadataInvalid, match=r"timestamp.json is not valid TUF metadata"):
        world.repo.timestamp_version()
    (metadata / "timestamp.json").unlink()
    with pytest.raises(MetadataInvalid, match=r"timestamp.json is missing"):
        world.repo.timestamp_version()


def test_oversized_metadata_is_refused(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from fleetguard.ota import repository

    monkeypatch.setattr(repository, "MAX_METADATA_BYTES", 64)
    with pytest.raises(MetadataInvalid, match=r"timestamp.json is larger than 64 bytes"):
        world.repo.timestamp_version()


# -- refresh -----------------------------------------------------------------------------------------


def test_refresh_only_past_half_life(world: World) -> None:
    before = _files(world.directory)
    world.clock.now = NOW + dt.timedelta(hours=12) - dt.timedelta(seconds=1)
    assert world.repo.refresh() is False
    assert _files(world.directory) == before
    world.clock.now = NOW + dt.timedelta(hours=12)
    assert world.repo.refresh() is True
    assert world.repo.timestamp_version() == 2
    assert world.repo.targets().signed.version == 1  # the roles are unchanged, only re-pointed
    assert (world.directory / "metadata" / "2.snapshot.json").exists()
    # Fresh again: not re-signed until the new timestamp is past its own half life.
    assert world.repo.refresh() is False
    assert world.repo.timestamp_version() == 2


def test_refresh_force_resigns_at_once(world: World) -> None:
    assert world.repo.refresh(force=True) is True
    assert world.repo.timestamp_version() == 2


def test_refresh_keeps_delegated_roles_in_the_snapshot(delegated: World) -> None:
    delegated.repo.update_targets("hw-a", _add("hw-a/x"), delegated.hw[:2])
    delegated.repo.refresh(force=True)
    assert delegated.repo.targets("hw-a").signed.version == 1
    snapshot = json.loads((delegated.directory / "metadata" / "4.snapshot.json").read_bytes())
    assert snapshot["signed"]["meta"] == {"hw-a.json": {"version": 1}, "targets.json": {"version": 2}}


# -- target files ------------------------------------------------------------------------------------


def test_add_target_stores_a_hash_prefixed_copy(world: World, tmp_path: Path) -> None:
    source = tmp_path / "fw.bin"
    source.write_bytes(b"firmware image")
    digest = hashlib.sha256(b"firmware image").hexdigest()
    target = world.repo.add_target("hw-a/fw.bin", source, custom={"fleetguard": {"release": "1.0"}})
    assert target.path == "hw-a/fw.bin"
    assert target.length == 14
    assert target.hashes == {"sha256": digest}
    assert target.custom == {"fleetguard": {"release": "1.0"}}
    assert (world.directory / "targets" / "hw-a" / f"{digest}.fw.bin").read_bytes() == b"firmware image"
    plain = world.repo.add_target("top.bin", source, custom={})
    assert plain.unrecognized_fields == {}
    assert (world.directory / "targets" / f"{digest}.top.bin").exists()


def test_target_file_path() -> None:
    assert target_file_path("a/b/c.bin", "ff") == "a/b/ff.c.bin"
    assert target_file_path("c.bin", "ff") == "ff.c.bin"


@pytest.mark.parametrize(
    "path", ["../escape.bin", "/etc/escape.bin", "a/../../escape.bin", "a//b", "a/./b", ""]
)
def test_add_target_refuses_paths_outside_targets(world: World, tmp_path: Path, path: str) -> None:
    source = tmp_path / "fw.bin"
    source.write_bytes(b"firmware image")
    before = _files(world.directory)
    with pytest.raises(MetadataInvalid, match=r"must be relative, without . or .. segments"):
        world.repo.add_target(path, source, custom={})
    assert _files(world.directory) == before
