"""Inventory errors: each says which device and what was expected."""

from __future__ import annotations

from fleetguard.errors import Conflict, FleetguardError, InvalidInput, NotFound

__all__ = [
    "DeviceNotFound",
    "IllegalTransition",
    "ImportRejected",
    "InventoryError",
    "UnknownReference",
]


class InventoryError(FleetguardError):
    """Base of inventory errors."""

    code = "inventory"


class DeviceNotFound(NotFound, InventoryError):
    """No device has this id."""

    code = "device-not-found"

    def __init__(self, device_id: str) -> None:
        super().__init__(f"no device with id {device_id!r}", hint="list devices to see valid ids")
        self.device_id = device_id


class UnknownReference(InvalidInput, InventoryError):
    """A device names a site or device type that does not exist."""

    code = "unknown-reference"


class IllegalTransition(Conflict, InventoryError):
    """The lifecycle does not allow this action from the device's current state."""

    code = "illegal-transition"

    def __init__(self, device_id: str, state: str, action: str, allowed: list[str]) -> None:
        allowed_text = ", ".join(allowed) if allowed else "none: the state is terminal"
        super().__init__(f"device {device_id!r} is {state}: cannot {action} (allowed: {allowed_text})")
        self.device_id = device_id
        self.state = state
        self.action = action


class ImportRejected(InvalidInput, InventoryError):
    """A bulk import was refused as a whole because of one bad row; nothing was written."""

    code = "import-rejected"

    def __init__(self, row: int, reason: str) -> None:
        where = "in the header" if row == 0 else f"at row {row}"
        super().__init__(f"import rejected {where}: {reason}; nothing was imported")
        self.row = row
        self.reason = reason
