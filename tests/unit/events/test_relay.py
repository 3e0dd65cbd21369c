"""The event relay publishes committed entries, inline or from its background thread."""

from __future__ import annotations

import datetime as dt
import time

from fleetguard.events.bus import open_bus
from fleetguard.events.entry import NewEvent
from fleetguard.events.log import EventLog
from fleetguard.events.relay import EventRelay
from fleetguard.store.database import Database

NOW = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)


def _append(log: EventLog, database: Database, n: int) -> None:
    with database.transaction() as session:
        log.append_many(
            session, [NewEvent(actor="t", subject=f"device:d{i}", action="x") for i in range(n)], now=NOW
        )


def test_notify_without_a_thread_publishes_before_returning(database: Database) -> None:
    log, bus = EventLog(database, "o"), open_bus("memory://")
    relay = EventRelay(database, log, bus, partitions=2)
    _append(log, database, 3)
    relay.notify()
    assert relay.cursor() == 3
    bus.close()


def test_the_background_thread_publishes_after_notify_and_stop_drains(database: Database) -> None:
    log, bus = EventLog(database, "o"), open_bus("memory://")
    relay = EventRelay(database, log, bus, partitions=2)
    relay.start()
    try:
        _append(log, database, 2)
        relay.notify()
        deadline = time.monotonic() + 5
        while relay.cursor() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert relay.cursor() == 2
        _append(log, database, 1)  # committed, not notified: stop() publishes it
    finally:
        relay.stop()
    assert relay.cursor() == 3
    subscription = bus.subscribe("fleetguard.>", "check")
    assert len(subscription.fetch(10, timeout_s=0.5)) == 3
    subscription.close()
    bus.close()


def test_stop_saves_the_cursor_so_a_restart_does_not_republish(database: Database) -> None:
    log, bus = EventLog(database, "o"), open_bus("memory://")
    relay = EventRelay(database, log, bus, partitions=2)
    relay.start()
    _append(log, database, 4)
    relay.notify()
    relay.stop()
    restarted = EventRelay(database, log, bus, partitions=2)
    assert restarted.cursor() == 4
    assert restarted.pump() == 0
    bus.close()
