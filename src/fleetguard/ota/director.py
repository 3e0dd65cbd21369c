"""The Uptane director: online, per-device TUF metadata saying which image each device should install.

Theory of operation. The director is a TUF repository of its own (:class:`TufRepository` under
``<ota dir>/director``): its root is offline and threshold-signed like the image repository's, and it
delegates ``targets``, ``snapshot`` and ``timestamp`` to online keys. Unlike the image repository it
serves *one set of metadata per device* (Uptane director repository, section 5.2 of the Uptane
standard): ``devices/<device-id>/N.targets.json``, ``N.snapshot.json`` and ``timestamp.json``, all
signed by the same online keys and verified by the device against the same root chain, which it
finds at ``devices/<device-id>/N.root.json`` (served from ``metadata/N.root.json``; a plain web server
needs one alias rule for that).

The director's targets for a device name at most one image per hardware id, with its length and
hashes, and ``custom.fleetguard`` (device id, hardware id, release counter, campaign and an optional
delta). The device installs it only when the *image repository*, signed offline, lists the same image
with the same hash, length, hardware id and release counter, and a signed scope that covers the
device (:mod:`fleetguard.ota.crosscheck`). A director that is compromised can therefore choose among
approved images for approved devices, and nothing else.

Versions: the three per-device roles move together, one version per assignment change or renewal.
Files older than the previous version are removed, so that a device's directory stays small.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, MetaFile, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from fleetguard.ota.errors import MetadataInvalid, SigningError
from fleetguard.ota.repository import DEFAULT_EXPIRY, RoleKeys, TufRepository

__all__ = ["DEVICE_ID", "DeviceMetadata", "Director", "DirectorTarget"]

DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
"""Device ids that may name a directory (the inventory's ids are narrower)."""

_SERIALIZER = JSONSerializer(compact=True)
_DEVICE_EXPIRY = dt.timedelta(days=7)
_MAX_TIMESTAMP = 16 * 1024
_MAX_DEVICE_FILE = 64 * 1024
_T = TypeVar("_T", Targets, Timestamp)


@dataclass(frozen=True, slots=True)
class DirectorTarget:
    """One image the director tells a device to install."""

    path: str
    length: int
    sha256: str
    hardware_id: str
    release_counter: int
    campaign: str
    delta_path: str | None = None

    def target_file(self, device_id: str) -> TargetFile:
        """Return the TUF target entry (``custom.fleetguard`` carries the Uptane fields)."""
        custom: dict[str, object] = {
            "device": device_id,
            "hardware_id": self.hardware_id,
            "release_counter": self.release_counter,
            "campaign": self.campaign,
        }
        if self.delta_path is not None:
            custom["delta"] = self.delta_path
        return TargetFile(self.length, {"sha256": self.sha256}, self.path, {"custom": {"fleetguard": custom}})


@dataclass(frozen=True, slots=True)
class DeviceMetadata:
    """What the director serves a device now."""

    device_id: str
    version: int
    expires: dt.datetime
    targets: tuple[DirectorTarget, ...] = ()

    def renewal_due(self, now: dt.datetime) -> bool:
        """Whether the timestamp is past half its life (re-sign before devices see it expire)."""
        return self.expires - now < DEFAULT_EXPIRY["timestamp"] / 2


class Director:
    """The director repository (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        targets_signer: Signer,
        snapshot_signer: Signer,
        timestamp_signer: Signer,
        clock: Callable[[], dt.datetime],
        device_expiry: dt.timedelta = _DEVICE_EXPIRY,
    ) -> None:
        self.repository = TufRepository(
            directory, snapshot_signer=snapshot_signer, timestamp_signer=timestamp_signer, clock=clock
        )
        self.devices_dir = directory / "devices"
        self._targets_signer = targets_signer
        self._snapshot_signer = snapshot_signer
        self._timestamp_signer = timestamp_signer
        self._clock = clock
        self._device_expiry = device_expiry

    def create(self, *, root: RoleKeys, root_signers: Sequence[Signer]) -> None:
        """Write the director's root (offline keys, ``root``) trusting the online keys for the rest."""
        self.repository.create(
            root=root,
            targets=RoleKeys((self._targets_signer.public_key,), 1),
            root_signers=root_signers,
            targets_signers=[self._targets_signer],
        )
        self.devices_dir.mkdir(exist_ok=True)

    def assign(self, device_id: str, targets: Sequence[DirectorTarget]) -> DeviceMetadata:
        """Publish a new version of ``device_id``'s metadata listing ``targets`` (empty: nothing to install).

        Raises :class:`SigningError` if a hardware id is named twice or the device id cannot be a path.
        """
        _require_device_id(device_id)
        hardware = [target.hardware_id for target in targets]
        if len(set(hardware)) != len(hardware):
            raise SigningError(f"device {device_id}: at most one image per hardware id")
        if len({target.path for target in targets}) != len(targets):
            raise SigningError(f"device {device_id}: a target path is named twice")
        now = self._clock()
        expires = (now + self._device_expiry).replace(microsecond=0)
        directory = self.devices_dir / device_id
        directory.mkdir(parents=True, exist_ok=True)
        version = self.current_version(device_id) + 1
        body = Targets(version=version, expires=expires)
        for target in targets:
            body.targets[target.path] = target.target_file(device_id)
        signed_targets = Metadata(body)
        signed_targets.sign(self._targets_signer)
        snapshot = Metadata(
            Snapshot(version=version, expires=expires, meta={"targets.json": MetaFile(version)})
        )
        snapshot.sign(self._snapshot_signer)
        timestamp_expires = (now + DEFAULT_EXPIRY["timestamp"]).replace(microsecond=0)
        timestamp = Metadata(
            Timestamp(version=version, expires=timestamp_expires, snapshot_meta=MetaFile(version))
        )
        timestamp.sign(self._timestamp_signer)
        # The timestamp goes last: until it is replaced, the device sees the previous version, whole.
        _write(directory / f"{version}.targets.json", signed_targets.to_bytes(_SERIALIZER))
        _write(directory / f"{version}.snapshot.json", snapshot.to_bytes(_SERIALIZER))
        _write(directory / "timestamp.json", timestamp.to_bytes(_SERIALIZER))
        _prune(directory, keep_from=version - 1)
        return DeviceMetadata(device_id, version, timestamp_expires, tuple(targets))

    def current(self, device_id: str) -> DeviceMetadata | None:
        """Return what is served for ``device_id`` now (None: nothing yet); raise on a corrupt file."""
        _require_device_id(device_id)
        directory = self.devices_dir / device_id
        timestamp = _read_metadata(directory / "timestamp.json", Timestamp)
        if timestamp is None:
            return None
        version = timestamp.signed.version
        targets = _read_metadata(directory / f"{version}.targets.json", Targets)
        if targets is None:
            raise MetadataInvalid(f"{directory} lacks {version}.targets.json")
        listed = tuple(_director_target(entry) for entry in targets.signed.targets.values())
        return DeviceMetadata(device_id, version, timestamp.signed.expires, listed)

    def current_version(self, device_id: str) -> int:
        """Return the version of ``device_id``'s served metadata (0: none yet)."""
        _require_device_id(device_id)
        path = self.devices_dir / device_id / "timestamp.json"
        try:
            with open(path, "rb") as file:
                data = file.read(_MAX_TIMESTAMP + 1)
        except FileNotFoundError:
            return 0
        try:
            timestamp = Metadata[Timestamp].from_bytes(data)
        except DeserializationError as exc:
            raise MetadataInvalid(f"{path} is not valid TUF metadata: {exc}") from exc
        return timestamp.signed.version

    def resign_all(self) -> int:
        """Publish a new version of every device's metadata with the same targets (after a key
        rotation); return how many devices."""
        if not self.devices_dir.exists():
            return 0
        count = 0
        for entry in sorted(os.scandir(self.devices_dir), key=lambda e: e.name):
            current = self.current(entry.name)
            if current is not None:
                self.assign(entry.name, current.targets)
                count += 1
        return count

    def device_file(self, device_id: str, name: str) -> Path:
        """Return the file that serves ``<device>/<name>`` (root versions come from the shared chain).

        Raises :class:`MetadataInvalid` for a name that is not a metadata file name.
        """
        _require_device_id(device_id)
        if _ROOT_FILE.fullmatch(name):
            return self.repository.metadata_dir / name
        if not _DEVICE_FILE.fullmatch(name):
            raise MetadataInvalid(f"{name[:80]!r} is not a director metadata file")
        return self.devices_dir / device_id / name

    def versions(self) -> Mapping[str, int]:
        """Return every device's metadata version (for reports and tests; reads every directory)."""
        if not self.devices_dir.exists():
            return {}
        return {entry.name: self.current_version(entry.name) for entry in os.scandir(self.devices_dir)}


_ROOT_FILE = re.compile(r"[1-9][0-9]{0,9}\.root\.json")
_DEVICE_FILE = re.compile(r"timestamp\.json|[1-9][0-9]{0,9}\.(snapshot|targets)\.json")


def _read_metadata(path: Path, kind: type[_T]) -> Metadata[_T] | None:
    try:
        with open(path, "rb") as file:
            data = file.read(_MAX_DEVICE_FILE + 1)
    except FileNotFoundError:
        return None
    if len(data) > _MAX_DEVICE_FILE:
        raise MetadataInvalid(f"{path} is larger than {_MAX_DEVICE_FILE} bytes")
    try:
        metadata: Metadata[_T] = Metadata.from_bytes(data)
    except DeserializationError as exc:
        raise MetadataInvalid(f"{path} is not valid TUF metadata: {exc}") from exc
    if not isinstance(metadata.signed, kind):
        raise MetadataInvalid(f"{path} holds {metadata.signed.type} metadata")
    return metadata


def _director_target(entry: TargetFile) -> DirectorTarget:
    fields = entry.custom.get("fleetguard", {})
    delta = fields.get("delta")
    return DirectorTarget(
        path=entry.path, length=entry.length, sha256=entry.hashes["sha256"],
        hardware_id=str(fields.get("hardware_id")), release_counter=int(fields.get("release_counter", 0)),
        campaign=str(fields.get("campaign")), delta_path=delta if isinstance(delta, str) else None,
    )  # fmt: skip


def _require_device_id(device_id: str) -> None:
    if not DEVICE_ID.fullmatch(device_id):
        raise SigningError(f"device id {device_id[:80]!r} cannot name director metadata")


def _write(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _prune(directory: Path, *, keep_from: int) -> None:
    for entry in os.scandir(directory):
        head = entry.name.split(".", 1)[0]
        if head.isdigit() and int(head) < keep_from:
            os.unlink(entry.path)
