"""The database handle: engine set-up, automatic migrations, and transactions with clear errors.

SQLite is opened in WAL mode with foreign keys on and a busy timeout, and every transaction starts
with ``BEGIN IMMEDIATE`` so that two writers queue for the lock instead of failing on upgrade (the
event log's hash chain needs appends to be serialized). Within one process, writers first wait in a
queue of their own, first come first served: in SQLite's busy handler a waiting writer sleeps and
retries (1 ms, then up to 100 ms a try), so under many threads some waited seconds while others kept
taking the lock, and a few ran out of ``busy_timeout``. The writer at the head of the queue then
takes an exclusive ``flock`` on ``<database>-writer``, retrying every millisecond at most, so that
writers in several processes of the installation (the EST workers, a CLI beside ``up``) meet there
rather than in the busy handler. A process polling for that lock holds a shared ``flock`` on
``<database>-writer-wait``; a process that releases the writer lock and sees (by failing to take
that file exclusively) that another process waits lets it go first, for up to 5 ms, before its own
next writer tries: otherwise the lock passed from thread to thread inside one busy process while the
other processes kept polling, and they ran out of time. Both waits together are bounded by
``busy_timeout``. A program
that writes the database without that lock still meets the busy handler, and SQLite's own locking
keeps it correct either way.

Read-only work uses :meth:`Database.reading`, which starts a plain deferred ``BEGIN``: in WAL mode
readers never block writers, so a long ``events verify`` or export does not stall the API's writes.
:meth:`Database.driver_transaction` and :meth:`Database.driver_reading` are the same two kinds of
transaction for statements prepared once and run on the driver (:mod:`fleetguard.store.driver`),
without SQLAlchemy's session and execution layers: the hot paths (re-enrollment) use them.
Driver exceptions never leave this module: they become :mod:`fleetguard.store.errors` leaves that
say what happened and what to do.

Durability. SQLite runs with ``synchronous=NORMAL`` in WAL mode: a commit is atomic and consistent,
and survives a crash of the process; a power loss or an operating-system crash may roll back the
last transactions committed before it (those not yet checkpointed into the database file), never
corrupt the database or the event log's hash chain. Such a rollback can forget a certificate that
was already answered (OCSP then answers "unknown" for it, and its device must enroll again rather
than renew it). Installations that need every acknowledged write to survive a power loss use
PostgreSQL.
"""

from __future__ import annotations

import fcntl
import functools
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from fleetguard.store.driver import DriverTransaction
from fleetguard.store.errors import ConcurrentUpdate, DuplicateKey, StoreUnavailable

__all__ = ["Database", "open_database"]

_MIGRATIONS = Path(__file__).parent / "migrations"
_READ_ONLY = "fleetguard_read_only"
# Retries of the writer file lock: soon at first, then every millisecond (SQLite's busy handler
# sleeps 1 ms, then up to 100 ms, between tries).
_FILE_LOCK_FIRST_RETRY_S = 0.000_05
_FILE_LOCK_MAX_RETRY_S = 0.001
# How long a process that just released the writer lock, with writers of another process waiting,
# lets them take it before its own next writer tries again (they poll every millisecond at most).
_FILE_LOCK_YIELD_S = 0.005


class Database:
    """An engine plus a session factory; use :meth:`transaction` for every unit of work."""

    def __init__(self, engine: Engine, *, busy_timeout_ms: int = 5000) -> None:
        self.engine = engine
        self.read_engine = engine.execution_options(**{_READ_ONLY: True})
        self._sessions = sessionmaker(engine, expire_on_commit=False, autoflush=False)
        self._read_sessions = sessionmaker(self.read_engine, expire_on_commit=False, autoflush=False)
        # PostgreSQL locks rows, not the database: its writers need no queue.
        self._writers: _WriterQueue | None = None
        if engine.dialect.name == "sqlite":
            path = engine.url.database
            lock = None if not path or path == ":memory:" else Path(f"{path}-writer")
            self._writers = _WriterQueue(busy_timeout_ms / 1000, lock)

    @property
    def is_sqlite(self) -> bool:
        """True when the backend is SQLite."""
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Yield a session in one transaction; commit on success, roll back on any error.

        Raises:
            ConcurrentUpdate: a row changed since it was read (optimistic locking).
            DuplicateKey: a unique or foreign key constraint refused the change.
            StoreUnavailable: the database is locked, full or unreachable.
        """
        with self._writers or nullcontext(), self._translated(self._sessions()) as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """Yield a session for reads only: on SQLite it never takes the write lock.

        Raises:
            StoreUnavailable: the database is unreachable.
        """
        with self._translated(self._read_sessions()) as session:
            yield session

    @contextmanager
    def driver_transaction(self) -> Iterator[DriverTransaction]:
        """Yield a write transaction for prepared statements; commit on success, roll back on any error.

        The same rules as :meth:`transaction` (the writer queue and ``BEGIN IMMEDIATE`` on SQLite)
        and the same errors: ``DuplicateKey``, ``StoreUnavailable``.
        """
        with self._writers or nullcontext(), self._driver("BEGIN IMMEDIATE") as transaction:
            yield transaction

    @contextmanager
    def driver_reading(self) -> Iterator[DriverTransaction]:
        """Yield a read transaction for prepared statements (never the write lock on SQLite).

        Raises ``StoreUnavailable`` as :meth:`reading` does.
        """
        with self._driver("BEGIN") as transaction:
            yield transaction

    @contextmanager
    def _driver(self, begin: str) -> Iterator[DriverTransaction]:
        dialect = self.engine.dialect
        dbapi = dialect.loaded_dbapi
        try:
            connection = self.engine.raw_connection()
        except (IntegrityError, OperationalError) as exc:  # the pool translated a failure to connect
            raise _store_error(exc) from exc
        cursor = None
        try:
            cursor = connection.cursor()
            if self.is_sqlite:  # pysqlite runs without its own transactions (_configure_sqlite)
                cursor.execute(begin)
            yield DriverTransaction(cursor, dialect)
            connection.commit()
        except dbapi.Error as exc:
            _roll_back(connection, dbapi.Error)
            if dialect.is_disconnect(exc, connection.driver_connection, cursor):
                connection.invalidate(exc)
            # SQLAlchemy's own translation of a driver error, then ours, as for a session.
            wrapped = DBAPIError.instance(None, None, exc, dbapi.Error, dialect=dialect)
            if isinstance(wrapped, IntegrityError | OperationalError):
                raise _store_error(wrapped) from exc
            raise wrapped from exc
        except BaseException:
            _roll_back(connection, dbapi.Error)
            raise
        finally:
            connection.close()  # back to the pool

    @contextmanager
    def _translated(self, session: Session) -> Iterator[Session]:
        try:
            with session.begin():
                yield session
        except StaleDataError as exc:
            raise ConcurrentUpdate(
                "the record was changed by someone else since it was read",
                hint="read it again and retry",
            ) from exc
        except (IntegrityError, OperationalError) as exc:
            raise _store_error(exc) from exc
        finally:
            session.close()

    def ping(self) -> None:
        """Run a trivial query; raise :class:`StoreUnavailable` if the database does not answer."""
        try:
            with self.read_engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except DBAPIError as exc:
            raise _unavailable(exc) from exc

    def close(self) -> None:
        """Dispose of the connection pool."""
        self.engine.dispose()
        if self._writers is not None:
            self._writers.close()


class _WriterQueue:
    """The queue of SQLite writers: first come first served in the process, then a file lock.

    See the module docstring. In the process the lock passes straight to the thread that has
    waited longest, so a thread that releases it cannot take it back ahead of the others, and no
    writer waits behind more than the writers that came before it. Reentrant: a nested write
    transaction fails on SQLite's own lock after ``busy_timeout``, as it always did, rather than
    deadlocking here.
    """

    def __init__(self, timeout_s: float, lock_path: Path | None) -> None:
        self._timeout_s = timeout_s
        self._lock_path = lock_path
        self._wait_path = None if lock_path is None else Path(f"{lock_path}-wait")
        self._lock_fd: int | None = None
        self._wait_fd: int | None = None
        self._others_waiting = False
        self._mutex = threading.Lock()
        self._owner: int | None = None
        self._depth = 0
        self._waiting: deque[tuple[int, threading.Lock]] = deque()

    def __enter__(self) -> None:
        me = threading.get_ident()
        deadline = time.monotonic() + self._timeout_s
        with self._mutex:
            if self._owner == me:
                self._depth += 1
                return
            turn = None
            if self._owner is None:
                self._owner, self._depth = me, 1
            else:
                turn = threading.Lock()
                turn.acquire()
                self._waiting.append((me, turn))
        if turn is not None:
            self._await_turn(me, turn, deadline)
        try:
            self._lock_file(deadline)
        except BaseException:
            self._release()
            raise

    def __exit__(self, *_exc: object) -> None:
        self._release()

    def _await_turn(self, me: int, turn: threading.Lock, deadline: float) -> None:
        if turn.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return  # handed over by _release, which made this thread the owner
        with self._mutex:
            if self._owner == me:  # handed over as the wait timed out
                return
            self._waiting.remove((me, turn))
        raise _locked("by a long write in this process")

    def _lock_file(self, deadline: float) -> None:
        if self._lock_path is None or self._wait_path is None:
            return
        if self._lock_fd is None:
            self._lock_fd = _open_lock(self._lock_path)
            self._wait_fd = _open_lock(self._wait_path)
        if self._others_waiting:
            self._others_waiting = False
            self._let_others_go_first(deadline)
        if _try_flock(self._lock_fd, fcntl.LOCK_EX):
            return
        assert self._wait_fd is not None
        fcntl.flock(self._wait_fd, fcntl.LOCK_SH)
        try:
            delay = _FILE_LOCK_FIRST_RETRY_S
            while not _try_flock(self._lock_fd, fcntl.LOCK_EX):
                if time.monotonic() >= deadline:
                    raise _locked("by another process of the installation")
                time.sleep(delay)
                delay = min(2 * delay, _FILE_LOCK_MAX_RETRY_S)
        finally:
            fcntl.flock(self._wait_fd, fcntl.LOCK_UN)

    def _let_others_go_first(self, deadline: float) -> None:
        until = min(deadline, time.monotonic() + _FILE_LOCK_YIELD_S)
        while self._another_process_waits() and time.monotonic() < until:
            time.sleep(_FILE_LOCK_MAX_RETRY_S / 2)

    def _another_process_waits(self) -> bool:
        assert self._wait_fd is not None
        if not _try_flock(self._wait_fd, fcntl.LOCK_EX):
            return True
        fcntl.flock(self._wait_fd, fcntl.LOCK_UN)
        return False

    def _release(self) -> None:
        with self._mutex:
            self._depth -= 1
            if self._depth:
                return
            if self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            if not self._waiting:
                self._owner = None
                return
            if self._wait_fd is not None:
                self._others_waiting = self._another_process_waits()
            self._owner, turn = self._waiting.popleft()
            self._depth = 1
            turn.release()

    def close(self) -> None:
        with self._mutex:
            for fd in (self._lock_fd, self._wait_fd):
                if fd is not None:
                    os.close(fd)
            self._lock_fd = self._wait_fd = None


def _open_lock(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _try_flock(fd: int, operation: int) -> bool:
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _locked(by: str) -> StoreUnavailable:
    return StoreUnavailable(
        f"database unavailable: database is locked ({by})",
        hint="retry; a large import or batch holds the write lock",
    )


def open_database(url: str, *, busy_timeout_ms: int = 5000, migrate: bool = True) -> Database:
    """Open (and by default migrate to the newest schema) the database at ``url``.

    Raises:
        StoreUnavailable: the database cannot be reached or migrated.
    """
    engine = _create_engine(url, busy_timeout_ms)
    database = Database(engine, busy_timeout_ms=busy_timeout_ms)
    if migrate:
        try:
            upgrade_schema(engine)
        except OperationalError as exc:
            engine.dispose()
            raise _unavailable(exc) from exc
    return database


def upgrade_schema(engine: Engine) -> None:
    """Apply every pending alembic migration to ``engine``'s database.

    A database already at the newest revision is left alone after one query: every command opens
    the database, and loading alembic's migration scripts each time (they are compiled on load)
    would cost more than the command itself.
    """
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current is not None and current == _head_revision():
        return
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


@functools.cache
def _head_revision() -> str | None:
    """The newest migration's revision (the scripts are read once per process)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def _create_engine(url: str, busy_timeout_ms: int) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"timeout": busy_timeout_ms / 1000}, pool_size=16, max_overflow=32
    )
    _configure_sqlite(engine, busy_timeout_ms)
    return engine


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    # pysqlite's own transaction handling is switched off so that we can issue BEGIN IMMEDIATE
    # (SQLAlchemy documents this recipe under "Serializable isolation / Savepoints / Transactional DDL").
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        read_only = connection.get_execution_options().get(_READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _roll_back(connection: Any, driver_error: type[Exception]) -> None:
    # The transaction failed already: that error is the one to report. A connection too broken to
    # roll back is invalidated by the caller, or reset by the pool when it is returned.
    with suppress(driver_error):
        connection.rollback()


def _store_error(exc: IntegrityError | OperationalError) -> DuplicateKey | StoreUnavailable:
    if isinstance(exc, IntegrityError):
        return DuplicateKey(f"constraint refused the change: {_driver_message(exc)}")
    return _unavailable(exc)


def _driver_message(exc: DBAPIError) -> str:
    return str(exc.orig).splitlines()[0] if exc.orig is not None else type(exc).__name__


def _unavailable(exc: DBAPIError) -> StoreUnavailable:
    message = _driver_message(exc)
    lowered = message.lower()
    if "locked" in lowered or "busy" in lowered:
        hint = "another process holds the database lock; retry, or stop the other writer"
    elif "full" in lowered or "no space" in lowered:
        hint = "the disk holding the database is full; free space and retry"
    else:
        hint = "check that the database is running and reachable"
    return StoreUnavailable(f"database unavailable: {message}", hint=hint)
