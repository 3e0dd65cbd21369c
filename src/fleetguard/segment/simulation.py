"""What a proposed policy would do to recorded traffic, before it is enforced.

:func:`simulate` checks every recorded flow of a managed device against the *compiled* fleet, the
same set elements the nftables ruleset is built from, so the simulation and the gateway agree by
construction (an integration test replays flows through real nftables to hold them to it). A flow
is judged by its first packet, as the gateway judges a new connection: the sender's
``from-device`` policy if the sender is managed, and the receiver's ``to-device`` policy if the
receiver is managed; replies ride on the connection. Quarantined devices' flows are all blocked.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from fleetguard.segment.compiler import CompiledFleet, IcmpElement, IpAddress, PortElement
from fleetguard.segment.model import Direction, Family, Flow

__all__ = ["DeviceReport", "FlowVerdict", "Simulation", "Verdict", "simulate"]

_ICMP = {4: 1, 6: 58}


class Verdict(enum.StrEnum):
    """What the gateway would do with a flow's first packet."""

    ALLOWED = "allowed"
    BLOCKED = "blocked"
    QUARANTINED = "quarantined"
    UNMANAGED = "unmanaged"  # neither end is a managed device: not ours


@dataclass(frozen=True, slots=True)
class FlowVerdict:
    """One flow, and why it would be blocked (empty when allowed)."""

    flow: Flow
    verdict: Verdict
    reason: str = ""


@dataclass(slots=True)
class DeviceReport:
    """A managed device's flows under the proposed policy."""

    device_id: str
    allowed: int = 0
    blocked: list[FlowVerdict] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Simulation:
    """Per device, the flows the policy would block; and how many flows were not ours."""

    devices: Mapping[str, DeviceReport]
    flows: int
    unmanaged: int

    @property
    def blocked(self) -> int:
        """How many flows (counted once per device they concern) would be blocked."""
        return sum(len(report.blocked) for report in self.devices.values())


def simulate(
    fleet: CompiledFleet, flows: Iterable[Flow], *, quarantined: Sequence[IpAddress] = ()
) -> Simulation:
    """Judge every flow against ``fleet`` (see the module docstring)."""
    members: dict[IpAddress, str] = {}
    for binding in fleet.devices.values():
        for address in (binding.ipv4, binding.ipv6):
            if address is not None:
                members[address] = binding.device_id
    index = _Index(fleet)
    held = set(quarantined)
    reports = {device: DeviceReport(device) for device in sorted(fleet.devices)}
    total = unmanaged = 0
    for flow in flows:
        total += 1
        source, destination = ipaddress.ip_address(flow.source), ipaddress.ip_address(flow.destination)
        ends = [(members.get(source), Direction.FROM_DEVICE), (members.get(destination), Direction.TO_DEVICE)]
        concerned = [(device, direction) for device, direction in ends if device is not None]
        if not concerned:
            unmanaged += 1
            continue
        verdict = _judge(
            flow,
            source=source,
            destination=destination,
            concerned=concerned,
            fleet=fleet,
            index=index,
            held=held,
        )
        for device, _ in concerned:
            if verdict.verdict is Verdict.ALLOWED:
                reports[device].allowed += 1
            else:
                reports[device].blocked.append(verdict)
    return Simulation(reports, total, unmanaged)


def _judge(
    flow: Flow,
    *,
    source: IpAddress,
    destination: IpAddress,
    concerned: list[tuple[str, Direction]],
    fleet: CompiledFleet,
    index: _Index,
    held: set[IpAddress],
) -> FlowVerdict:
    if source in held or destination in held:
        return FlowVerdict(flow, Verdict.QUARANTINED, "quarantined")
    for device, direction in concerned:
        klass = fleet.class_of(device)
        remote = destination if direction is Direction.FROM_DEVICE else source
        if klass == 0:
            return FlowVerdict(flow, Verdict.BLOCKED, f"{device} has no MUD profile")
        if not index.allows(klass, direction, flow, remote):
            return FlowVerdict(flow, Verdict.BLOCKED, f"not in {device}'s {direction.value} policy")
    return FlowVerdict(flow, Verdict.ALLOWED)


class _Index:
    """The compiled elements by (class, family, direction), for membership tests."""

    def __init__(self, fleet: CompiledFleet) -> None:
        self.ports: dict[tuple[int, Family, Direction], list[PortElement]] = {}
        self.icmp: dict[tuple[int, Family, Direction], list[IcmpElement]] = {}
        for klass, rules in fleet.rules.items():
            for (family, direction), elements in rules.ports.items():
                self.ports[(klass, family, direction)] = list(elements)
            for (family, direction), icmp in rules.icmp.items():
                self.icmp[(klass, family, direction)] = list(icmp)

    def allows(self, klass: int, direction: Direction, flow: Flow, remote: IpAddress) -> bool:
        family = Family.IPV4 if remote.version == 4 else Family.IPV6
        if flow.protocol == _ICMP[remote.version]:
            return any(
                remote in e.remote
                and e.types[0] <= (flow.icmp_type or 0) <= e.types[1]
                and e.codes[0] <= (flow.icmp_code or 0) <= e.codes[1]
                for e in self.icmp.get((klass, family, direction), ())
            )
        if direction is Direction.FROM_DEVICE:
            device_port, remote_port = flow.source_port, flow.destination_port
        else:
            device_port, remote_port = flow.destination_port, flow.source_port
        return any(
            e.protocol[0] <= flow.protocol <= e.protocol[1]
            and remote in e.remote
            and remote_port in e.remote_ports
            and device_port in e.device_ports
            for e in self.ports.get((klass, family, direction), ())
        )
