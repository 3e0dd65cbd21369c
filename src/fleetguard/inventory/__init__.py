"""The device inventory: devices, device types, sites and labels, and the device lifecycle."""

from fleetguard.inventory.lifecycle import Action, State
from fleetguard.inventory.model import Device, DeviceChanges, DeviceFilter, DeviceSpec
from fleetguard.inventory.service import Inventory

__all__ = ["Action", "Device", "DeviceChanges", "DeviceFilter", "DeviceSpec", "Inventory", "State"]
