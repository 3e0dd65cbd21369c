"""The JSON shapes of the segmentation API (:mod:`fleetguard.api.routers.segment`), which the
``fleetguard segment`` commands print with ``--json`` too, so that scripts read both alike.

Requests forbid unknown fields and bound every string and collection; the segmentation service checks
the values again (MUD files are parsed by ``parse_mud``, addresses by the service). Responses are built
from the service's frozen values.

:func:`simulate_proposal` is what both edges run for a simulation with proposed profiles: the fleet
compiled with the proposed profiles in place of the stored ones of the same MUD URL, nothing stored.
It belongs in :class:`~fleetguard.segment.service.SegmentationService` (which keeps its resolved DNS
names private); until the service offers it, it resolves the profiles' names itself.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, IPvAnyAddress, StringConstraints

from fleetguard.segment.compiler import FleetContext
from fleetguard.segment.model import Ace, Flow, MudProfile, Peer, PortRange
from fleetguard.segment.mud import MAX_MUD_BYTES, MAX_URL
from fleetguard.segment.nftables import Violation
from fleetguard.segment.service import ApplyResult, Binding, StoredProfile
from fleetguard.segment.signature import MAX_SIGNATURE_BYTES
from fleetguard.segment.simulation import DeviceReport, FlowVerdict, Simulation, Verdict

__all__ = [
    "MAX_PROFILE_BODY",
    "MAX_PROPOSED_PROFILES",
    "MAX_SIMULATED_FLOWS",
    "MAX_SIMULATE_BODY",
    "AceView",
    "ApplyRequest",
    "ApplyView",
    "BindingRequest",
    "BindingView",
    "BlockedFlow",
    "ContextView",
    "DeviceSimulation",
    "FlowRecord",
    "HistoryEntry",
    "ProfileSummary",
    "ProfileUpload",
    "ProfileView",
    "SimulationRequest",
    "SimulationView",
    "ViolationView",
]

MAX_PROFILE_BODY = 2 * MAX_MUD_BYTES + 2 * MAX_SIGNATURE_BYTES + 64 * 1024
"""Largest body of ``POST /v1/segment/profiles``: a MUD file of ``MAX_MUD_BYTES`` JSON-escaped (quotes
double), its signature in base64, and room for the field names. A document over ``MAX_MUD_BYTES`` as
UTF-8 is refused as too large (413) by the parser."""
MAX_SIMULATED_FLOWS = 100_000
MAX_PROPOSED_PROFILES = 8
MAX_SIMULATE_BODY = 32 * 1024 * 1024
"""Largest body of ``POST /v1/segment/simulate``: ``MAX_SIMULATED_FLOWS`` flows of about 250 bytes
and ``MAX_PROPOSED_PROFILES`` MUD files."""
_MAX_CONTEXT = 1024  # fleetguard.segment.service._MAX_CONTEXT_ENTRIES
_MAX_ADDRESS_TEXT = 64  # an IPv6 address with a zone is under 64 characters
_MAX_CONTROLLER_ADDRESSES = 64

_Url = Annotated[str, StringConstraints(min_length=1, max_length=MAX_URL)]
_AddressText = Annotated[str, StringConstraints(min_length=1, max_length=_MAX_ADDRESS_TEXT)]
_Addresses = Annotated[list[_AddressText], Field(max_length=_MAX_CONTROLLER_ADDRESSES)]
_Port = Annotated[int, Field(ge=0, le=65535)]
_Octet = Annotated[int, Field(ge=0, le=255)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- profiles --------------------------------------------------------------------------------


class ProfileUpload(_Request):
    """A MUD file (RFC 8520) to store, and its detached CMS signature where the installation
    requires one; a profile of the same MUD URL is replaced."""

    document: str = Field(
        description=f"The MUD file's JSON text, at most {MAX_MUD_BYTES} bytes as UTF-8 (more is a 413)."
    )
    signature: str | None = Field(
        default=None,
        description=f"The detached CMS signature (DER), base64; at most {MAX_SIGNATURE_BYTES} bytes decoded.",
    )


class AceView(BaseModel):
    """One access-control entry, normalised to one direction of the device's traffic.

    `peers` name the remote side as `kind` or `kind:value` (all must match; empty: any address);
    ports are `low-high` ranges (`0-65535`: any)."""

    name: str
    acl: str
    direction: str
    family: str
    protocol: int | None
    peers: list[str]
    remote_ports: list[str]
    device_ports: list[str]
    initiated: str | None
    icmp_type: int | None
    icmp_code: int | None
    ethertype: int | None
    destination_mac: str | None

    @classmethod
    def of(cls, ace: Ace) -> AceView:
        """Return the API view of a parsed ACE."""
        return cls(
            name=ace.name, acl=ace.acl, direction=ace.direction.value, family=ace.family.value,
            protocol=ace.protocol, peers=[_peer(p) for p in ace.peers],
            remote_ports=_ranges(ace.remote_ports), device_ports=_ranges(ace.device_ports),
            initiated=None if ace.initiated is None else ace.initiated.value, icmp_type=ace.icmp_type,
            icmp_code=ace.icmp_code, ethertype=ace.ethertype, destination_mac=ace.destination_mac,
        )  # fmt: skip


class ProfileSummary(BaseModel):
    """A stored MUD profile: where it came from and what it is for."""

    url: str = Field(description="The MUD URL, which devices name (RFC 8520 section 10).")
    digest: str = Field(description="SHA-256 of the MUD file's bytes, hex.")
    systeminfo: str
    mfg_name: str
    model_name: str
    aces: int = Field(description="How many access-control entries it has.")
    source: str = Field(description="`file`, `api` or `learned`.")
    signer: str | None = Field(description="The signer's subject (RFC 4514); null when unsigned.")
    actor: str
    added_at: dt.datetime

    @classmethod
    def of(cls, stored: StoredProfile) -> ProfileSummary:
        """Return the API summary of a stored profile."""
        return cls.model_validate(_summary_fields(stored))


class ProfileView(ProfileSummary):
    """A stored MUD profile with its header fields and every access-control entry."""

    mud_version: int
    last_update: dt.datetime
    cache_validity: int = Field(description="Hours (RFC 8520 section 3.5).")
    is_supported: bool
    firmware_rev: str
    software_rev: str
    documentation: str
    signature_url: str | None
    entries: list[AceView]

    @classmethod
    def of(cls, stored: StoredProfile) -> ProfileView:
        """Return the API view of a stored profile."""
        p = stored.profile
        return cls.model_validate(
            {**_summary_fields(stored), "mud_version": p.mud_version, "last_update": p.last_update,
             "cache_validity": p.cache_validity, "is_supported": p.is_supported,
             "firmware_rev": p.firmware_rev, "software_rev": p.software_rev, "documentation": p.documentation,
             "signature_url": p.signature_url, "entries": [AceView.of(ace) for ace in p.aces]}
        )  # fmt: skip


def _summary_fields(stored: StoredProfile) -> dict[str, object]:
    p = stored.profile
    return {
        "url": p.url, "digest": p.digest, "systeminfo": p.systeminfo, "mfg_name": p.mfg_name,
        "model_name": p.model_name, "aces": len(p.aces), "source": stored.source, "signer": stored.signer,
        "actor": stored.actor, "added_at": stored.added_at,
    }  # fmt: skip


def _peer(peer: Peer) -> str:
    return f"{peer.kind}:{peer.value}" if peer.value else str(peer.kind)


def _ranges(ranges: Sequence[PortRange]) -> list[str]:
    return [f"{r.low}-{r.high}" for r in ranges]


# -- bindings and context --------------------------------------------------------------------


class BindingRequest(_Request):
    """Where a device is on the network: an IPv4 or IPv6 address (or both), and optionally its MAC."""

    ipv4: _AddressText | None = None
    ipv6: _AddressText | None = None
    mac: Annotated[str, StringConstraints(min_length=1, max_length=17)] | None = Field(
        default=None, description="aa:bb:cc:dd:ee:ff; the device is then checked at layer 2 too."
    )


class BindingView(BaseModel):
    """A managed device's addresses; it is enforced from the next apply."""

    device_id: str
    ipv4: str | None
    ipv6: str | None
    mac: str | None

    @classmethod
    def of(cls, binding: Binding) -> BindingView:
        """Return the API view of a binding."""
        return cls(
            device_id=binding.device_id,
            ipv4=None if binding.ipv4 is None else str(binding.ipv4),
            ipv6=None if binding.ipv6 is None else str(binding.ipv6),
            mac=binding.mac,
        )


class ContextView(_Request):
    """What MUD files leave to the local administrator (RFC 8520 sections 8.5-8.7): the local networks,
    the controllers of each class URI (`urn:ietf:params:mud:dns`, `...:ntp`, ...), and each MUD URL's
    own controllers. Peers with no addresses here allow nothing."""

    local_networks: Annotated[list[_AddressText], Field(max_length=_MAX_CONTEXT)] = Field(
        default_factory=list, description="Prefixes such as 192.168.1.0/24."
    )
    controllers: Annotated[dict[_Url, _Addresses], Field(max_length=_MAX_CONTEXT)] = Field(
        default_factory=dict, description="Controller class URI -> addresses (RFC 8520 section 8.6)."
    )
    my_controllers: Annotated[dict[_Url, _Addresses], Field(max_length=_MAX_CONTEXT)] = Field(
        default_factory=dict, description="MUD URL -> addresses of its `my-controller` (section 8.7)."
    )

    @classmethod
    def of(cls, context: FleetContext) -> ContextView:
        """Return the API view of the fleet's MUD context."""
        return cls(
            local_networks=[str(n) for n in context.local_networks],
            controllers=_address_lists(context.controllers),
            my_controllers=_address_lists(context.my_controllers),
        )


def _address_lists(
    by_key: Mapping[str, Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address]],
) -> dict[str, list[str]]:
    return {key: [str(a) for a in addresses] for key, addresses in sorted(by_key.items())}


# -- apply and history -----------------------------------------------------------------------


class ApplyRequest(_Request):
    """Whether to only compile and check the ruleset (`nft -c`), recording nothing."""

    dry_run: bool = False


class ApplyView(BaseModel):
    """What an apply (or a dry run, `generation` 0) did."""

    generation: int = Field(description="The generation now in force; 0 for a dry run.")
    digest: str = Field(description="SHA-256 of the nft script, hex.")
    dry_run: bool
    devices: int = Field(description="Managed devices (those with a binding).")
    profiles: int = Field(description="MUD profiles compiled (one class each).")
    elements: dict[str, int] = Field(description="Elements of each non-empty nftables set.")
    unprofiled: list[str] = Field(description="Managed devices without a MUD profile: denied everything.")
    unresolved: dict[str, list[str]] = Field(description="MUD URL -> peers that allowed nothing, and why.")
    quarantined: int = Field(description="Addresses held in quarantine.")
    seconds: float

    @classmethod
    def of(cls, result: ApplyResult) -> ApplyView:
        """Return the API view of an apply result."""
        return cls(
            generation=result.generation, digest=result.digest, dry_run=result.dry_run,
            devices=result.devices, profiles=result.profiles, elements=dict(sorted(result.elements.items())),
            unprofiled=list(result.unprofiled),
            unresolved={url: list(why) for url, why in sorted(result.unresolved.items())},
            quarantined=result.quarantined, seconds=result.seconds,
        )  # fmt: skip


class HistoryEntry(BaseModel):
    """One applied generation of the ruleset."""

    generation: int
    digest: str
    actor: str
    applied_at: dt.datetime
    devices: int
    profiles: int
    elements: dict[str, int]
    unprofiled: int
    quarantined: int

    @classmethod
    def of(
        cls, generation: int, digest: str, summary: Mapping[str, object], actor: str, applied_at: dt.datetime
    ) -> HistoryEntry:
        """Return the API view of one row of ``SegmentationService.history``."""
        return cls.model_validate(
            {**summary, "generation": generation, "digest": digest, "actor": actor, "applied_at": applied_at}
        )


# -- simulation ------------------------------------------------------------------------------


class FlowRecord(_Request):
    """One observed flow, oriented as its first packet went (the fields of fleetguard's JSON Lines)."""

    start: AwareDatetime
    source: IPvAnyAddress
    destination: IPvAnyAddress
    protocol: _Octet = Field(description="IP protocol number: 6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6.")
    source_port: _Port = 0
    destination_port: _Port = 0
    icmp_type: _Octet | None = None
    icmp_code: _Octet | None = None
    packets: Annotated[int, Field(ge=0, le=2**62)] = 1
    octets: Annotated[int, Field(ge=0, le=2**62)] = 0
    established: bool = False

    def flow(self) -> Flow:
        """Return the core value."""
        return Flow(
            start=self.start, source=str(self.source), destination=str(self.destination),
            protocol=self.protocol, source_port=self.source_port, destination_port=self.destination_port,
            icmp_type=self.icmp_type, icmp_code=self.icmp_code, packets=self.packets, octets=self.octets,
            established=self.established,
        )  # fmt: skip

    @classmethod
    def of(cls, flow: Flow) -> FlowRecord:
        """Return the API view of a flow."""
        return cls.model_validate(
            {"start": flow.start, "source": flow.source, "destination": flow.destination,
             "protocol": flow.protocol, "source_port": flow.source_port,
             "destination_port": flow.destination_port, "icmp_type": flow.icmp_type,
             "icmp_code": flow.icmp_code, "packets": flow.packets, "octets": flow.octets,
             "established": flow.established}
        )  # fmt: skip


class SimulationRequest(_Request):
    """Recorded flows to judge, and MUD files to judge them by in place of the stored profiles of the
    same MUD URL (none: the stored profiles). Nothing is stored or applied."""

    flows: Annotated[list[FlowRecord], Field(max_length=MAX_SIMULATED_FLOWS)]
    profiles: Annotated[list[str], Field(max_length=MAX_PROPOSED_PROFILES)] = Field(
        default_factory=list, description="Proposed MUD files' JSON text."
    )


class BlockedFlow(BaseModel):
    """A flow the policy would not let through, and why."""

    flow: FlowRecord
    verdict: Verdict
    reason: str

    @classmethod
    def of(cls, verdict: FlowVerdict) -> BlockedFlow:
        """Return the API view of a flow's verdict."""
        return cls(flow=FlowRecord.of(verdict.flow), verdict=verdict.verdict, reason=verdict.reason)


class DeviceSimulation(BaseModel):
    """A managed device's flows under the policy: how many pass, and those that would be blocked."""

    device_id: str
    allowed: int
    blocked: list[BlockedFlow]

    @classmethod
    def of(cls, report: DeviceReport) -> DeviceSimulation:
        """Return the API view of a device report."""
        return cls(
            device_id=report.device_id,
            allowed=report.allowed,
            blocked=[BlockedFlow.of(v) for v in report.blocked],
        )


class SimulationView(BaseModel):
    """What the policy would do to the flows: per managed device, the flows it would block."""

    flows: int = Field(description="Flows judged.")
    unmanaged: int = Field(description="Flows with no managed device at either end (not ours).")
    blocked: int = Field(description="Blocked flows, counted once per device they concern.")
    proposed: list[str] = Field(description="MUD URLs of the proposed profiles used.")
    devices: list[DeviceSimulation]

    @classmethod
    def of(cls, simulation: Simulation, proposed: Sequence[MudProfile]) -> SimulationView:
        """Return the API view of a simulation."""
        return cls(
            flows=simulation.flows,
            unmanaged=simulation.unmanaged,
            blocked=simulation.blocked,
            proposed=[p.url for p in proposed],
            devices=[DeviceSimulation.of(r) for _, r in sorted(simulation.devices.items())],
        )


class ViolationView(BaseModel):
    """A flow a managed device tried that its policy does not allow, as the gateway recorded it."""

    device_id: str
    source: str
    protocol: int
    destination: str
    destination_port: int
    expires_s: int

    @classmethod
    def of(cls, device_id: str, violation: Violation) -> ViolationView:
        """Return the API view of a violation."""
        return cls(
            device_id=device_id, source=str(violation.source), protocol=violation.protocol,
            destination=str(violation.destination), destination_port=violation.destination_port,
            expires_s=violation.expires_s,
        )  # fmt: skip
