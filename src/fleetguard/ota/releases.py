"""Releases: firmware images published in the image repository, behind the firmware release gate.

Theory of operation. Publishing a release is a numbered procedure:

1. check the name and the release counter (strictly above every earlier release of the hardware id:
   the counter is what devices use against rollback, so it never goes down or repeats);
2. the firmware gate (:meth:`fleetguard.firmware.service.FirmwareService.require_release`): the image
   must have been scanned (``--scan`` runs the analysis first) and have no finding at or above the
   configured severity that no operator waived; a refusal raises ``ReleaseBlocked`` and nothing is
   written; the decision and any waiver are in the event log already;
3. for each hardware id: the image becomes a target ``<hardware id>/<release>/<file>`` with
   ``custom.fleetguard`` (release, counter, hardware ids, signed scopes: none yet), and binary deltas
   from the last releases of that hardware id become targets ``<hardware id>/deltas/<from>-<to>.delta``
   where they are smaller than the compressed image (:mod:`fleetguard.ota.delta`);
4. the hardware id's release role signs the new version; with fewer than its threshold of keys the
   version is staged (``fleetguard ota sign``) and the release is ``staged`` until it is published.

A release that is staged is not served, and no campaign may start for it.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from securesystemslib.signer import Signer
from sqlalchemy import select
from tuf.api.metadata import TargetFile, Targets

from fleetguard.errors import Conflict, InvalidInput
from fleetguard.events.entry import NewEvent
from fleetguard.events.log import EventLog
from fleetguard.events.relay import publish_committed
from fleetguard.firmware.service import FirmwareService
from fleetguard.ota.delta import compressed_size, make_delta
from fleetguard.ota.errors import MetadataInvalid, ReleaseNotFound
from fleetguard.ota.repositories import OtaRepositories, hardware_role
from fleetguard.ota.repository import Published, Staged, target_file_path
from fleetguard.store.database import Database
from fleetguard.store.models import OtaDeltaRow, OtaReleaseRow

__all__ = ["DELTA_BASES", "Release", "ReleaseService", "ReleaseState"]

DELTA_BASES = 2
"""Deltas are built from this many previous releases of a hardware id (the ones most devices run)."""

_RELEASE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_MAX_DELTA_SOURCE = 256 * 1024 * 1024


class ReleaseState(enum.StrEnum):
    """Whether a release is served."""

    STAGED = "staged"
    PUBLISHED = "published"


@dataclass(frozen=True, slots=True)
class Release:
    """A release of one image for one hardware id."""

    id: str
    hardware_id: str
    release: str
    release_counter: int
    target_path: str
    sha256: str
    length: int
    state: ReleaseState
    actor: str
    created_at: dt.datetime
    published_at: dt.datetime | None


class ReleaseService:
    """Publishes and lists releases (see the module docstring)."""

    def __init__(
        self,
        database: Database,
        log: EventLog,
        repositories: OtaRepositories,
        firmware: FirmwareService,
        *,
        clock: Callable[[], dt.datetime],
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self._database = database
        self._log = log
        self._repositories = repositories
        self._firmware = firmware
        self._clock = clock
        self._on_commit = on_commit

    def publish(
        self,
        image: Path,
        *,
        hardware_ids: Sequence[str],
        release: str,
        counter: int,
        signers: Sequence[Signer],
        actor: str,
        scan: bool = False,
    ) -> list[Release]:
        """Publish ``image`` as ``release`` for each hardware id (see the module docstring).

        Raises ``ReleaseBlocked`` (gate), :class:`InvalidInput` (names), :class:`Conflict` (a counter
        that does not increase, a name used already) and ``SigningError`` (keys).
        """
        self._repositories.require_initialized()
        self._require_new(hardware_ids, release, counter)
        sha256 = _file_sha256(image)
        if scan:
            self._firmware.scan(image, firmware_version=release, device_type=None, actor=actor)
        decision = self._firmware.require_release(sha256, actor=actor)
        return [
            self._publish_one(
                image, hardware_id, release, counter, signers, actor=actor, scan_id=decision.scan_id
            )
            for hardware_id in hardware_ids
        ]

    def get(self, hardware_id: str, release: str) -> Release:
        """Return a release; raise :class:`ReleaseNotFound`."""
        with self._database.reading() as session:
            row = session.scalars(
                select(OtaReleaseRow).where(
                    OtaReleaseRow.hardware_id == hardware_id, OtaReleaseRow.release == release
                )
            ).first()
        if row is None:
            raise ReleaseNotFound(f"no release {release!r} for hardware {hardware_id!r}")
        return _release(row)

    def by_id(self, release_id: str) -> Release:
        """Return a release by id; raise :class:`ReleaseNotFound`."""
        with self._database.reading() as session:
            row = session.get(OtaReleaseRow, release_id)
        if row is None:
            raise ReleaseNotFound(f"no release with id {release_id!r}")
        return _release(row)

    def releases(self, hardware_id: str | None = None) -> list[Release]:
        """Return releases, newest counter first."""
        query = select(OtaReleaseRow).order_by(
            OtaReleaseRow.hardware_id, OtaReleaseRow.release_counter.desc()
        )
        if hardware_id is not None:
            query = query.where(OtaReleaseRow.hardware_id == hardware_id)
        with self._database.reading() as session:
            return [_release(row) for row in session.scalars(query)]

    def forget_staged(self, hardware_id: str) -> list[Release]:
        """Drop the records of releases of ``hardware_id`` whose staged publication was discarded.

        Their names and counters become free again; the image files stay (content-addressed).
        """
        with self._database.transaction() as session:
            rows = session.scalars(
                select(OtaReleaseRow).where(
                    OtaReleaseRow.hardware_id == hardware_id, OtaReleaseRow.state == ReleaseState.STAGED
                )
            ).all()
            dropped = [_release(row) for row in rows]
            for row in rows:
                session.delete(row)
                self._event(session, row, "ota.release.discarded", self._clock())
        publish_committed(self._on_commit)
        return dropped

    def reconcile(self) -> list[Release]:
        """Mark staged releases whose targets are now signed as published; return them."""
        published = []
        now = self._clock()
        with self._database.transaction() as session:
            rows = session.scalars(
                select(OtaReleaseRow).where(OtaReleaseRow.state == ReleaseState.STAGED)
            ).all()
            for row in rows:
                try:
                    targets = self._repositories.image.targets(hardware_role(row.hardware_id)).signed
                except MetadataInvalid:
                    continue  # the role's first version is still staged: nothing of it is served
                if row.target_path in targets.targets:
                    row.state = ReleaseState.PUBLISHED
                    row.published_at = now
                    self._event(session, row, "ota.release.published", now)
                    published.append(_release(row))
        publish_committed(self._on_commit)
        return published

    # -- internals --------------------------------------------------------------------------------

    def _require_new(self, hardware_ids: Sequence[str], release: str, counter: int) -> None:
        if not hardware_ids:
            raise InvalidInput("name at least one hardware id")
        if not _RELEASE.fullmatch(release):
            raise InvalidInput(f"release name {release[:80]!r} must be letters, digits and . _ + -")
        if not 0 < counter < 2**62:
            raise InvalidInput(f"release counter {counter} must be a positive integer")
        for hardware_id in hardware_ids:
            hardware_role(hardware_id)
            for existing in self.releases(hardware_id):
                if existing.release == release:
                    raise Conflict(f"release {release} of {hardware_id} exists already")
                if existing.release_counter >= counter:
                    raise Conflict(
                        f"release counter {counter} must be above {existing.release_counter} "
                        f"({existing.release} of {hardware_id}); devices refuse lower counters",
                    )

    def _publish_one(
        self,
        image: Path,
        hardware_id: str,
        release: str,
        counter: int,
        signers: Sequence[Signer],
        *,
        actor: str,
        scan_id: str | None,
    ) -> Release:
        repository = self._repositories.image
        path = f"{hardware_id}/{release}/{_safe_name(image.name)}"
        custom = {
            "fleetguard": {
                "release": release, "release_counter": counter, "hardware_ids": [hardware_id], "scopes": [],
            }
        }  # fmt: skip
        target = repository.add_target(path, image, custom=custom)
        deltas = self._deltas(hardware_id, image, target)

        def change(targets: Targets) -> None:
            targets.targets[path] = target
            for delta_target, _ in deltas:
                targets.targets[delta_target.path] = delta_target

        outcome = repository.update_targets(hardware_role(hardware_id), change, signers)
        return self._record(
            hardware_id,
            release,
            counter,
            target,
            deltas=deltas,
            outcome=outcome,
            actor=actor,
            scan_id=scan_id,
        )

    def _deltas(self, hardware_id: str, image: Path, target: TargetFile) -> list[tuple[TargetFile, str]]:
        if target.length > _MAX_DELTA_SOURCE:
            return []
        new = image.read_bytes()
        full = compressed_size(new)  # once, not once per base
        built = []
        previous = [r for r in self.releases(hardware_id) if r.state == ReleaseState.PUBLISHED][:DELTA_BASES]
        repository = self._repositories.image
        for base in previous:
            if base.length > _MAX_DELTA_SOURCE:
                continue
            old = (repository.targets_dir / target_file_path(base.target_path, base.sha256)).read_bytes()
            delta = make_delta(old, new, full_compressed_size=full)
            if delta is None:
                continue
            data = delta.to_bytes()
            delta_path = f"{hardware_id}/deltas/{base.sha256[:16]}-{target.hashes['sha256'][:16]}.delta"
            custom = {
                "fleetguard": {
                    "delta": {
                        "from_sha256": base.sha256, "to_sha256": target.hashes["sha256"],
                        "method": str(delta.method),
                    }
                }
            }  # fmt: skip
            source = image.with_name(f".{image.name}.{base.sha256[:16]}.delta")
            try:
                source.write_bytes(data)
                built.append((repository.add_target(delta_path, source, custom=custom), str(delta.method)))
            finally:
                source.unlink(missing_ok=True)
        return built

    def _record(
        self,
        hardware_id: str,
        release: str,
        counter: int,
        target: TargetFile,
        *,
        deltas: list[tuple[TargetFile, str]],
        outcome: Published | Staged,
        actor: str,
        scan_id: str | None,
    ) -> Release:
        now = self._clock()
        published = isinstance(outcome, Published)
        row = OtaReleaseRow(
            id=str(uuid.uuid4()), hardware_id=hardware_id, release=release, release_counter=counter,
            target_path=target.path, sha256=target.hashes["sha256"], length=target.length,
            state=ReleaseState.PUBLISHED if published else ReleaseState.STAGED, scan_id=scan_id,
            actor=actor, created_at=now, published_at=now if published else None,
        )  # fmt: skip
        with self._database.transaction() as session:
            session.add(row)
            for delta, method in deltas:
                session.add(
                    OtaDeltaRow(
                        id=str(uuid.uuid4()), hardware_id=hardware_id,
                        from_sha256=delta.custom["fleetguard"]["delta"]["from_sha256"],
                        to_sha256=target.hashes["sha256"], target_path=delta.path, method=method,
                        length=delta.length, created_at=now,
                    )
                )  # fmt: skip
            action = "ota.release.published" if published else "ota.release.staged"
            self._event(session, row, action, now, actor=actor, deltas=len(deltas))
        publish_committed(self._on_commit)
        return _release(row)

    def _event(
        self, session: object, row: OtaReleaseRow, action: str, now: dt.datetime, **extra: object
    ) -> None:
        data: dict[str, str | int] = {
            "hardware_id": row.hardware_id, "release": row.release, "release_counter": row.release_counter,
            "sha256": row.sha256, "length": row.length,
        }  # fmt: skip
        data.update({k: v for k, v in extra.items() if isinstance(v, str | int) and k != "actor"})
        actor = extra.get("actor")
        self._log.append(
            session,  # type: ignore[arg-type]
            NewEvent(
                actor=actor if isinstance(actor, str) else row.actor,
                subject=f"release:{row.hardware_id}/{row.release}", action=action, data=data,
            ),
            now=now,
        )  # fmt: skip


def _release(row: OtaReleaseRow) -> Release:
    return Release(
        id=row.id, hardware_id=row.hardware_id, release=row.release, release_counter=row.release_counter,
        target_path=row.target_path, sha256=row.sha256, length=row.length, state=ReleaseState(row.state),
        actor=row.actor, created_at=row.created_at, published_at=row.published_at,
    )  # fmt: skip


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100].lstrip(".")
    return cleaned or "image.bin"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise InvalidInput(f"cannot read image {path}: {exc.strerror}") from exc
    return digest.hexdigest()
