"""Rotation of every online key: the root trusts only the new key, and what clients read verifies.

Offline roles rotate through ``update_root`` / ``replace_role_keys`` (tests/unit/ota/test_repository.py);
these are the five online keys, whose rotation also swaps the key file the installation signs with.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, Root, Targets, Timestamp

from fleetguard.ota.director import DirectorTarget
from fleetguard.ota.errors import SigningError
from fleetguard.ota.keys import generate_key_file, load_signer
from fleetguard.ota.repositories import OtaRepositories
from fleetguard.ota.repository import RoleKeys

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
ONLINE = ("image-snapshot", "image-timestamp", "director-targets", "director-snapshot", "director-timestamp")


def _signer(directory: Path, name: str) -> Signer:
    generate_key_file(directory / f"{name}.pem")
    return load_signer(directory / f"{name}.pem")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[OtaRepositories, dict[str, Signer]]:
    keys = tmp_path / "offline"
    keys.mkdir()
    signers = {name: _signer(keys, name) for name in ("root-1", "root-2", "targets", "director")}
    repositories = OtaRepositories(tmp_path / "data", clock=lambda: T0)
    repositories.initialize(
        image_root=RoleKeys((signers["root-1"].public_key, signers["root-2"].public_key), 2),
        image_targets=RoleKeys((signers["targets"].public_key,), 1),
        director_root=RoleKeys((signers["director"].public_key,), 1),
        image_root_signers=[signers["root-1"], signers["root-2"]],
        image_targets_signers=[signers["targets"]],
        director_root_signers=[signers["director"]],
    )
    return repositories, signers


def _root(repositories: OtaRepositories, name: str) -> Root:
    return (repositories.image if name == "image" else repositories.director.repository).root().signed


def _key_file_id(repositories: OtaRepositories, name: str) -> str:
    return load_signer(repositories.keys_dir / f"{name}.pem").public_key.keyid


@pytest.mark.parametrize("name", ONLINE)
def test_an_online_key_rotates_and_the_root_trusts_only_the_new_one(
    setup: tuple[OtaRepositories, dict[str, Signer]], name: str
) -> None:
    repositories, signers = setup
    repository, role = name.split("-", 1)
    old = _key_file_id(repositories, name)
    repositories.director.assign("cam-1", [])
    roots = {"image": [signers["root-1"], signers["root-2"]], "director": [signers["director"]]}

    resigned = repositories.rotate_online(name, roots[repository])

    new = _key_file_id(repositories, name)
    assert new != old
    root = _root(repositories, repository)
    assert root.version == 2
    assert root.roles[role].keyids == [new]
    assert not (repositories.keys_dir / f"{name}.next.pem").exists()
    assert resigned == (1 if repository == "director" else 0)
    # What clients read next verifies under the new root (the reads verify every signature).
    repositories.image.timestamp_version()
    repositories.director.repository.targets()
    device_dir = repositories.director.devices_dir / "cam-1"
    version = repositories.director.current("cam-1")
    assert version is not None
    director_root = repositories.director.repository.root()
    timestamp = Metadata[Timestamp].from_bytes((device_dir / "timestamp.json").read_bytes())
    director_root.verify_delegate("timestamp", timestamp)
    targets = Metadata[Targets].from_bytes((device_dir / f"{version.version}.targets.json").read_bytes())
    director_root.verify_delegate("targets", targets)


def test_rotation_without_the_root_threshold_changes_nothing(
    setup: tuple[OtaRepositories, dict[str, Signer]],
) -> None:
    repositories, signers = setup
    old = _key_file_id(repositories, "image-timestamp")
    with pytest.raises(SigningError, match="needs the image root's threshold of keys in one command"):
        repositories.rotate_online("image-timestamp", [signers["root-1"]])
    assert _key_file_id(repositories, "image-timestamp") == old
    assert _root(repositories, "image").version == 1
    assert repositories.image.staged() == []
    assert not (repositories.keys_dir / "image-timestamp.next.pem").exists()


def test_an_unknown_online_key_name_is_refused(setup: tuple[OtaRepositories, dict[str, Signer]]) -> None:
    repositories, signers = setup
    with pytest.raises(SigningError, match="'image-root' is not an online key"):
        repositories.rotate_online("image-root", [signers["root-1"], signers["root-2"]])


def test_director_assignments_keep_their_targets_through_a_targets_key_rotation(
    setup: tuple[OtaRepositories, dict[str, Signer]],
) -> None:
    repositories, signers = setup
    target = DirectorTarget("cam-x/2.0/fw.img", 10, "a" * 64, "cam-x", 2, "c1")
    before = repositories.director.assign("cam-1", [target])
    repositories.rotate_online("director-targets", [signers["director"]])
    after = repositories.director.current("cam-1")
    assert after is not None
    assert after.targets == (target,)
    assert after.version == before.version + 1
