"""Statements prepared once and run on the driver: the same rows, types, locks and errors as a session."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import bindparam, insert, select, update

from fleetguard.events.entry import NewEvent
from fleetguard.events.log import EventLog
from fleetguard.store.database import Database, open_database
from fleetguard.store.driver import Prepared
from fleetguard.store.errors import DuplicateKey, StoreUnavailable
from fleetguard.store.models import Base, EventHeadRow, SiteRow

_SITES = Base.metadata.tables["sites"]
_INSERT_SITE = Prepared(insert(_SITES))
_SITE = Prepared(select(_SITES).where(_SITES.c.id == bindparam("id")))
_ALL_SITES = Prepared(select(_SITES.c.id, _SITES.c.name).order_by(_SITES.c.id))
_RENAME = Prepared(update(_SITES).where(_SITES.c.id == bindparam("site")).values(name=bindparam("name")))
_HEAD = Prepared(select(EventHeadRow.seq).where(EventHeadRow.id == 1).with_for_update())
_MOMENT = dt.datetime(2030, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))


def _site(site_id: str, *, created_at: dt.datetime = _MOMENT) -> dict[str, object]:
    return {"id": site_id, "name": f"site {site_id}", "description": "", "created_at": created_at}


def test_rows_come_back_by_name_and_position_with_their_types(database: Database) -> None:
    with database.driver_transaction() as transaction:
        transaction.execute(_INSERT_SITE, _site("s1"))
    with database.driver_reading() as reading:
        row = reading.first(_SITE, {"id": "s1"})
        missing = reading.first(_SITE, {"id": "nope"})
    assert row is not None
    assert missing is None
    assert (row.id, row[1], row.description) == ("s1", "site s1", "")
    assert tuple(row)[:3] == ("s1", "site s1", "")
    assert len(row) == 4
    # UtcDateTime's processors run as in a session: aware in, aware UTC out, the same instant.
    assert row.created_at == _MOMENT
    assert row.created_at.utcoffset() == dt.timedelta(0)
    with pytest.raises(AttributeError, match="nope"):
        _ = row.nope


def test_prepared_rows_are_the_rows_a_session_reads(database: Database) -> None:
    with database.driver_transaction() as transaction:
        transaction.execute_many(_INSERT_SITE, [_site("b"), _site("a")])
        transaction.execute(_RENAME, {"site": "b", "name": "renamed"})
    with database.reading() as session:
        through_session = [tuple(row) for row in session.execute(select(_SITES.c.id, _SITES.c.name))]
    with database.driver_reading() as reading:
        prepared = [(row.id, row.name) for row in reading.rows(_ALL_SITES)]
    assert prepared == sorted(through_session) == [("a", "site a"), ("b", "renamed")]


def test_a_literal_of_the_statement_is_bound_too(database: Database) -> None:
    # WHERE event_head.id = 1 (and FOR UPDATE on PostgreSQL) in a write transaction.
    with database.driver_transaction() as transaction:
        head = transaction.first(_HEAD)
    assert head is not None
    assert head.seq == 0


def test_naive_time_is_refused_and_nothing_is_written(database: Database) -> None:
    naive = dt.datetime(2030, 1, 1)  # noqa: DTZ001 - the point of the test

    def write() -> None:
        with database.driver_transaction() as transaction:
            transaction.execute(_INSERT_SITE, _site("first"))
            transaction.execute(_INSERT_SITE, _site("naive", created_at=naive))

    with pytest.raises(ValueError, match="naive datetime refused"):
        write()
    with database.driver_reading() as reading:
        assert reading.rows(_ALL_SITES) == []


def test_failed_driver_transaction_rolls_back_everything(database: Database) -> None:
    def add_then_fail() -> None:
        with database.driver_transaction() as transaction:
            transaction.execute(_INSERT_SITE, _site("s1"))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        add_then_fail()
    with database.transaction() as session:
        assert session.execute(select(SiteRow)).all() == []


def test_duplicate_key_is_a_clear_conflict_and_rolls_back(database: Database) -> None:
    with database.driver_transaction() as transaction:
        transaction.execute(_INSERT_SITE, _site("s1"))

    def add_twice() -> None:
        with database.driver_transaction() as transaction:
            transaction.execute(_INSERT_SITE, _site("s2"))
            transaction.execute(_INSERT_SITE, _site("s1"))

    with pytest.raises(DuplicateKey, match="constraint refused the change"):
        add_twice()
    with database.driver_reading() as reading:
        assert [row.id for row in reading.rows(_ALL_SITES)] == ["s1"]
    # The connection went back to the pool usable.
    with database.driver_transaction() as transaction:
        transaction.execute(_INSERT_SITE, _site("s3"))


def test_a_missing_parameter_is_an_error_before_the_database_sees_it(database: Database) -> None:
    with pytest.raises(KeyError, match="name"), database.driver_transaction() as transaction:
        transaction.execute(_RENAME, {"site": "s1"})


def test_a_statement_sqlalchemy_rewrites_per_run_is_refused(database: Database) -> None:
    in_list = Prepared(select(_SITES).where(_SITES.c.id.in_(bindparam("ids", expanding=True))))
    with pytest.raises(TypeError, match="no IN lists"), database.driver_reading() as reading:
        reading.rows(in_list, {"ids": ["s1"]})


def test_locked_sqlite_database_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    db = open_database(f"sqlite:///{path}", busy_timeout_ms=50)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable, match="database is locked"), db.driver_transaction() as t:
            t.execute(_INSERT_SITE, _site("s1"))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    with db.driver_reading() as reading:
        assert reading.rows(_ALL_SITES) == []
    db.close()


def test_a_driver_read_does_not_take_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "rw.db"
    db = open_database(f"sqlite:///{path}", busy_timeout_ms=50)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        with db.driver_reading() as reading:
            assert reading.rows(_ALL_SITES) == []
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    db.close()


def test_event_log_appends_on_the_driver_continue_the_same_chain(database: Database) -> None:
    log = EventLog(database, "test.example/log")
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    with database.transaction() as session:
        log.append(session, NewEvent(actor="a", subject="s", action="x.one"), now=now)
    with database.driver_transaction() as transaction:
        appended = log.append_in(
            transaction,
            [
                NewEvent(actor="a", subject="s", action="x.two"),
                NewEvent(actor="a", subject="s", action="x.three"),
            ],
            now=now,
        )
    with database.transaction() as session:
        log.append(session, NewEvent(actor="a", subject="s", action="x.four"), now=now)
    entries = log.entries(limit=10)
    assert [entry.action for entry in entries] == ["x.one", "x.two", "x.three", "x.four"]
    assert entries[1:3] == appended
    assert log.size() == 4
    log.verify(Ed25519PrivateKey.generate().public_key()).require_intact()
