"""The inventory service against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt

import pytest

from fleetguard.errors import InvalidInput
from fleetguard.events.bus import Subscription, open_bus
from fleetguard.events.errors import BusError
from fleetguard.events.log import EventLog
from fleetguard.events.relay import EventRelay
from fleetguard.inventory.errors import DeviceNotFound, IllegalTransition, ImportRejected, UnknownReference
from fleetguard.inventory.lifecycle import Action, State
from fleetguard.inventory.model import DeviceChanges, DeviceFilter, DeviceSpec
from fleetguard.inventory.service import Inventory
from fleetguard.store.database import Database
from fleetguard.store.errors import ConcurrentUpdate, DuplicateKey

T0 = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(seconds=1)
        return self.now


@pytest.fixture
def log(database: Database) -> EventLog:
    return EventLog(database, "example.org/fleetguard/test")


@pytest.fixture
def inventory(database: Database, log: EventLog) -> Inventory:
    return Inventory(database, log, clock=Clock())


def _spec(n: int, **extra: object) -> DeviceSpec:
    return DeviceSpec(id=f"dev-{n}", serial=f"SN{n}", manufacturer="Acme", **extra)  # type: ignore[arg-type]


def test_register_records_device_and_event(inventory: Inventory, log: EventLog) -> None:
    device = inventory.register(_spec(1, model="T1", labels={"env": "prod"}), actor="alice", reason="new")
    assert (device.id, device.state, device.version, device.labels) == (
        "dev-1",
        State.REGISTERED,
        1,
        {"env": "prod"},
    )
    assert inventory.get("dev-1") == device
    [entry] = log.entries()
    assert (entry.actor, entry.subject, entry.action, entry.reason) == (
        "alice", "device:dev-1", "device.registered", "new",
    )  # fmt: skip


def test_register_generates_a_uuid_when_no_id_is_given(inventory: Inventory) -> None:
    device = inventory.register(DeviceSpec(serial="X", manufacturer="Acme"), actor="a")
    assert len(device.id) == 36
    assert device.id.count("-") == 4


def test_duplicate_serial_is_refused_and_nothing_is_written(inventory: Inventory, log: EventLog) -> None:
    inventory.register(_spec(1), actor="a")
    with pytest.raises(DuplicateKey, match="serial 'SN1' of 'Acme' belongs to device 'dev-1'"):
        inventory.register(DeviceSpec(id="dev-2", serial="SN1", manufacturer="Acme"), actor="a")
    assert inventory.count() == 1
    assert log.size() == 1


def test_unknown_site_is_refused(inventory: Inventory) -> None:
    with pytest.raises(UnknownReference, match="no site 'nowhere'"):
        inventory.register(_spec(1, site="nowhere"), actor="a")
    assert inventory.count() == 0


def test_full_lifecycle_writes_one_event_per_transition(inventory: Inventory, log: EventLog) -> None:
    inventory.register(_spec(1), actor="a")
    for action, state in [
        (Action.PROVISION, State.PROVISIONED),
        (Action.ACTIVATE, State.ACTIVE),
        (Action.QUARANTINE, State.QUARANTINED),
        (Action.RELEASE, State.ACTIVE),
        (Action.DECOMMISSION, State.DECOMMISSIONED),
    ]:
        assert inventory.transition("dev-1", action, actor="ops", reason=f"{action} now").state == state
    actions = [(e.action, e.details()) for e in log.entries()[1:]]
    assert actions == [
        ("device.provision", {"from": "registered", "to": "provisioned"}),
        ("device.activate", {"from": "provisioned", "to": "active"}),
        ("device.quarantine", {"from": "active", "to": "quarantined"}),
        ("device.release", {"from": "quarantined", "to": "active"}),
        ("device.decommission", {"from": "active", "to": "decommissioned"}),
    ]


def test_illegal_transition_changes_nothing(inventory: Inventory, log: EventLog) -> None:
    before = inventory.register(_spec(1), actor="a")
    with pytest.raises(
        IllegalTransition,
        match=r"device 'dev-1' is registered: cannot quarantine \(allowed: provision, decommission\)",
    ):
        inventory.transition("dev-1", Action.QUARANTINE, actor="a")
    assert inventory.get("dev-1") == before
    assert log.size() == 1


def test_decommissioned_device_cannot_change(inventory: Inventory) -> None:
    inventory.register(_spec(1), actor="a")
    inventory.transition("dev-1", Action.DECOMMISSION, actor="a")
    with pytest.raises(IllegalTransition, match="allowed: none: the state is terminal"):
        inventory.transition("dev-1", Action.PROVISION, actor="a")
    with pytest.raises(IllegalTransition, match="cannot update"):
        inventory.update("dev-1", DeviceChanges(owner="x"), actor="a")


def test_unknown_device(inventory: Inventory) -> None:
    with pytest.raises(DeviceNotFound, match="no device with id 'ghost'"):
        inventory.get("ghost")
    with pytest.raises(DeviceNotFound, match="no device with id 'ghost'"):
        inventory.transition("ghost", Action.PROVISION, actor="a")


def test_update_with_stale_version_loses_nothing(inventory: Inventory, log: EventLog) -> None:
    inventory.register(_spec(1), actor="a")
    updated = inventory.update("dev-1", DeviceChanges(owner="alice"), actor="a", expected_version=1)
    assert (updated.owner, updated.version) == ("alice", 2)
    with pytest.raises(ConcurrentUpdate, match="device 'dev-1' is at version 2, not 1"):
        inventory.update("dev-1", DeviceChanges(owner="bob"), actor="b", expected_version=1)
    assert inventory.get("dev-1").owner == "alice"
    assert [e.action for e in log.entries()] == ["device.registered", "device.updated"]
    assert log.entries()[1].details() == {"owner": "alice"}


def test_update_clears_mud_url_and_rejects_empty_change(inventory: Inventory) -> None:
    inventory.register(_spec(1, mud_url="https://mud.example.com/t1.json"), actor="a")
    assert inventory.update("dev-1", DeviceChanges(mud_url=""), actor="a").mud_url is None
    with pytest.raises(InvalidInput, match="no change given"):
        inventory.update("dev-1", DeviceChanges(), actor="a")


def test_search_by_every_field(inventory: Inventory) -> None:
    inventory.add_site("plant-1", "Plant 1", actor="a")
    inventory.add_device_type("cam", actor="a", manufacturer="Acme", model="C1")
    inventory.register(
        _spec(1, model="C1", device_type="cam", site="plant-1", firmware_version="1.2", owner="ops",
              hardware_revision="B", mud_url="https://mud.example.com/c1.json", labels={"env": "prod"}),
        actor="a",
    )  # fmt: skip
    inventory.register(_spec(2, model="C2", labels={"env": "lab"}), actor="a")
    inventory.transition("dev-2", Action.PROVISION, actor="a")

    def ids(**criteria: object) -> list[str]:
        return [d.id for d in inventory.find(DeviceFilter(**criteria))]  # type: ignore[arg-type]

    assert ids(model="C1") == ["dev-1"]
    assert ids(device_type="cam") == ["dev-1"]
    assert ids(site="plant-1") == ["dev-1"]
    assert ids(firmware_version="1.2") == ["dev-1"]
    assert ids(hardware_revision="B") == ["dev-1"]
    assert ids(owner="ops") == ["dev-1"]
    assert ids(mud_url="https://mud.example.com/c1.json") == ["dev-1"]
    assert ids(serial="SN2") == ["dev-2"]
    assert ids(manufacturer="Acme") == ["dev-1", "dev-2"]
    assert ids(state=State.PROVISIONED) == ["dev-2"]
    assert ids(labels={"env": "lab"}) == ["dev-2"]
    assert ids(labels={"env": "prod"}, model="C2") == []
    assert ids(text="SN") == ["dev-1", "dev-2"]
    assert ids(text="%") == []  # LIKE wildcards are escaped
    assert ids(created_after=T0) == ["dev-1", "dev-2"]
    assert inventory.count(DeviceFilter(manufacturer="Acme")) == 2


def test_paging_by_cursor(inventory: Inventory) -> None:
    inventory.import_devices([_spec(n) for n in range(10, 25)], actor="a")
    first = inventory.find(limit=10)
    rest = inventory.find(limit=10, after=first[-1].id)
    assert len(first) == 10
    assert len(rest) == 5
    assert [d.id for d in inventory.iterate(batch=4)] == sorted(f"dev-{n}" for n in range(10, 25))


def test_import_is_all_or_nothing(inventory: Inventory, log: EventLog) -> None:
    inventory.register(_spec(3), actor="a")
    specs = [_spec(1), _spec(2), _spec(3), _spec(4)]
    with pytest.raises(ImportRejected, match="import rejected at row 3: device id 'dev-3' exists already"):
        inventory.import_devices(specs, actor="a")
    assert inventory.count() == 1
    assert log.size() == 1


def test_import_rejects_duplicates_within_the_file(inventory: Inventory) -> None:
    specs = [_spec(1), DeviceSpec(id="dev-9", serial="SN1", manufacturer="Acme")]
    with pytest.raises(ImportRejected, match="at row 2: serial 'SN1' of 'Acme' repeats row 1"):
        inventory.import_devices(specs, actor="a")
    assert inventory.count() == 0


def test_import_rejects_unknown_references(inventory: Inventory) -> None:
    with pytest.raises(ImportRejected, match="at row 2: no device type 'cam'"):
        inventory.import_devices([_spec(1), _spec(2, device_type="cam")], actor="a")
    assert inventory.count() == 0


def test_import_reports_progress_and_logs_each_device(inventory: Inventory, log: EventLog) -> None:
    seen: list[tuple[int, int]] = []
    count = inventory.import_devices(
        [_spec(n) for n in range(7)], actor="a", progress=lambda d, t: seen.append((d, t))
    )
    assert count == 7
    assert seen[-1] == (7, 7)
    assert log.size() == 7


def test_events_reach_the_bus_through_the_relay(database: Database, log: EventLog) -> None:
    bus = open_bus("memory://")
    relay = EventRelay(database, log, bus, partitions=4)
    inventory = Inventory(database, log, on_commit=relay.pump, clock=Clock())
    try:
        inventory.register(_spec(1), actor="a")
        inventory.transition("dev-1", Action.PROVISION, actor="a")
        sub = bus.subscribe("fleetguard.dev.>", "test")
        got = sub.fetch(10, timeout_s=0.5)
        assert [d.subject.split(".", 4)[-1] for d in got] == ["device.registered", "device.provision"]
        assert relay.cursor() == 2
        sub.close()
    finally:
        bus.close()


def test_relay_catches_up_after_a_crash_between_commit_and_publish(database: Database, log: EventLog) -> None:
    Inventory(database, log, clock=Clock()).register(_spec(1), actor="a")  # no relay: "crashed"
    bus = open_bus("memory://")
    try:
        relay = EventRelay(database, log, bus, partitions=4)
        assert relay.pump() == 1
        assert relay.pump() == 0
    finally:
        bus.close()


class _DownBus:
    """A bus whose server is unreachable."""

    def publish(self, subject: str, payload: bytes) -> int:
        raise BusError("cannot reach NATS at 127.0.0.1:4222 within 5 s")

    def subscribe(self, filter_subject: str, durable: str, *, ack_wait_s: float = 30.0) -> Subscription:
        raise BusError("down")

    def close(self) -> None:
        return None


def test_a_bus_outage_does_not_fail_a_committed_change(
    database: Database, log: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    relay = EventRelay(database, log, _DownBus(), partitions=4)
    inventory = Inventory(database, log, on_commit=relay.pump, clock=Clock())
    device = inventory.register(_spec(1), actor="a")
    assert inventory.get("dev-1") == device
    assert relay.cursor() == 0  # nothing published yet; the log (outbox) keeps it
    assert "event relay deferred: cannot reach NATS" in caplog.text
