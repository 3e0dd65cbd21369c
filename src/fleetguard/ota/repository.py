"""A TUF repository as static files, written through python-tuf's metadata API (never by hand).

Theory of operation. A repository is a directory that any web server can serve::

    metadata/1.root.json 2.root.json …   every root version (clients walk the chain, TUF spec 5.3)
    metadata/N.targets.json N.<role>.json  consistent snapshots (TUF spec 4.4, ``consistent_snapshot``)
    metadata/N.snapshot.json timestamp.json
    targets/<dir>/<sha256>.<name>          hash-prefixed target files (TUF spec 5.7.3)
    staged/<role>.json                     a new version waiting for more signatures (k-of-n)

Every change is one numbered procedure: load the current version of the role (verified against its
delegator: a file altered on disk is refused, not re-signed), copy it with the version bumped and a
fresh expiry, apply the change, sign with each given key that the role trusts, and then either
*publish* it (threshold reached: the role's file, then a new snapshot, then the timestamp, in that
order, so that a crash between two steps leaves the previous timestamp pointing at a complete previous
state) or *stage* it (threshold not reached: ``staged/<role>.json`` keeps the signatures so far, and
:meth:`TufRepository.sign_staged` adds the other holders' signatures in later invocations). A new
root must be signed by a threshold of the old root's keys *and* of its own (TUF spec 5.3.4), which is
how every role's keys rotate. One file lock serialises writers across processes.

The snapshot and timestamp keys are online (given at construction); every other key is passed to the
call that needs it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import Key, Signer
from tuf.api.exceptions import RepositoryError, UnsignedMetadataError
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import CanonicalJSONSerializer, JSONSerializer

from fleetguard.ota.errors import MetadataInvalid, SigningError

__all__ = [
    "DEFAULT_EXPIRY",
    "MAX_METADATA_BYTES",
    "Published",
    "RoleKeys",
    "Staged",
    "TufRepository",
    "add_delegation",
    "replace_role_keys",
    "target_file_path",
]

ROOT, TARGETS, SNAPSHOT, TIMESTAMP = Root.type, Targets.type, Snapshot.type, Timestamp.type
TOP_LEVEL = (ROOT, TARGETS, SNAPSHOT, TIMESTAMP)
MAX_METADATA_BYTES = 8 * 1024 * 1024
"""Largest metadata file read back (the client's own limits are ngclient's ``UpdaterConfig``)."""

DEFAULT_EXPIRY: Mapping[str, dt.timedelta] = {
    ROOT: dt.timedelta(days=365),
    TARGETS: dt.timedelta(days=90),
    SNAPSHOT: dt.timedelta(days=7),
    TIMESTAMP: dt.timedelta(days=1),
}
_DELEGATED_EXPIRY = dt.timedelta(days=90)
_ROLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SERIALIZER = JSONSerializer(compact=True)
_T = TypeVar("_T", Root, Timestamp, Snapshot, Targets)


@dataclass(frozen=True, slots=True)
class RoleKeys:
    """The public keys a role trusts and how many of them must sign (k of n)."""

    keys: tuple[Key, ...]
    threshold: int

    def __post_init__(self) -> None:
        if not self.keys:
            raise SigningError("a role needs at least one key")
        if len({key.keyid for key in self.keys}) != len(self.keys):
            raise SigningError("a role's keys must be distinct")
        if not 1 <= self.threshold <= len(self.keys):
            raise SigningError(f"threshold {self.threshold} must be between 1 and {len(self.keys)} keys")


@dataclass(frozen=True, slots=True)
class Published:
    """A role version that reached its threshold and is now served."""

    role: str
    version: int


@dataclass(frozen=True, slots=True)
class Staged:
    """A role version waiting for more signatures (``fleetguard ota sign``)."""

    role: str
    version: int
    signatures: int
    threshold: int


def target_file_path(path: str, sha256: str) -> str:
    """Return where a target is stored under ``targets/`` (TUF spec 5.7.3: hash-prefixed name)."""
    directory, _, name = path.rpartition("/")
    return f"{directory}/{sha256}.{name}" if directory else f"{sha256}.{name}"


class TufRepository:
    """One TUF repository directory (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        snapshot_signer: Signer,
        timestamp_signer: Signer,
        clock: Callable[[], dt.datetime],
        expiry: Mapping[str, dt.timedelta] = DEFAULT_EXPIRY,
    ) -> None:
        self.directory = directory
        self.metadata_dir = directory / "metadata"
        self.targets_dir = directory / "targets"
        self._staged_dir = directory / "staged"
        self._online = {SNAPSHOT: snapshot_signer, TIMESTAMP: timestamp_signer}
        self._clock = clock
        self._expiry = expiry

    # -- creation -------------------------------------------------------------------------------

    def create(
        self,
        *,
        root: RoleKeys,
        targets: RoleKeys,
        root_signers: Sequence[Signer],
        targets_signers: Sequence[Signer],
    ) -> None:
        """Write version 1 of every role; raise :class:`SigningError` if a threshold is not met.

        The snapshot and timestamp roles trust the online keys given at construction (threshold 1).
        """
        if (self.metadata_dir / "1.root.json").exists():
            raise SigningError(f"{self.directory} already holds a repository")
        now = self._clock()
        root_md = Metadata(Root(expires=now + self._expiry[ROOT], consistent_snapshot=True))
        for role, keys in ((ROOT, root), (TARGETS, targets)):
            for key in keys.keys:
                root_md.signed.add_key(key, role)
            root_md.signed.roles[role].threshold = keys.threshold
        for role, signer in self._online.items():
            root_md.signed.add_key(signer.public_key, role)
        _sign_threshold(root_md, root_signers, root_md.signed, ROOT)
        targets_md = Metadata(Targets(expires=now + self._expiry[TARGETS]))
        _sign_threshold(targets_md, targets_signers, root_md.signed, TARGETS)
        for directory in (self.metadata_dir, self.targets_dir, self._staged_dir):
            directory.mkdir(parents=True, exist_ok=True)
        with self._locked():
            self._write_versioned(ROOT, root_md)
            self._write_versioned(TARGETS, targets_md)
            self._publish_snapshot({TARGETS: 1}, now)

    # -- reading (verified) ---------------------------------------------------------------------

    def root(self) -> Metadata[Root]:
        """Return the newest root, each version verified by its predecessor and itself."""
        versions = sorted(
            int(name.split(".", 1)[0])
            for name in os.listdir(self.metadata_dir)
            if name.endswith(".root.json") and name.split(".", 1)[0].isdigit()
        )
        if not versions or versions != list(range(1, len(versions) + 1)):
            raise MetadataInvalid(f"{self.metadata_dir}: root versions are not 1..N: {versions[:10]}")
        trusted = self._read("1.root.json", Root)
        _verify(trusted, ROOT, trusted)
        for version in versions[1:]:
            new = self._read(f"{version}.root.json", Root)
            _verify(trusted, ROOT, new)
            _verify(new, ROOT, new)
            trusted = new
        return trusted

    def targets(self, role: str = TARGETS) -> Metadata[Targets]:
        """Return the current version of a targets role, verified against its delegator."""
        version = self._current_versions().get(role)
        if version is None:
            raise MetadataInvalid(f"no role {role!r} in this repository")
        metadata = self._read(f"{version}.{role}.json", Targets)
        _verify(self._delegator(role), role, metadata)
        return metadata

    def _targets_or_new(self, role: str) -> tuple[Targets, int]:
        if role not in self._current_versions():
            self._delegator(role)  # raises unless delegated: a new role's first version is 1
            return Targets(), 1
        current = self._targets_for_update(role).signed
        return current, current.version + 1

    def _targets_for_update(self, role: str) -> Metadata[Targets]:
        """The current version of ``role``, verified by its delegator now or by an earlier version of it.

        Right after its keys rotated (a new root, or a new version of the delegating targets), the
        served version of a role still carries the old keys' signatures; its next version is what
        the new keys sign. Earlier roots are the verified chain; an earlier targets version counts only
        if some root of the chain verifies it. Anything that verifies under none of them is refused.
        """
        version = self._current_versions()[role]
        metadata = self._read(f"{version}.{role}.json", Targets)
        errors = []
        for delegator in self._delegators(role):
            try:
                _verify(delegator, role, metadata)
            except MetadataInvalid as exc:
                errors.append(exc)
                continue
            return metadata
        raise errors[0]

    def _delegators(self, role: str) -> Iterator[Metadata[Any]]:
        """The current delegator of ``role`` first, then its earlier versions, newest first."""
        current = self._delegator(role)
        yield current
        roots = [self._read(f"{v}.root.json", Root) for v in range(self.root().signed.version, 0, -1)]
        if role in TOP_LEVEL:
            yield from roots[1:]  # the chain, verified by root() above
            return
        for version in range(current.signed.version - 1, 0, -1):
            earlier = self._read(f"{version}.{TARGETS}.json", Targets)
            if any(_verifies(root, TARGETS, earlier) for root in roots):
                yield earlier  # an earlier targets version that no root trusted is no delegator

    def timestamp_version(self) -> int:
        """Return the version of the served timestamp."""
        return self._read("timestamp.json", Timestamp).signed.version

    def role_keys(self, role: str) -> RoleKeys:
        """Return the keys and threshold that a role is trusted with now."""
        delegator = self._delegator(role)
        signed = delegator.signed
        if isinstance(signed, Root):
            role_info = signed.roles[role]
            keys = tuple(signed.keys[keyid] for keyid in role_info.keyids)
            return RoleKeys(keys, role_info.threshold)
        delegated = signed.get_delegated_role(role)
        assert signed.delegations is not None  # get_delegated_role raised otherwise
        return RoleKeys(tuple(signed.delegations.keys[k] for k in delegated.keyids), delegated.threshold)

    # -- changes ----------------------------------------------------------------------------------

    def update_targets(
        self, role: str, change: Callable[[Targets], None], signers: Sequence[Signer]
    ) -> Published | Staged:
        """Apply ``change`` to a new version of a targets role; publish it or stage it for signatures."""
        with self._locked():
            if (self._staged_dir / f"{role}.json").exists():
                raise SigningError(
                    f"a new version of {role} is staged and waiting for signatures",
                    hint=f"sign it (fleetguard ota sign {role}) or drop it (fleetguard ota discard {role})",
                )
            current, version = self._targets_or_new(role)
            new = Metadata(_bumped(current, self._clock() + self._role_expiry(role), version))
            change(new.signed)
            return self._sign_or_stage(role, new, signers)

    def update_root(self, change: Callable[[Root], None], signers: Sequence[Signer]) -> Published | Staged:
        """Apply ``change`` to a new root version (key rotation); it needs the old and new thresholds."""
        with self._locked():
            if (self._staged_dir / f"{ROOT}.json").exists():
                raise SigningError(
                    "a new root is staged and waiting for signatures", hint="sign or discard it"
                )
            current = self.root()
            new = Metadata(
                _bumped(current.signed, self._clock() + self._expiry[ROOT], current.signed.version + 1)
            )
            change(new.signed)
            return self._sign_or_stage(ROOT, new, signers)

    def sign_staged(self, role: str, signers: Sequence[Signer]) -> Published | Staged:
        """Add signatures to the staged version of ``role``; publish it once its threshold is met."""
        _require_role_name(role)
        with self._locked():
            path = self._staged_dir / f"{role}.json"
            if not path.exists():
                raise SigningError(f"nothing is staged for {role}")
            staged: Metadata[Any] = _parse(path.read_bytes(), path.name)
            return self._sign_or_stage(role, staged, signers)

    def discard_staged(self, role: str) -> None:
        """Drop the staged version of ``role`` (nothing was published)."""
        _require_role_name(role)
        with self._locked():
            (self._staged_dir / f"{role}.json").unlink(missing_ok=True)

    def staged(self) -> list[Staged]:
        """Return what waits for signatures."""
        pending = []
        for path in sorted(self._staged_dir.glob("*.json")):
            metadata: Metadata[Any] = _parse(path.read_bytes(), path.name)
            role = path.name.removesuffix(".json")
            keys = self._role_keys_after(role, metadata)
            pending.append(Staged(role, metadata.signed.version, _valid(metadata, keys), keys.threshold))
        return pending

    def add_target(self, path: str, source: Path, *, custom: Mapping[str, Any]) -> TargetFile:
        """Copy ``source`` under ``targets/`` (hash-prefixed) and return its TUF target description.

        Raises :class:`MetadataInvalid` for a path that is absolute or has an empty, ``.`` or ``..``
        segment (it would be stored outside ``targets/``).
        """
        if any(segment in {"", ".", ".."} for segment in path.split("/")):
            raise MetadataInvalid(f"target path {path[:80]!r} must be relative, without . or .. segments")
        digest, length = _file_digest(source)
        target = TargetFile(length, {"sha256": digest}, path, {"custom": dict(custom)} if custom else None)
        destination = self.targets_dir / target_file_path(path, digest)
        destination.parent.mkdir(parents=True, exist_ok=True)
        if not destination.exists():
            temporary = destination.with_name(f".{destination.name}.tmp")
            shutil.copyfile(source, temporary)
            with open(temporary, "rb") as file:
                os.fsync(file.fileno())
            os.replace(temporary, destination)
        return target

    def refresh(self, *, force: bool = False) -> bool:
        """Re-sign snapshot and timestamp when they are past half their life (or ``force``).

        Returns whether a new timestamp was published. ``fleetguard up`` calls it periodically so that
        clients never see an expired timestamp from a healthy server (freeze attacks remain visible).
        """
        now = self._clock()
        with self._locked():
            timestamp = self._read("timestamp.json", Timestamp).signed
            half = self._expiry[TIMESTAMP] / 2
            if not force and timestamp.expires - now > half:
                return False
            self._publish_snapshot(self._current_versions(), now)
            return True

    # -- internals --------------------------------------------------------------------------------

    def _sign_or_stage(
        self, role: str, metadata: Metadata[Any], signers: Sequence[Signer]
    ) -> Published | Staged:
        keys = self._role_keys_after(role, metadata)
        trusted = {key.keyid for key in keys.keys}
        if role == ROOT:
            previous = self.root().signed
            trusted |= set(previous.roles[ROOT].keyids)
        for signer in signers:
            if signer.public_key.keyid not in trusted:
                raise SigningError(f"key {signer.public_key.keyid[:16]} is not a key of role {role}")
            if signer.public_key.keyid not in metadata.signatures:
                metadata.sign(signer, append=True)
        if not self._meets_threshold(role, metadata):
            path = self._staged_dir / f"{role}.json"
            _write_atomic(path, metadata.to_bytes(JSONSerializer(compact=False)))
            return Staged(role, metadata.signed.version, _valid(metadata, keys), keys.threshold)
        # Before any file is written: the snapshot and timestamp that follow must verify under the root.
        self._require_online_keys(metadata.signed if role == ROOT else self.root().signed)
        # Read the served versions before a new root is written: the served snapshot and timestamp
        # verify under the current root, not under a new one that rotated the online keys.
        versions = self._current_versions()
        self._write_versioned(role, metadata)
        (self._staged_dir / f"{role}.json").unlink(missing_ok=True)
        if role != ROOT:  # root is not in the snapshot (TUF spec 4.4)
            versions[role] = metadata.signed.version
        self._publish_snapshot(versions, self._clock())  # after a root: the online keys may have rotated
        return Published(role, metadata.signed.version)

    def _require_online_keys(self, root: Root) -> None:
        for role, signer in self._online.items():
            if signer.public_key.keyid not in root.roles[role].keyids:
                raise SigningError(
                    f"the root does not trust this repository's {role} key "
                    f"{signer.public_key.keyid[:16]}; nothing was published",
                    hint=f"run with the new {role} key",
                )

    def _meets_threshold(self, role: str, metadata: Metadata[Any]) -> bool:
        try:
            if role == ROOT:
                _verify(self.root(), ROOT, metadata)  # TUF spec 5.3.4: the old threshold...
                _verify(metadata, ROOT, metadata)  # ...and the new one
            else:
                _verify(self._delegator(role), role, metadata)
        except MetadataInvalid:
            return False
        return True

    def _role_keys_after(self, role: str, metadata: Metadata[Any]) -> RoleKeys:
        if role == ROOT:
            signed = metadata.signed
            info = signed.roles[ROOT]
            return RoleKeys(tuple(signed.keys[keyid] for keyid in info.keyids), info.threshold)
        return self.role_keys(role)

    def _delegator(self, role: str) -> Metadata[Any]:
        if role in TOP_LEVEL:
            return self.root()
        top = self.targets()
        delegations = top.signed.delegations
        if delegations is None or delegations.roles is None or role not in delegations.roles:
            raise MetadataInvalid(f"role {role!r} is not delegated by targets")
        return top

    def _current_versions(self) -> dict[str, int]:
        snapshot = self._read_current_snapshot()
        return {name.removesuffix(".json"): meta.version for name, meta in snapshot.signed.meta.items()}

    def _read_current_snapshot(self) -> Metadata[Snapshot]:
        timestamp = self._read("timestamp.json", Timestamp)
        _verify(self.root(), TIMESTAMP, timestamp)
        snapshot = self._read(f"{timestamp.signed.snapshot_meta.version}.snapshot.json", Snapshot)
        _verify(self.root(), SNAPSHOT, snapshot)
        return snapshot

    def _publish_snapshot(self, versions: Mapping[str, int], now: dt.datetime) -> None:
        self._require_online_keys(self.root().signed)  # never publish what clients must refuse
        previous = self._maybe_read("timestamp.json", Timestamp)
        snapshot_version = 1 if previous is None else previous.signed.snapshot_meta.version + 1
        snapshot = Metadata(
            Snapshot(
                version=snapshot_version,
                expires=now + self._expiry[SNAPSHOT],
                meta={f"{role}.json": MetaFile(version) for role, version in sorted(versions.items())},
            )
        )
        snapshot.sign(self._online[SNAPSHOT])
        self._write_versioned(SNAPSHOT, snapshot)
        timestamp = Metadata(
            Timestamp(
                version=1 if previous is None else previous.signed.version + 1,
                expires=now + self._expiry[TIMESTAMP],
                snapshot_meta=MetaFile(snapshot_version),
            )
        )
        timestamp.sign(self._online[TIMESTAMP])
        _write_atomic(self.metadata_dir / "timestamp.json", timestamp.to_bytes(_SERIALIZER))

    def _write_versioned(self, role: str, metadata: Metadata[Any]) -> None:
        data = metadata.to_bytes(_SERIALIZER)
        _write_atomic(self.metadata_dir / f"{metadata.signed.version}.{role}.json", data)
        if role == ROOT:
            _write_atomic(self.metadata_dir / "root.json", data)  # for bootstrapping clients

    def _role_expiry(self, role: str) -> dt.timedelta:
        return self._expiry.get(role, _DELEGATED_EXPIRY)

    def _read(self, name: str, kind: type[_T]) -> Metadata[_T]:
        metadata = self._maybe_read(name, kind)
        if metadata is None:
            raise MetadataInvalid(f"{self.metadata_dir / name} is missing")
        return metadata

    def _maybe_read(self, name: str, kind: type[_T]) -> Metadata[_T] | None:
        path = self.metadata_dir / name
        try:
            with open(path, "rb") as file:
                data = file.read(MAX_METADATA_BYTES + 1)
        except FileNotFoundError:
            return None
        if len(data) > MAX_METADATA_BYTES:
            raise MetadataInvalid(f"{path} is larger than {MAX_METADATA_BYTES} bytes")
        metadata: Metadata[Any] = _parse(data, name)
        if not isinstance(metadata.signed, kind):
            raise MetadataInvalid(f"{path} holds {metadata.signed.type} metadata, not {kind.type}")
        return metadata

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def add_delegation(targets: Targets, name: str, keys: RoleKeys, paths: Sequence[str]) -> None:
    """Delegate ``paths`` to a new (terminating) role ``name`` trusting ``keys`` (TUF spec 4.5)."""
    if not _ROLE_NAME.fullmatch(name) or name in TOP_LEVEL:
        raise SigningError(f"{name!r} is not a valid delegated role name")
    if targets.delegations is None:
        targets.delegations = Delegations(keys={}, roles={})
    roles = targets.delegations.roles
    assert roles is not None  # we never create succinct delegations
    if name in roles:
        raise SigningError(f"role {name} is delegated already")
    roles[name] = DelegatedRole(name, [], keys.threshold, True, list(paths))
    for key in keys.keys:
        targets.add_key(key, name)


def replace_role_keys(signed: Root | Targets, role: str, keys: RoleKeys) -> None:
    """Make ``role`` trust exactly ``keys`` with their threshold (rotation), in root or a delegator."""
    if isinstance(signed, Root):
        current = list(signed.roles[role].keyids)
        threshold_holder: Any = signed.roles[role]
    else:
        delegated = signed.get_delegated_role(role)
        current = list(delegated.keyids)
        threshold_holder = delegated
    for keyid in current:
        signed.revoke_key(keyid, role)
    for key in keys.keys:
        signed.add_key(key, role)
    threshold_holder.threshold = keys.threshold


def _bumped(signed: _T, expires: dt.datetime, version: int) -> _T:
    copy: _T = type(signed).from_dict(signed.to_dict())
    copy.version = version
    copy.expires = expires.replace(microsecond=0)
    return copy


def _sign_threshold(metadata: Metadata[Any], signers: Sequence[Signer], delegator: Root, role: str) -> None:
    trusted = set(delegator.roles[role].keyids)
    for signer in signers:
        if signer.public_key.keyid not in trusted:
            raise SigningError(f"key {signer.public_key.keyid[:16]} is not a key of role {role}")
        metadata.sign(signer, append=True)
    try:
        _verify(Metadata(delegator), role, metadata)
    except MetadataInvalid as exc:
        raise SigningError(f"{role} is not signed by a threshold of its keys: {exc}") from exc


def _require_role_name(role: str) -> None:
    # A role name becomes a file name under staged/: never a path.
    if role not in TOP_LEVEL and not _ROLE_NAME.fullmatch(role):
        raise SigningError(f"{role[:80]!r} is not a role name")


def _verify(delegator: Metadata[Any], role: str, metadata: Metadata[Any]) -> None:
    try:
        delegator.verify_delegate(role, metadata)
    except UnsignedMetadataError as exc:
        raise MetadataInvalid(f"{role} version {metadata.signed.version}: {exc}") from exc
    except (RepositoryError, ValueError) as exc:
        raise MetadataInvalid(f"{role}: {exc}") from exc


def _verifies(delegator: Metadata[Any], role: str, metadata: Metadata[Any]) -> bool:
    try:
        _verify(delegator, role, metadata)
    except MetadataInvalid:
        return False
    return True


def _valid(metadata: Metadata[Any], keys: RoleKeys) -> int:
    """Count the valid signatures of ``keys`` on ``metadata`` (TUF spec 5.3.4 counting)."""
    payload = CanonicalJSONSerializer().serialize(metadata.signed)
    count = 0
    for key in keys.keys:
        signature = metadata.signatures.get(key.keyid)
        if signature is None:
            continue
        try:
            key.verify_signature(signature, payload)
        except UnverifiedSignatureError:
            continue
        count += 1
    return count


def _parse(data: bytes, name: str) -> Metadata[Any]:
    try:
        return Metadata.from_bytes(data)
    except DeserializationError as exc:
        raise MetadataInvalid(f"{name} is not valid TUF metadata: {exc}") from exc


def _file_digest(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    length = 0
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
            length += len(chunk)
    return digest.hexdigest(), length


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
