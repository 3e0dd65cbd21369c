"""The inventory's writes inside a caller's transaction (``add_devices``, ``transition_devices``), as a
manufacturing batch uses them: they check like their one-transaction twins, and roll back with the
caller's transaction."""

from __future__ import annotations

import datetime as dt

import pytest

from fleetguard.events.log import EventLog
from fleetguard.inventory.errors import DeviceNotFound, IllegalTransition, ImportRejected
from fleetguard.inventory.lifecycle import Action, State
from fleetguard.inventory.model import DeviceSpec
from fleetguard.inventory.service import Inventory
from fleetguard.store.database import Database

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def log(database: Database) -> EventLog:
    return EventLog(database, "example.org/fleetguard/test")


@pytest.fixture
def inventory(database: Database, log: EventLog) -> Inventory:
    return Inventory(database, log)


def _spec(n: int) -> DeviceSpec:
    return DeviceSpec(id=f"dev-{n}", serial=f"SN{n}", manufacturer="Acme")


def test_devices_added_and_provisioned_in_one_transaction(
    database: Database, inventory: Inventory, log: EventLog
) -> None:
    with database.transaction() as session:
        inventory.add_devices(session, [_spec(1), _spec(2)], actor="ops", reason="batch b", now=NOW)
        inventory.transition_devices(
            session, ["dev-1", "dev-2"], Action.PROVISION, actor="ops", reason="issued", now=NOW
        )
    devices = [inventory.get(f"dev-{n}") for n in (1, 2)]
    assert [(d.state, d.version, d.updated_at) for d in devices] == [(State.PROVISIONED, 2, NOW)] * 2
    assert [(e.action, e.subject, e.reason, e.details().get("to")) for e in log.entries()] == [
        ("device.registered", "device:dev-1", "batch b", "registered"),
        ("device.registered", "device:dev-2", "batch b", "registered"),
        ("device.provision", "device:dev-1", "issued", "provisioned"),
        ("device.provision", "device:dev-2", "issued", "provisioned"),
    ]


def test_a_duplicate_is_named_by_row_before_anything_is_written(
    database: Database, inventory: Inventory
) -> None:
    inventory.register(_spec(2), actor="ops")
    rejected = pytest.raises(ImportRejected, match="at row 2: device id 'dev-2' exists already")
    with rejected, database.transaction() as session:
        inventory.add_devices(session, [_spec(1), _spec(2)], actor="ops", reason="", now=NOW)
    assert inventory.count() == 1


@pytest.mark.parametrize(
    ("ids", "error", "message"),
    [
        (["dev-1", "ghost"], DeviceNotFound, "no device with id 'ghost'"),
        (["dev-1", "dev-2"], IllegalTransition, "device 'dev-2' is provisioned: cannot provision"),
    ],
)
def test_one_device_that_cannot_move_moves_none(
    database: Database, inventory: Inventory, ids: list[str], error: type[Exception], message: str
) -> None:
    inventory.import_devices([_spec(1), _spec(2)], actor="ops")
    inventory.transition("dev-2", Action.PROVISION, actor="ops")
    with pytest.raises(error, match=message), database.transaction() as session:
        inventory.transition_devices(session, ids, Action.PROVISION, actor="ops", reason="", now=NOW)
    assert inventory.get("dev-1").state is State.REGISTERED
