"""The event relay: publishes committed event-log entries on the bus (the log is the outbox).

Services append to the log inside their transaction and call :meth:`EventRelay.notify` after commit.
In a one-shot process that pumps at once; in a server (after :meth:`EventRelay.start`) it wakes a
background thread, so publishing never sits on a request's path.
The relay publishes every entry after its stored cursor, in order, then advances the cursor, so an
entry committed just before a crash is published on the next pump (at start-up at the latest).
Delivery is at-least-once: a crash between publish and cursor update republishes a few entries, and
consumers de-duplicate on the entry's ``seq``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import select

from fleetguard.events.bus import EventBus, device_subject, system_subject
from fleetguard.events.entry import EventEntry
from fleetguard.events.errors import BusError
from fleetguard.events.log import EventLog
from fleetguard.store.database import Database
from fleetguard.store.errors import StoreUnavailable
from fleetguard.store.models import BusCursorRow

__all__ = ["EventRelay", "publish_committed", "subject_for"]

_log = logging.getLogger(__name__)

_CURSOR = "bus"
_IDLE_WAKE_S = 1.0
_COALESCE_S = 0.02
_SAVE_INTERVAL_S = 1.0
_JOIN_TIMEOUT_S = 10.0
_BATCH = 1000


def publish_committed(pump: Callable[[], object] | None) -> None:
    """Run ``pump`` after a commit; a failure is logged, not raised.

    The change is committed and its entry is in the log (the outbox), so reporting failure to the
    caller would be wrong (a retry would conflict); the next pump, at the latest on start-up,
    publishes what this one could not.
    """
    if pump is None:
        return
    try:
        pump()
    except (StoreUnavailable, BusError) as exc:
        _log.warning("event relay deferred: %s", exc)


def subject_for(entry: EventEntry, partitions: int) -> str:
    """Return the bus subject of ``entry``: device events are partitioned by device id."""
    kind, _, name = entry.subject.partition(":")
    if kind == "device" and name:
        return device_subject(name, entry.action, partitions)
    return system_subject(entry.action)


class EventRelay:
    """Publishes ``log`` entries on ``bus`` after the cursor kept in ``database``."""

    def __init__(self, database: Database, log: EventLog, bus: EventBus, *, partitions: int) -> None:
        self._db = database
        self._log = log
        self._bus = bus
        self._partitions = partitions
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._published: int | None = None  # the last entry published by this process
        self._saved_at = 0.0

    def start(self) -> None:
        """Publish from a background thread from now on (woken by :meth:`notify`, else every second)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fleetguard-event-relay", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the background thread, then publish what is left and save the cursor. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping.set()
            self._wake.set()
            thread.join(_JOIN_TIMEOUT_S)
        publish_committed(self._flush)

    def _flush(self) -> None:
        self.pump()
        with self._lock:
            if self._published is not None:
                self._save(self._published)

    def notify(self) -> None:
        """Say that entries were committed: wake the background thread, or pump now without one."""
        if self._thread is not None:
            self._wake.set()
        else:
            self.pump()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(_IDLE_WAKE_S)
            # Let a burst of commits gather, so one pump publishes them together.
            self._stopping.wait(_COALESCE_S)
            self._wake.clear()
            publish_committed(self.pump)

    def pump(self) -> int:
        """Publish every entry not yet published; return how many were published.

        The cursor is written back at once in a one-shot process, and at most every
        ``_SAVE_INTERVAL_S`` seconds (and on :meth:`stop`) by the background thread: a crash in
        between republishes a few entries, which at-least-once delivery allows.
        """
        published = 0
        with self._lock:
            cursor = self.cursor()
            while batch := self._log.entries(after_seq=cursor, limit=_BATCH):
                for entry in batch:
                    payload = json.dumps(entry.to_json(), sort_keys=True).encode()
                    self._bus.publish(subject_for(entry, self._partitions), payload)
                cursor = self._published = batch[-1].seq
                published += len(batch)
                if len(batch) < _BATCH:
                    break  # that was all: spare the query that would say so
            if published and (self._thread is None or time.monotonic() - self._saved_at >= _SAVE_INTERVAL_S):
                self._save(cursor)
                self._saved_at = time.monotonic()
        return published

    def cursor(self) -> int:
        """Return the sequence number of the last entry published (read once, then kept)."""
        if self._published is not None:
            return self._published
        with self._db.reading() as session:
            value = session.execute(
                select(BusCursorRow.seq).where(BusCursorRow.name == _CURSOR)
            ).scalar_one_or_none()
        return 0 if value is None else int(value)

    def _save(self, seq: int) -> None:
        with self._db.transaction() as session:
            row = session.get(BusCursorRow, _CURSOR)
            if row is None:
                session.add(BusCursorRow(name=_CURSOR, seq=seq))
            else:
                row.seq = seq
