"""The director: per-device targets/snapshot/timestamp under one offline root."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import Metadata

from fleetguard.ota.director import Director, DirectorTarget
from fleetguard.ota.errors import MetadataInvalid, SigningError
from fleetguard.ota.repository import RoleKeys

NOW = dt.datetime(2030, 1, 1, 12, 0, 0, 500, tzinfo=dt.UTC)
SHA = "ab" * 32


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def signers() -> dict[str, Signer]:
    return {role: CryptoSigner.generate_ed25519() for role in ("root", "targets", "snapshot", "timestamp")}


@pytest.fixture
def director(tmp_path: Path, signers: dict[str, Signer]) -> Director:
    director = Director(
        tmp_path,
        targets_signer=signers["targets"],
        snapshot_signer=signers["snapshot"],
        timestamp_signer=signers["timestamp"],
        clock=Clock(),
    )
    director.create(root=RoleKeys((signers["root"].public_key,), 1), root_signers=[signers["root"]])
    return director


def _target(hardware_id: str = "hw-a", path: str = "hw-a/fw.bin", delta: str | None = None) -> DirectorTarget:
    return DirectorTarget(path, 10, SHA, hardware_id, 3, "spring", delta)


def _load(path: Path) -> Metadata:  # type: ignore[type-arg]
    return Metadata.from_bytes(path.read_bytes())


def test_create_trusts_the_online_keys(director: Director, signers: dict[str, Signer]) -> None:
    assert director.devices_dir.is_dir()
    root = director.repository.root().signed
    for role in ("targets", "snapshot", "timestamp"):
        assert root.roles[role].keyids == [signers[role].public_key.keyid]
    assert director.versions() == {}


def test_assign_writes_signed_per_device_metadata(director: Director, signers: dict[str, Signer]) -> None:
    result = director.assign("dev-1", [_target(delta="hw-a/fw.delta")])
    assert (result.device_id, result.version) == ("dev-1", 1)
    assert result.expires == dt.datetime(2030, 1, 2, 12, tzinfo=dt.UTC)  # one day, whole seconds
    directory = director.devices_dir / "dev-1"
    assert sorted(p.name for p in directory.iterdir()) == [
        "1.snapshot.json",
        "1.targets.json",
        "timestamp.json",
    ]
    root = director.repository.root()
    targets = _load(directory / "1.targets.json")
    root.verify_delegate("targets", targets)
    root.verify_delegate("snapshot", _load(directory / "1.snapshot.json"))
    timestamp = _load(directory / "timestamp.json")
    root.verify_delegate("timestamp", timestamp)
    assert timestamp.signed.snapshot_meta.version == 1
    assert targets.signed.expires == dt.datetime(2030, 1, 8, 12, tzinfo=dt.UTC)
    entry = targets.signed.targets["hw-a/fw.bin"]
    assert (entry.length, entry.hashes) == (10, {"sha256": SHA})
    assert entry.custom == {
        "fleetguard": {
            "device": "dev-1",
            "hardware_id": "hw-a",
            "release_counter": 3,
            "campaign": "spring",
            "delta": "hw-a/fw.delta",
        }
    }


def test_no_delta_means_no_delta_field(director: Director) -> None:
    director.assign("dev-1", [_target()])
    document = json.loads((director.devices_dir / "dev-1" / "1.targets.json").read_bytes())
    assert "delta" not in document["signed"]["targets"]["hw-a/fw.bin"]["custom"]["fleetguard"]


def test_versions_increase_and_pruning_keeps_current_and_previous(director: Director) -> None:
    directory = director.devices_dir / "dev-1"
    assert director.current_version("dev-1") == 0
    for expected in range(1, 5):
        assert director.assign("dev-1", [_target()]).version == expected
        assert director.current_version("dev-1") == expected
    assert sorted(p.name for p in directory.iterdir()) == [
        "3.snapshot.json",
        "3.targets.json",
        "4.snapshot.json",
        "4.targets.json",
        "timestamp.json",
    ]
    director.assign("dev-2", [])
    assert director.versions() == {"dev-1": 4, "dev-2": 1}


def test_one_image_per_hardware_id(director: Director) -> None:
    director.assign("dev-1", [_target()])
    before = {p.name: p.read_bytes() for p in (director.devices_dir / "dev-1").iterdir()}
    with pytest.raises(SigningError, match="device dev-1: at most one image per hardware id"):
        director.assign("dev-1", [_target(), _target(path="hw-a/other.bin")])
    assert {p.name: p.read_bytes() for p in (director.devices_dir / "dev-1").iterdir()} == before
    two = director.assign("dev-1", [_target(), _target("hw-b", "hw-b/fw.bin")])
    assert two.version == 2


@pytest.mark.parametrize(
    "device_id", ["../x", "a/b", "", ".hidden", "..", "-dash", "x" * 129, "a\x00b", "a b"]
)
def test_bad_device_ids_are_refused(director: Director, device_id: str) -> None:
    with pytest.raises(SigningError, match="cannot name director metadata"):
        director.assign(device_id, [])
    with pytest.raises(SigningError, match="cannot name director metadata"):
        director.current_version(device_id)
    with pytest.raises(SigningError, match="cannot name director metadata"):
        director.device_file(device_id, "timestamp.json")
    assert list(director.devices_dir.iterdir()) == []
    assert not (director.devices_dir.parent / "x").exists()


def test_device_file_maps_root_versions_to_the_shared_chain(director: Director) -> None:
    assert director.device_file("dev-1", "1.root.json") == director.repository.metadata_dir / "1.root.json"
    assert director.device_file("dev-1", "12.root.json") == director.repository.metadata_dir / "12.root.json"
    for name in ("timestamp.json", "1.snapshot.json", "7.targets.json"):
        assert director.device_file("dev-1", name) == director.devices_dir / "dev-1" / name


@pytest.mark.parametrize(
    "name",
    [
        "root.json",
        "0.root.json",
        "../timestamp.json",
        "1.hw-a.json",
        "snapshot.json",
        "targets.json",
        "01.targets.json",
        "1.targets.json.tmp",
        ".timestamp.json.tmp",
        "",
        "a/1.root.json",
        "12345678901.root.json",
    ],
)
def test_device_file_refuses_names_that_are_not_metadata_names(director: Director, name: str) -> None:
    with pytest.raises(MetadataInvalid, match="is not a director metadata file"):
        director.device_file("dev-1", name)


def test_corrupt_timestamp_is_metadata_invalid(director: Director) -> None:
    director.assign("dev-1", [])
    (director.devices_dir / "dev-1" / "timestamp.json").write_bytes(b"{broken")
    with pytest.raises(MetadataInvalid, match=r"timestamp.json is not valid TUF metadata"):
        director.current_version("dev-1")
    with pytest.raises(MetadataInvalid, match="is not valid TUF metadata"):
        director.assign("dev-1", [])
