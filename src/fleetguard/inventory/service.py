"""The inventory service: devices, device types and sites, and every change to them.

Each change runs in one database transaction together with its event-log entry, so a change and
its record commit together or not at all. After the commit the event relay publishes new entries
on the bus (the log is the outbox, so a crash between commit and publish loses nothing).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields
from typing import Any, TypeVar, cast

from sqlalchemy import Select, bindparam, func, insert, or_, select, tuple_, update
from sqlalchemy.orm import Session

from fleetguard.errors import InvalidInput
from fleetguard.events.entry import NewEvent
from fleetguard.events.log import EventLog
from fleetguard.events.relay import publish_committed
from fleetguard.inventory.errors import (
    DeviceNotFound,
    IllegalTransition,
    ImportRejected,
    UnknownReference,
)
from fleetguard.inventory.lifecycle import Action, State, allowed_actions, next_state
from fleetguard.inventory.model import (
    Device,
    DeviceChanges,
    DeviceFilter,
    DeviceSpec,
    DeviceType,
    Site,
    validate_device_id,
)
from fleetguard.store.database import Database
from fleetguard.store.errors import ConcurrentUpdate, DuplicateKey
from fleetguard.store.models import Base, DeviceRow, DeviceTypeRow, SiteRow
from fleetguard.types import DeviceId, utc_now

__all__ = ["Inventory", "device_event_subject"]

_MAX_PAGE = 10_000
_IMPORT_CHUNK = 5_000
_IN_CHUNK = 500  # keeps IN lists under every backend's bound-parameter limit
_DEVICES = Base.metadata.tables["devices"]
# Built once: it runs on every certificate issuance and renewal (see Inventory.locked_state).
_LOCKED_STATE = (
    select(_DEVICES.c.state).where(_DEVICES.c.id == bindparam("device_id")).with_for_update(read=True)
)
_Q = TypeVar("_Q", bound=Select[Any])


def device_event_subject(device_id: str) -> str:
    """Return the event-log subject for a device."""
    return f"device:{device_id}"


class Inventory:
    """Devices, device types and sites in ``database``, with every change in ``log``.

    ``on_commit`` is called after each committed change (the event relay's pump); ``clock`` gives the
    time recorded for changes.
    """

    def __init__(
        self,
        database: Database,
        log: EventLog,
        *,
        on_commit: Callable[[], object] | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._db = database
        self._log = log
        self._on_commit = on_commit
        self._clock = clock

    # -- devices -----------------------------------------------------------------------------

    def register(self, spec: DeviceSpec, *, actor: str, reason: str = "") -> Device:
        """Add a device in state ``registered``; return it.

        Raises:
            DuplicateKey: the id, or the manufacturer and serial, are taken.
            UnknownReference: the device type or site does not exist.
        """
        now = self._clock()
        with self._db.transaction() as session:
            self._require_references(session, {spec.device_type} - {None}, {spec.site} - {None})
            values = _new_values(spec, now)
            self._require_unique(session, [values])
            row = DeviceRow(**values)
            session.add(row)
            session.flush()
            self._log.append(session, _registered_event(values, actor, reason), now=now)
            device = _device(row)
        self._committed()
        return device

    def get(self, device_id: str) -> Device:
        """Return the device; raise :class:`DeviceNotFound` if there is none."""
        with self._db.reading() as session:
            return _device(self._row(session, device_id))

    @staticmethod
    def locked_state(session: Session, device_id: str) -> State | None:
        """Return the device's state in the caller's transaction, or None if there is no such device.

        The row stays share-locked until that transaction ends (``FOR SHARE`` on PostgreSQL; SQLite
        serializes write transactions), so a transition cannot commit in between: a capability that
        records something only a device in some states may have (a certificate) decides on the state
        its own commit is ordered after.
        """
        state = session.connection().execute(_LOCKED_STATE, {"device_id": device_id}).scalar_one_or_none()
        return None if state is None else State(state)

    def states(self, device_ids: Sequence[str]) -> dict[str, State]:
        """Return the lifecycle state of each of ``device_ids`` that exists (one query per 500 ids)."""
        found: dict[str, State] = {}
        with self._db.reading() as session:
            for start in range(0, len(device_ids), _IN_CHUNK):
                query = select(DeviceRow.id, DeviceRow.state).where(
                    DeviceRow.id.in_(device_ids[start : start + _IN_CHUNK])
                )
                found.update((row.id, State(row.state)) for row in session.execute(query))
        return found

    def find(
        self, criteria: DeviceFilter | None = None, *, limit: int = 100, after: str | None = None
    ) -> list[Device]:
        """Return up to ``limit`` devices matching ``criteria``, ordered by id, after id ``after``."""
        if not 1 <= limit <= _MAX_PAGE:
            raise InvalidInput(f"limit must be between 1 and {_MAX_PAGE}")
        query = _filtered(select(DeviceRow), criteria or DeviceFilter()).order_by(DeviceRow.id)
        if after is not None:
            query = query.where(DeviceRow.id > after)
        with self._db.reading() as session:
            return [_device(row) for row in session.execute(query.limit(limit)).scalars()]

    def count(self, criteria: DeviceFilter | None = None) -> int:
        """Return how many devices match ``criteria``."""
        query = _filtered(select(func.count()).select_from(DeviceRow), criteria or DeviceFilter())
        with self._db.reading() as session:
            return int(session.execute(query).scalar_one())

    def summaries(self, criteria: DeviceFilter | None = None) -> list[tuple[str, State, str]]:
        """Return ``(id, state, firmware_version)`` of every matching device, in id order.

        One query of three columns, for capabilities that select among many devices (an OTA campaign
        plans 100,000 in seconds; building a :class:`Device` for each would take most of that).
        """
        columns = cast("Select[Any]", select(DeviceRow.id, DeviceRow.state, DeviceRow.firmware_version))
        query = _filtered(columns, criteria or DeviceFilter()).order_by(DeviceRow.id)
        with self._db.reading() as session:
            return [(row.id, State(row.state), row.firmware_version) for row in session.execute(query)]

    def iterate(self, criteria: DeviceFilter | None = None, *, batch: int = 5000) -> Iterator[Device]:
        """Yield every matching device in id order, a page at a time (for export)."""
        after: str | None = None
        while page := self.find(criteria, limit=batch, after=after):
            yield from page
            after = page[-1].id

    def update(
        self,
        device_id: str,
        changes: DeviceChanges,
        *,
        actor: str,
        reason: str = "",
        expected_version: int | None = None,
    ) -> Device:
        """Apply ``changes``; return the updated device.

        Raises:
            DeviceNotFound: no such device.
            ConcurrentUpdate: ``expected_version`` is stale, or another writer won the race.
            UnknownReference: the new device type or site does not exist.
        """
        if changes.is_empty():
            raise InvalidInput("no change given")
        now = self._clock()
        with self._db.transaction() as session:
            row = self._row(session, device_id)
            _require_version(row, expected_version)
            if row.state == State.DECOMMISSIONED:
                raise IllegalTransition(row.id, row.state, "update", [])
            self._require_references(session, {changes.device_type} - {None, ""}, {changes.site} - {None, ""})
            changed = _apply(row, changes)
            row.updated_at = now
            session.flush()
            self._log.append(
                session,
                NewEvent(
                    actor=actor,
                    subject=device_event_subject(row.id),
                    action="device.updated",
                    reason=reason,
                    data={name: _text(getattr(row, _COLUMN.get(name, name))) for name in changed},
                ),
                now=now,
            )
            device = _device(row)
        self._committed()
        return device

    def transition(
        self,
        device_id: str,
        action: Action,
        *,
        actor: str,
        reason: str = "",
        expected_version: int | None = None,
    ) -> Device:
        """Move the device through the lifecycle; return it in its new state.

        Raises:
            IllegalTransition: the transition table forbids ``action`` from the current state.
            DeviceNotFound, ConcurrentUpdate: as for :meth:`update`.
        """
        now = self._clock()
        with self._db.transaction() as session:
            row = self._row(session, device_id)
            _require_version(row, expected_version)
            source = State(row.state)
            target = next_state(source, action)
            if target is None:
                raise IllegalTransition(row.id, source, action, [str(a) for a in allowed_actions(source)])
            row.state = target
            row.updated_at = now
            session.flush()
            self._log.append(
                session,
                _transition_event(row.id, action, source=source, target=target, actor=actor, reason=reason),
                now=now,
            )
            device = _device(row)
        self._committed()
        return device

    def mark_seen(self, device_id: str, *, at: dt.datetime) -> None:
        """Record that the device was seen at ``at`` (not an event: it happens constantly)."""
        with self._db.transaction() as session:
            row = self._row(session, device_id)
            if row.last_seen is None or at > row.last_seen:
                row.last_seen = at

    def import_devices(
        self,
        specs: Sequence[DeviceSpec],
        *,
        actor: str,
        reason: str = "",
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Register every spec in one transaction, or none of them; return the count.

        Raises:
            ImportRejected: naming the first bad row (1-based): a duplicate within the batch or
                with the inventory, or an unknown site or device type. Nothing is written.
        """
        now = self._clock()
        rows = [_new_values(spec, now) for spec in specs]
        _require_unique_within(rows)
        try:
            with self._db.transaction() as session:
                _require_import_references(session, specs)
                self._insert(session, rows, actor=actor, reason=reason, now=now, progress=progress)
        except DuplicateKey:
            # Rolled back: find the offending row only now, so the common case pays no lookups.
            with self._db.transaction() as session:
                _require_unique_in_store(session, rows, first_row=1)
            raise
        self._committed()
        return len(rows)

    def add_devices(
        self,
        session: Session,
        specs: Sequence[DeviceSpec],
        *,
        actor: str,
        reason: str,
        now: dt.datetime,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Register every spec inside the caller's transaction, as :meth:`import_devices` does.

        For a capability that records more in the same transaction (a manufacturing batch issues its
        devices' certificates in it). The caller commits, then calls the relay (``on_commit``).

        Raises:
            ImportRejected: naming the first bad row (1-based), as :meth:`import_devices`; checked
                against the store before anything is written, so the transaction stays usable.
            DuplicateKey: another writer registered one of the devices meanwhile (PostgreSQL).
        """
        rows = [_new_values(spec, now) for spec in specs]
        _require_unique_within(rows)
        _require_import_references(session, specs)
        _require_unique_in_store(session, rows, first_row=1)
        self._insert(session, rows, actor=actor, reason=reason, now=now, progress=progress)

    def transition_devices(
        self,
        session: Session,
        device_ids: Sequence[str],
        action: Action,
        *,
        actor: str,
        reason: str,
        now: dt.datetime,
    ) -> None:
        """Apply ``action`` to every device inside the caller's transaction, or to none.

        One UPDATE per 500 devices and one event each (``device.<action>``), as :meth:`transition`
        records it; the caller commits, then calls the relay (``on_commit``).

        Raises:
            DeviceNotFound: the first id the inventory does not hold.
            IllegalTransition: the first device whose state does not allow ``action``.
            ConcurrentUpdate: another writer changed a device's state between the read and the write.
        """
        events: list[NewEvent] = []
        for start in range(0, len(device_ids), _IN_CHUNK):
            chunk = device_ids[start : start + _IN_CHUNK]
            query = select(DeviceRow.id, DeviceRow.state).where(DeviceRow.id.in_(chunk))
            states = {row.id: row.state for row in session.execute(query)}
            by_source: dict[State, list[str]] = {}
            for device_id in chunk:
                if device_id not in states:
                    raise DeviceNotFound(device_id)
                source = State(states[device_id])
                if next_state(source, action) is None:
                    raise IllegalTransition(
                        device_id, source, action, [str(a) for a in allowed_actions(source)]
                    )
                by_source.setdefault(source, []).append(device_id)
            for source, ids in by_source.items():
                target = next_state(source, action)
                assert target is not None
                # Core update (a CursorResult with rowcount): no ORM objects, as for the inserts.
                changed = session.connection().execute(
                    update(_DEVICES)
                    .where(_DEVICES.c.id.in_(ids), _DEVICES.c.state == source.value)
                    .values(state=target.value, updated_at=now, version=_DEVICES.c.version + 1)
                )
                if changed.rowcount != len(ids):
                    raise ConcurrentUpdate(
                        f"{len(ids) - changed.rowcount} of the devices changed state meanwhile",
                        hint="read them again and retry",
                    )
                events.extend(
                    _transition_event(i, action, source=source, target=target, actor=actor, reason=reason)
                    for i in ids
                )
        self._log.append_many(session, events, now=now)

    def _insert(
        self,
        session: Session,
        rows: list[dict[str, Any]],
        *,
        actor: str,
        reason: str,
        now: dt.datetime,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        total = len(rows)
        for start in range(0, total, _IMPORT_CHUNK):
            chunk = rows[start : start + _IMPORT_CHUNK]
            # Core insert: no ORM objects for bulk rows (the unique constraints still hold).
            session.connection().execute(insert(_DEVICES), chunk)
            events = [_registered_event(row, actor, reason) for row in chunk]
            self._log.append_many(session, events, now=now)
            if progress is not None:
                progress(start + len(chunk), total)

    # -- sites and device types --------------------------------------------------------------

    def add_site(self, site_id: str, name: str, *, actor: str, description: str = "") -> Site:
        """Create a site; raise :class:`DuplicateKey` if the id is taken."""
        validate_device_id(site_id, "site id")
        now = self._clock()
        with self._db.transaction() as session:
            if session.get(SiteRow, site_id) is not None:
                raise DuplicateKey(f"site {site_id!r} exists already")
            row = SiteRow(id=site_id, name=name or site_id, description=description, created_at=now)
            session.add(row)
            self._log.append(
                session,
                NewEvent(actor=actor, subject=f"site:{site_id}", action="site.created"),
                now=now,
            )
            site = Site(row.id, row.name, row.description, row.created_at)
        self._committed()
        return site

    def sites(self) -> list[Site]:
        """Return every site, by id."""
        with self._db.transaction() as session:
            rows = session.execute(select(SiteRow).order_by(SiteRow.id)).scalars()
            return [Site(r.id, r.name, r.description, r.created_at) for r in rows]

    def add_device_type(
        self,
        type_id: str,
        *,
        actor: str,
        manufacturer: str = "",
        model: str = "",
        mud_url: str | None = None,
        description: str = "",
    ) -> DeviceType:
        """Create a device type; raise :class:`DuplicateKey` if the id is taken."""
        validate_device_id(type_id, "device type id")
        DeviceSpec(serial="-", manufacturer=manufacturer or "-", mud_url=mud_url)  # validates url
        now = self._clock()
        with self._db.transaction() as session:
            if session.get(DeviceTypeRow, type_id) is not None:
                raise DuplicateKey(f"device type {type_id!r} exists already")
            row = DeviceTypeRow(
                id=type_id, manufacturer=manufacturer, model=model, mud_url=mud_url,
                description=description, created_at=now,
            )  # fmt: skip
            session.add(row)
            self._log.append(
                session,
                NewEvent(actor=actor, subject=f"device-type:{type_id}", action="device-type.created"),
                now=now,
            )
            device_type = _device_type(row)
        self._committed()
        return device_type

    def device_types(self) -> list[DeviceType]:
        """Return every device type, by id."""
        with self._db.transaction() as session:
            rows = session.execute(select(DeviceTypeRow).order_by(DeviceTypeRow.id)).scalars()
            return [_device_type(r) for r in rows]

    # -- internals ---------------------------------------------------------------------------

    def _committed(self) -> None:
        publish_committed(self._on_commit)

    @staticmethod
    def _row(session: Session, device_id: str) -> DeviceRow:
        row = session.get(DeviceRow, device_id)
        if row is None:
            raise DeviceNotFound(device_id)
        return row

    @staticmethod
    def _require_references(session: Session, types: set[str | None], sites: set[str | None]) -> None:
        for type_id in types:
            if type_id and session.get(DeviceTypeRow, type_id) is None:
                raise UnknownReference(f"no device type {type_id!r}", hint="create it first")
        for site_id in sites:
            if site_id and session.get(SiteRow, site_id) is None:
                raise UnknownReference(f"no site {site_id!r}", hint="create it first")

    @staticmethod
    def _require_unique(session: Session, rows: list[dict[str, Any]]) -> None:
        try:
            _require_unique_in_store(session, rows, first_row=1)
        except ImportRejected as exc:
            raise DuplicateKey(exc.reason) from exc


# Domain field name -> column name where they differ.
_COLUMN = {"device_type": "device_type_id", "site": "site_id"}


def _new_values(spec: DeviceSpec, now: dt.datetime) -> dict[str, Any]:
    return {
        "id": spec.id or str(uuid.uuid4()),
        "serial": spec.serial,
        "manufacturer": spec.manufacturer,
        "model": spec.model,
        "device_type_id": spec.device_type,
        "hardware_revision": spec.hardware_revision,
        "firmware_version": spec.firmware_version,
        "mud_url": spec.mud_url,
        "site_id": spec.site,
        "owner": spec.owner,
        "labels": dict(spec.labels),
        "state": State.REGISTERED.value,
        "created_at": now,
        "updated_at": now,
        "last_seen": None,
        "version": 1,
    }


def _registered_event(values: dict[str, Any], actor: str, reason: str) -> NewEvent:
    return NewEvent(
        actor=actor,
        subject=device_event_subject(values["id"]),
        action="device.registered",
        reason=reason,
        data={
            "serial": values["serial"],
            "manufacturer": values["manufacturer"],
            "to": State.REGISTERED.value,
        },
    )


def _transition_event(
    device_id: str, action: Action, *, source: State, target: State, actor: str, reason: str
) -> NewEvent:
    return NewEvent(
        actor=actor,
        subject=device_event_subject(device_id),
        action=f"device.{action}",
        reason=reason,
        data={"from": source.value, "to": target.value},
    )


def _apply(row: DeviceRow, changes: DeviceChanges) -> list[str]:
    changed: list[str] = []
    for item in fields(changes):
        value = getattr(changes, item.name)
        if value is None:
            continue
        column = _COLUMN.get(item.name, item.name)
        if item.name == "labels":
            value = dict(value)
        elif item.name in ("mud_url", "device_type", "site") and value == "":
            value = None
        if getattr(row, column) != value:
            setattr(row, column, value)
            changed.append(item.name)
    return changed


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    return str(value)


def _require_version(row: DeviceRow, expected: int | None) -> None:
    if expected is not None and row.version != expected:
        raise ConcurrentUpdate(
            f"device {row.id!r} is at version {row.version}, not {expected}",
            hint="read it again and retry",
        )


def _require_unique_within(rows: list[dict[str, Any]]) -> None:
    ids: dict[str, int] = {}
    serials: dict[tuple[str, str], int] = {}
    for number, row in enumerate(rows, start=1):
        if row["id"] in ids:
            raise ImportRejected(number, f"device id {row['id']!r} repeats row {ids[row['id']]}")
        key = (row["manufacturer"], row["serial"])
        if key in serials:
            raise ImportRejected(
                number, f"serial {row['serial']!r} of {row['manufacturer']!r} repeats row {serials[key]}"
            )
        ids[row["id"]] = number
        serials[key] = number


def _require_unique_in_store(session: Session, rows: list[dict[str, Any]], *, first_row: int) -> None:
    position = {row["id"]: i for i, row in enumerate(rows)}
    serials = {(row["manufacturer"], row["serial"]): i for i, row in enumerate(rows)}
    for start in range(0, len(rows), _IN_CHUNK):
        part = rows[start : start + _IN_CHUNK]
        taken = session.execute(
            select(DeviceRow.id).where(DeviceRow.id.in_([r["id"] for r in part]))
        ).scalars()
        for device_id in taken:
            raise ImportRejected(first_row + position[device_id], f"device id {device_id!r} exists already")
        pairs = [(r["manufacturer"], r["serial"]) for r in part]
        clash = session.execute(
            select(DeviceRow.manufacturer, DeviceRow.serial, DeviceRow.id).where(
                tuple_(DeviceRow.manufacturer, DeviceRow.serial).in_(pairs)
            )
        ).first()
        if clash is not None:
            raise ImportRejected(
                first_row + serials[(clash.manufacturer, clash.serial)],
                f"serial {clash.serial!r} of {clash.manufacturer!r} belongs to device {clash.id!r}",
            )


def _require_import_references(session: Session, specs: Sequence[DeviceSpec]) -> None:
    known_types = set(session.execute(select(DeviceTypeRow.id)).scalars())
    known_sites = set(session.execute(select(SiteRow.id)).scalars())
    for number, spec in enumerate(specs, start=1):
        if spec.device_type is not None and spec.device_type not in known_types:
            raise ImportRejected(number, f"no device type {spec.device_type!r}")
        if spec.site is not None and spec.site not in known_sites:
            raise ImportRejected(number, f"no site {spec.site!r}")


_EXACT = (
    ("id", DeviceRow.id),
    ("serial", DeviceRow.serial),
    ("manufacturer", DeviceRow.manufacturer),
    ("model", DeviceRow.model),
    ("device_type", DeviceRow.device_type_id),
    ("hardware_revision", DeviceRow.hardware_revision),
    ("firmware_version", DeviceRow.firmware_version),
    ("mud_url", DeviceRow.mud_url),
    ("site", DeviceRow.site_id),
    ("owner", DeviceRow.owner),
    ("state", DeviceRow.state),
)


def _filtered(query: _Q, criteria: DeviceFilter) -> _Q:
    for name, column in _EXACT:
        value = getattr(criteria, name)
        if value is not None:
            query = query.where(column == str(value))
    for key, value in criteria.labels.items():
        query = query.where(DeviceRow.labels[key].as_string() == value)
    if criteria.text:
        pattern = "%" + criteria.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(
            or_(
                *(
                    c.like(pattern, escape="\\")
                    for c in (DeviceRow.id, DeviceRow.serial, DeviceRow.model, DeviceRow.owner)
                )
            )
        )
    ranges = (
        (criteria.created_after, DeviceRow.created_at, True),
        (criteria.created_before, DeviceRow.created_at, False),
        (criteria.seen_after, DeviceRow.last_seen, True),
        (criteria.seen_before, DeviceRow.last_seen, False),
    )
    for bound, moment, lower in ranges:
        if bound is not None:
            query = query.where(moment >= bound if lower else moment < bound)
    return query


def _device(row: DeviceRow) -> Device:
    return Device(
        id=DeviceId(row.id),
        serial=row.serial,
        manufacturer=row.manufacturer,
        model=row.model,
        device_type=row.device_type_id,
        hardware_revision=row.hardware_revision,
        firmware_version=row.firmware_version,
        mud_url=row.mud_url,
        site=row.site_id,
        owner=row.owner,
        labels=dict(row.labels or {}),
        state=State(row.state),
        created_at=row.created_at,
        updated_at=row.updated_at,
        last_seen=row.last_seen,
        version=row.version,
    )


def _device_type(row: DeviceTypeRow) -> DeviceType:
    return DeviceType(row.id, row.manufacturer, row.model, row.mud_url, row.description, row.created_at)
