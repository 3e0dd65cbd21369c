"""The real ``tuf.ngclient.Updater`` accepts what TufRepository and Director publish, over HTTP.

One ``ThreadingHTTPServer`` on 127.0.0.1 serves the image repository's directory under ``/image/``
and the director under ``/devices/<id>/`` (``N.root.json`` from the shared root chain, the rest from
the device's own directory: the one alias rule :meth:`Director.device_file` describes).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import Root, TargetFile, Targets
from tuf.ngclient import Updater

from fleetguard.ota.crosscheck import TargetEntry, verify_assignment
from fleetguard.ota.director import Director, DirectorTarget
from fleetguard.ota.errors import MetadataInvalid, SigningError
from fleetguard.ota.repository import (
    Published,
    RoleKeys,
    Staged,
    TufRepository,
    add_delegation,
    replace_role_keys,
)
from fleetguard.ota.scope import PPM, RolloutScope

IMAGE = b"firmware image 1.0\n" * 100
IMAGE_SHA256 = hashlib.sha256(IMAGE).hexdigest()
TARGET = "hw-a/fw-1.0.bin"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)  # the client checks expiry against the real clock


def _signers(count: int) -> list[Signer]:
    return [CryptoSigner.generate_ed25519() for _ in range(count)]


def _keys(signers: list[Signer], threshold: int) -> RoleKeys:
    return RoleKeys(tuple(signer.public_key for signer in signers), threshold)


def _scope() -> RolloutScope:
    now = _now().replace(microsecond=0)
    return RolloutScope(
        "spring", PPM, "0123456789abcdef", ("hw-a",), now - dt.timedelta(hours=1), now + dt.timedelta(days=1)
    )


class _Handler(http.server.BaseHTTPRequestHandler):
    image_dir: Path
    director: Director
    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        try:
            path = self._resolve(self.path)
            data = path.read_bytes()
        except (OSError, MetadataInvalid, SigningError):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _resolve(self, url: str) -> Path:
        parts = url.split("/")
        if len(parts) == 4 and parts[1] == "devices":
            return self.director.device_file(parts[2], parts[3])
        if parts[1] == "image" and ".." not in parts:
            return self.image_dir.joinpath(*parts[2:])
        raise OSError("not served")

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Served:
    base: str
    image: TufRepository
    director: Director
    root: list[Signer]
    targets: list[Signer]
    hw: list[Signer]
    snapshot: Signer
    timestamp: Signer
    directory: Path
    requests: list[str]

    def updater(self, name: str = "client") -> Updater:
        metadata_dir = self.directory / name / "metadata"
        targets_dir = self.directory / name / "targets"
        bootstrap = None
        if not metadata_dir.exists():
            metadata_dir.mkdir(parents=True)
            targets_dir.mkdir(parents=True)
            bootstrap = (self.image.metadata_dir / "1.root.json").read_bytes()
        return Updater(
            str(metadata_dir),
            f"{self.base}/image/metadata/",
            str(targets_dir),
            f"{self.base}/image/targets/",
            bootstrap=bootstrap or (metadata_dir / "root.json").read_bytes(),
        )

    def device_updater(self, device_id: str, name: str) -> Updater:
        metadata_dir = self.directory / name / "metadata"
        first = not metadata_dir.exists()
        metadata_dir.mkdir(parents=True, exist_ok=True)
        source = (
            self.director.repository.metadata_dir / "1.root.json" if first else metadata_dir / "root.json"
        )
        return Updater(
            str(metadata_dir),
            f"{self.base}/devices/{device_id}/",
            str(self.directory / name),
            f"{self.base}/image/targets/",
            bootstrap=source.read_bytes(),
        )


def _publish_image(image: TufRepository, hw: list[Signer], source: Path) -> None:
    custom = {
        "fleetguard": {
            "release": "1.0",
            "release_counter": 5,
            "hardware_ids": ["hw-a"],
            "scopes": [_scope().to_custom()],
        }
    }
    target = image.add_target(TARGET, source, custom=custom)
    staged = image.update_targets("hw-a", lambda t: t.targets.__setitem__(TARGET, target), hw[:1])
    assert staged == Staged("hw-a", 1, 1, 2)
    assert image.sign_staged("hw-a", hw[1:2]) == Published("hw-a", 1)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    root, targets, hw, (snapshot, timestamp) = _signers(3), _signers(1), _signers(3), _signers(2)
    image = TufRepository(
        tmp_path / "image", snapshot_signer=snapshot, timestamp_signer=timestamp, clock=_now
    )
    image.create(
        root=_keys(root, 2), targets=_keys(targets, 1), root_signers=root[:2], targets_signers=targets
    )
    image.update_targets("targets", lambda t: add_delegation(t, "hw-a", _keys(hw, 2), ["hw-a/*"]), targets)
    source = tmp_path / "fw.bin"
    source.write_bytes(IMAGE)
    _publish_image(image, hw, source)

    director_root = _signers(1)
    d_targets, d_snapshot, d_timestamp = _signers(3)
    director = Director(
        tmp_path / "director",
        targets_signer=d_targets,
        snapshot_signer=d_snapshot,
        timestamp_signer=d_timestamp,
        clock=_now,
    )
    director.create(root=_keys(director_root, 1), root_signers=director_root)

    requests: list[str] = []
    handler = type(
        "Handler", (_Handler,), {"image_dir": tmp_path / "image", "director": director, "requests": requests}
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Served(
            f"http://127.0.0.1:{server.server_address[1]}",
            image,
            director,
            root,
            targets,
            hw,
            snapshot,
            timestamp,
            tmp_path,
            requests,
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _trusted_root_version(served: Served, name: str = "client") -> int:
    document = json.loads((served.directory / name / "metadata" / "root.json").read_bytes())
    return int(document["signed"]["version"])


def test_client_refreshes_and_downloads_a_delegated_target(served: Served) -> None:
    updater = served.updater()
    updater.refresh()
    info = updater.get_targetinfo(TARGET)
    assert info is not None
    assert info.hashes == {"sha256": IMAGE_SHA256}
    assert info.custom["fleetguard"]["release_counter"] == 5
    path = updater.download_target(info)
    assert Path(path).read_bytes() == IMAGE
    # Consistent snapshots: versioned metadata names and a hash-prefixed target (TUF spec 5.7.3).
    assert "/image/metadata/2.targets.json" in served.requests
    assert "/image/metadata/1.hw-a.json" in served.requests
    assert f"/image/targets/hw-a/{IMAGE_SHA256}.fw-1.0.bin" in served.requests
    assert updater.get_targetinfo("hw-b/other.bin") is None


def test_client_refuses_a_tampered_delegated_role(served: Served) -> None:
    path = served.image.metadata_dir / "1.hw-a.json"
    path.write_bytes(path.read_bytes().replace(b'"release":"1.0"', b'"release":"6.6"'))
    updater = served.updater()
    updater.refresh()  # the top-level roles are intact
    with pytest.raises(RepositoryError, match="hw-a"):
        updater.get_targetinfo(TARGET)


def test_client_walks_the_root_chain_after_a_k_of_n_rotation(served: Served) -> None:
    served.updater().refresh()
    assert _trusted_root_version(served) == 1
    new_root = _signers(3)

    def rotate(root: Root) -> None:
        replace_role_keys(root, "root", _keys(new_root, 2))

    assert served.image.update_root(rotate, new_root[:2]) == Staged("root", 2, 2, 2)
    assert served.image.sign_staged("root", served.root[:1]) == Staged("root", 2, 2, 2)
    assert served.image.sign_staged("root", served.root[2:3]) == Published("root", 2)
    # A second rotation signed by the new keys alone: the client must walk 1 -> 2 -> 3.
    newer_root = _signers(1)
    served.image.update_root(
        lambda root: replace_role_keys(root, "root", _keys(newer_root, 1)), new_root[:2] + newer_root
    )

    updater = served.updater()
    updater.refresh()
    assert _trusted_root_version(served) == 3
    assert "/image/metadata/2.root.json" in served.requests
    assert "/image/metadata/3.root.json" in served.requests
    info = updater.get_targetinfo(TARGET)
    assert info is not None
    assert Path(updater.download_target(info)).read_bytes() == IMAGE


def test_client_updates_after_the_timestamp_key_rotates(served: Served) -> None:
    served.updater().refresh()
    new_timestamp = _signers(1)[0]
    image = TufRepository(
        served.image.directory, snapshot_signer=served.snapshot, timestamp_signer=new_timestamp, clock=_now
    )
    rotate = lambda root: replace_role_keys(root, "timestamp", _keys([new_timestamp], 1))  # noqa: E731
    assert image.update_root(rotate, served.root[:2]) == Published("root", 2)

    def withdraw(targets: Targets) -> None:
        del targets.targets[TARGET]

    image.update_targets("hw-a", withdraw, served.hw[:2])

    updater = served.updater()
    updater.refresh()
    assert _trusted_root_version(served) == 2
    timestamp = json.loads((served.directory / "client" / "metadata" / "timestamp.json").read_bytes())
    assert [s["keyid"] for s in timestamp["signatures"]] == [new_timestamp.public_key.keyid]
    assert updater.get_targetinfo(TARGET) is None  # the newest hw-a, signed after the rotation


def test_director_metadata_is_accepted_per_device(served: Served) -> None:
    assignment = DirectorTarget(TARGET, len(IMAGE), IMAGE_SHA256, "hw-a", 5, "spring")
    assert served.director.assign("dev-1", [assignment]).version == 1
    served.director.assign("dev-2", [])

    device = served.device_updater("dev-1", "dev-1")
    device.refresh()
    director_info = device.get_targetinfo(TARGET)
    assert director_info is not None
    assert director_info.custom["fleetguard"] == {
        "device": "dev-1",
        "hardware_id": "hw-a",
        "release_counter": 5,
        "campaign": "spring",
    }
    assert Path(device.download_target(director_info)).read_bytes() == IMAGE
    assert "/devices/dev-1/1.targets.json" in served.requests

    other = served.device_updater("dev-2", "dev-2")
    other.refresh()
    assert other.get_targetinfo(TARGET) is None

    # The device decides with both repositories' entries (Uptane 5.4.4.2).
    image = served.updater()
    image.refresh()
    image_info = image.get_targetinfo(TARGET)
    assert image_info is not None
    decided = verify_assignment(
        _entry(director_info),
        _entry(image_info),
        device_id="dev-1",
        hardware_id="hw-a",
        installed_counter=4,
        now=_now(),
    )
    assert (decided.sha256, decided.release_counter, decided.release) == (IMAGE_SHA256, 5, "1.0")

    # A new assignment is a new version; the same device's client moves to it.
    assert served.director.assign("dev-1", []).version == 2
    device = served.device_updater("dev-1", "dev-1")
    device.refresh()
    assert device.get_targetinfo(TARGET) is None
    assert "/devices/dev-1/2.snapshot.json" in served.requests


def test_device_updater_refuses_another_devices_metadata_under_its_root(
    served: Served, tmp_path: Path
) -> None:
    # A director whose root this device does not trust cannot serve it.
    other = Director(
        tmp_path / "other",
        targets_signer=_signers(1)[0],
        snapshot_signer=_signers(1)[0],
        timestamp_signer=_signers(1)[0],
        clock=_now,
    )
    other_root = _signers(1)
    other.create(root=_keys(other_root, 1), root_signers=other_root)
    served.director.assign("dev-1", [])
    metadata_dir = tmp_path / "foreign" / "metadata"
    metadata_dir.mkdir(parents=True)
    updater = Updater(
        str(metadata_dir),
        f"{served.base}/devices/dev-1/",
        str(tmp_path / "foreign"),
        bootstrap=(other.repository.metadata_dir / "1.root.json").read_bytes(),
    )
    with pytest.raises(RepositoryError, match="timestamp"):
        updater.refresh()


def _entry(info: TargetFile) -> TargetEntry:
    return TargetEntry(info.path, info.length, dict(info.hashes), info.custom)
