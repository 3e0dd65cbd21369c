"""Learn a MUD profile from what a device did during a learning period, as MUDgee does.

Theory of operation. :func:`learn_profile` takes the observed traffic (flows, and where it came
from packets, the DNS answers and MAC/IP pairs seen) and writes an RFC 8520 MUD file allowing
exactly the device's flows, abstracted the way a manufacturer would write them:

1. The device's addresses are the one given and every address its MAC was seen sending from.
2. Each flow with the device at one end is turned around so that the remote side is known. Its
   initiator is the flow's direction (flows are oriented by who opened them, see
   :mod:`fleetguard.segment.flows`). The initiator's port is ephemeral and left out; the responder's
   port (the service) is kept.
3. The remote address becomes, in this order:
   the DNS controller (``urn:ietf:params:mud:dns``, RFC 8520 section 4.5) for udp/tcp 53 to the
   gateway; the NTP controller (``urn:ietf:params:mud:ntp``) for udp 123 to the gateway; the name
   the device looked it up by (``ietf-acldns:dst-dnsname``/``src-dnsname``, RFC 8520 section 8.1;
   when several names gave the address, the last answer wins); ``local-networks`` (section 4.4) when
   it is inside ``local_networks``; else the address itself as a /32 or /128 network.
4. Every flow gives a from-device and a to-device ACE (ACLs are stateless, both directions must be
   allowed). TCP ACEs carry ``ietf-mud:direction-initiated`` (RFC 8520 section 4.8): who sent the
   SYN. An ICMP request gives its reply type in the other direction; other ICMP types only the
   direction they were seen in.
5. Identical ACEs are merged, ACEs are sorted (protocol, peer, ports) and named ``from-ipv4-0``,
   ``to-ipv6-3``, ... in four ACLs (``from-ipv4``, ``to-ipv4``, ``from-ipv6``, ``to-ipv6``); the
   document is canonical JSON (sorted keys, two-space indent), so the same traffic gives the same
   bytes.

A device that was not seen, or that had no flows, is an error: an empty profile would deny
everything and look like success. More than ``max_aces`` ACEs is an error too: the learning period
was too noisy to be a profile (a scan, a P2P protocol), and a human should look.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import assert_never
from urllib.parse import urlsplit

from fleetguard.segment.errors import CaptureInvalid, MudInvalid, MudTooLarge
from fleetguard.segment.flows import ObservedTraffic
from fleetguard.segment.model import ANY_PORT, Ace, Direction, Family, Flow, Peer, PeerKind, PortRange

__all__ = [
    "DEFAULT_MAX_ACES",
    "DeviceMatch",
    "LearnedProfile",
    "LearningSummary",
    "learn_profile",
]

DEFAULT_MAX_ACES = 512  # MUDgee's profiles of 28 devices have at most 148 (UNSW data set)
DEFAULT_CACHE_VALIDITY = 48  # hours; RFC 8520 section 3.5 YANG default
_MAX_SYSTEMINFO = 60  # RFC 8520 section 3.7
_MAX_URL = 2048

_TCP, _UDP, _ICMP, _ICMPV6 = 6, 17, 1, 58
_DNS_PORT, _NTP_PORT = 53, 123
_DNS_CONTROLLER, _NTP_CONTROLLER = "urn:ietf:params:mud:dns", "urn:ietf:params:mud:ntp"
# RFC 792, RFC 950, RFC 4443 section 4: request type -> reply type.
_ICMP_REPLY = {_ICMP: {8: 0, 13: 14, 15: 16, 17: 18}, _ICMPV6: {128: 129}}
# RFC 6991 inet:domain-name labels as the MUD parser accepts them (underscores allowed).
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?", re.ASCII)
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}", re.ASCII)
_PEER_ORDER = {kind: rank for rank, kind in enumerate(PeerKind)}

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class DeviceMatch:
    """The device to learn: an IP address, a MAC address (``aa:bb:..``), or both.

    Raises ``ValueError`` when neither is given or one is malformed; the address is normalised.
    """

    address: str | None = None
    mac: str | None = None

    def __post_init__(self) -> None:
        if self.address is None and self.mac is None:
            raise ValueError("a device is matched by an IP address, a MAC address or both")
        if self.address is not None:
            object.__setattr__(self, "address", str(ipaddress.ip_address(self.address)))
        if self.mac is not None:
            mac = self.mac.lower().replace("-", ":")
            if not _MAC.fullmatch(mac):
                raise ValueError(f"{self.mac!r} is not a MAC address like aa:bb:cc:dd:ee:ff")
            object.__setattr__(self, "mac", mac)


@dataclass(frozen=True, slots=True)
class LearningSummary:
    """What learning saw and made: flows seen and used, the device's addresses, the DNS names in
    the profile (sorted), the DNS answers the device received, and the ACEs per direction."""

    flows_seen: int
    flows_used: int
    device_addresses: tuple[str, ...]
    names: tuple[str, ...]
    answers_seen: int
    aces_from_device: int
    aces_to_device: int


@dataclass(frozen=True, slots=True)
class LearnedProfile:
    """A learned MUD file (canonical JSON bytes, parseable by ``parse_mud``) and its summary."""

    document: bytes
    summary: LearningSummary


@dataclass(frozen=True, slots=True)
class _Context:
    """What classifies a remote address."""

    gateway: str | None
    local_networks: tuple[IpNetwork, ...]
    names: dict[str, str]


def learn_profile(
    traffic: ObservedTraffic | Iterable[Flow],
    device: DeviceMatch,
    *,
    mud_url: str,
    local_networks: Sequence[IpNetwork],
    gateway: IpAddress | None,
    systeminfo: str,
    now: dt.datetime,
    cache_validity: int = DEFAULT_CACHE_VALIDITY,
    max_aces: int = DEFAULT_MAX_ACES,
) -> LearnedProfile:
    """Return a MUD file that allows what ``device`` did in ``traffic`` (see the module docstring).

    ``now`` (timezone-aware) becomes ``last-update``. Raises ``MudInvalid`` for a MUD URL that is not
    https, a ``systeminfo`` over 60 characters or a ``cache_validity`` outside 1..168;
    ``CaptureInvalid`` when the device was not seen or had no flows; ``MudTooLarge`` when the
    profile would have more than ``max_aces`` ACEs.
    """
    _require_header_fields(mud_url, systeminfo, now, cache_validity)
    observed = traffic if isinstance(traffic, ObservedTraffic) else ObservedTraffic.of_flows(traffic)
    addresses = _device_addresses(observed, device)
    own_answers = [r for r in observed.resolutions if r.client in addresses]
    names = {r.address: r.name for r in own_answers if _is_host_name(r.name)}  # in time order: last wins
    context = _Context(str(gateway) if gateway else None, tuple(local_networks), names)
    aces: set[Ace] = set()
    used = 0
    for flow in observed.flows:
        found = _aces_of(flow, addresses, context)
        used += bool(found)
        aces.update(found)
    if not used:
        raise CaptureInvalid(
            f"the device ({', '.join(sorted(addresses))}) has no flows in the traffic",
            hint="learn from a capture taken while the device was working",
        )
    if len(aces) > max_aces:
        raise MudTooLarge(
            f"the learned profile would have {len(aces)} ACEs, over the limit of {max_aces}",
            hint="shorten the learning period, or give the device its manufacturer's MUD profile",
        )
    named = _named(aces)
    document = _document(named, mud_url, systeminfo, now, cache_validity)
    summary = LearningSummary(
        flows_seen=len(observed.flows),
        flows_used=used,
        device_addresses=tuple(sorted(addresses)),
        names=tuple(sorted({p.value for a in named for p in a.peers if p.kind is PeerKind.DNS_NAME})),
        answers_seen=len(own_answers),
        aces_from_device=sum(a.direction is Direction.FROM_DEVICE for a in named),
        aces_to_device=sum(a.direction is Direction.TO_DEVICE for a in named),
    )
    return LearnedProfile(document, summary)


def _require_header_fields(mud_url: str, systeminfo: str, now: dt.datetime, cache_validity: int) -> None:
    base = "/ietf-mud:mud"
    parts = urlsplit(mud_url)
    if parts.scheme != "https" or not parts.hostname or len(mud_url) > _MAX_URL:
        raise MudInvalid(f"{mud_url!r} is not an https URL (RFC 8520 section 6)", path=f"{base}/mud-url")
    if not 0 < len(systeminfo) <= _MAX_SYSTEMINFO or not systeminfo.isprintable():
        raise MudInvalid(
            f"systeminfo must be 1..{_MAX_SYSTEMINFO} printable characters (RFC 8520 section 3.7)",
            path=f"{base}/systeminfo",
        )
    if not 1 <= cache_validity <= 168:
        raise MudInvalid(
            "cache-validity is 1..168 hours (RFC 8520 section 3.5)", path=f"{base}/cache-validity"
        )
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")


def _device_addresses(traffic: ObservedTraffic, device: DeviceMatch) -> frozenset[str]:
    addresses = {device.address} if device.address else set()
    addresses.update(host.address for host in traffic.hosts if host.mac == device.mac)
    # DHCP's 0.0.0.0 and IPv6's :: are every booting host's, not this device's.
    found = frozenset(a for a in addresses if not ipaddress.ip_address(a).is_unspecified)
    if not found:
        raise CaptureInvalid(
            f"device with MAC {device.mac} was not seen sending from an IP address",
            hint="check the MAC address, or give the device's IP address",
        )
    return found


def _is_host_name(name: str) -> bool:
    return 0 < len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split("."))


def _aces_of(flow: Flow, addresses: frozenset[str], context: _Context) -> list[Ace]:
    """The from-device and to-device ACEs one flow needs (empty when the device is not in it)."""
    if flow.source in addresses and flow.destination not in addresses:
        initiator, remote, service = Direction.FROM_DEVICE, flow.destination, flow.destination_port
    elif flow.destination in addresses and flow.source not in addresses:
        initiator, remote, service = Direction.TO_DEVICE, flow.source, flow.destination_port
    else:
        return []
    family = Family.IPV6 if ":" in remote else Family.IPV4
    peer = _peer(remote, flow.protocol, service if initiator is Direction.FROM_DEVICE else None, context)
    base = Ace(name="", acl="", direction=initiator, family=family, protocol=flow.protocol, peers=(peer,))
    other = Direction.TO_DEVICE if initiator is Direction.FROM_DEVICE else Direction.FROM_DEVICE
    if flow.protocol in (_TCP, _UDP):
        ports = (PortRange(service, service),)
        base = dataclasses.replace(
            base,
            remote_ports=ports if initiator is Direction.FROM_DEVICE else ANY_PORT,
            device_ports=ports if initiator is Direction.TO_DEVICE else ANY_PORT,
            initiated=initiator if flow.protocol == _TCP else None,
        )
        return [base, dataclasses.replace(base, direction=other)]
    if flow.icmp_type is not None:
        base = dataclasses.replace(base, icmp_type=flow.icmp_type, icmp_code=flow.icmp_code)
        reply = _ICMP_REPLY.get(flow.protocol, {}).get(flow.icmp_type)
        if reply is None:
            return [base]
        return [base, dataclasses.replace(base, direction=other, icmp_type=reply)]
    return [base, dataclasses.replace(base, direction=other)]


def _peer(remote: str, protocol: int, service: int | None, context: _Context) -> Peer:
    """Name the remote side (step 3 of the module docstring); ``service`` only when the device opened."""
    if remote == context.gateway and service is not None:
        if service == _DNS_PORT and protocol in (_TCP, _UDP):
            return Peer(PeerKind.CONTROLLER, _DNS_CONTROLLER)
        if service == _NTP_PORT and protocol == _UDP:
            return Peer(PeerKind.CONTROLLER, _NTP_CONTROLLER)
    name = context.names.get(remote)
    if name is not None:
        return Peer(PeerKind.DNS_NAME, name)
    address = ipaddress.ip_address(remote)
    if any(address in network for network in context.local_networks):
        return Peer(PeerKind.LOCAL_NETWORKS)
    return Peer(PeerKind.NETWORK, str(ipaddress.ip_network(address)))


def _sort_key(ace: Ace) -> tuple[object, ...]:
    peers = tuple((_PEER_ORDER[p.kind], p.value) for p in ace.peers)
    ports = tuple((r.low, r.high) for r in (*ace.remote_ports, *ace.device_ports))
    return (
        ace.protocol if ace.protocol is not None else -1,
        peers,
        ports,
        str(ace.initiated or ""),
        -1 if ace.icmp_type is None else ace.icmp_type,
        -1 if ace.icmp_code is None else ace.icmp_code,
    )


def _acl_name(direction: Direction, family: Family) -> str:
    return f"{'from' if direction is Direction.FROM_DEVICE else 'to'}-{family}"


def _named(aces: set[Ace]) -> tuple[Ace, ...]:
    """Sort the merged ACEs and name them within their ACL (``from-ipv4-0``, ...)."""
    named: list[Ace] = []
    for direction in Direction:
        for family in (Family.IPV4, Family.IPV6):
            acl = _acl_name(direction, family)
            group = sorted(
                (a for a in aces if a.direction is direction and a.family is family), key=_sort_key
            )
            named += [dataclasses.replace(a, name=f"{acl}-{i}", acl=acl) for i, a in enumerate(group)]
    return tuple(named)


# -- the MUD document (RFC 8520 section 2.1 and the example of section 9) --------------------------


def _document(
    aces: tuple[Ace, ...], mud_url: str, systeminfo: str, now: dt.datetime, cache_validity: int
) -> bytes:
    acls: dict[str, tuple[Ace, list[dict[str, object]]]] = {}  # name -> (an ACE of it, entries)
    for ace in aces:
        acls.setdefault(ace.acl, (ace, []))[1].append(_ace_json(ace))

    def policy(direction: Direction) -> dict[str, object]:
        names = [name for name, (ace, _) in acls.items() if ace.direction is direction]
        return {"access-lists": {"access-list": [{"name": name} for name in names]}}

    document = {
        "ietf-mud:mud": {
            "mud-version": 1,
            "mud-url": mud_url,
            "last-update": now.astimezone(dt.UTC).isoformat(timespec="seconds"),
            "cache-validity": cache_validity,
            "is-supported": True,
            "systeminfo": systeminfo,
            "from-device-policy": policy(Direction.FROM_DEVICE),
            "to-device-policy": policy(Direction.TO_DEVICE),
        },
        "ietf-access-control-list:acls": {
            "acl": [
                {"name": name, "type": f"{ace.family}-acl-type", "aces": {"ace": entries}}
                for name, (ace, entries) in acls.items()
            ]
        },
    }
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"


def _ace_json(ace: Ace) -> dict[str, object]:
    from_device = ace.direction is Direction.FROM_DEVICE
    remote = "destination" if from_device else "source"
    ip: dict[str, object] = {}
    matches: dict[str, object] = {}
    if ace.protocol is not None:
        ip["protocol"] = ace.protocol
    for peer in ace.peers:
        match peer.kind:
            case PeerKind.NETWORK:
                ip[f"{remote}-{ace.family}-network"] = peer.value
            case PeerKind.DNS_NAME:
                ip[f"ietf-acldns:{'dst' if from_device else 'src'}-dnsname"] = peer.value
            case PeerKind.CONTROLLER:
                matches["ietf-mud:mud"] = {"controller": peer.value}
            case PeerKind.LOCAL_NETWORKS:
                matches["ietf-mud:mud"] = {"local-networks": [None]}
            case PeerKind.MANUFACTURER | PeerKind.SAME_MANUFACTURER | PeerKind.MODEL | PeerKind.MY_CONTROLLER:
                raise AssertionError(f"learning does not make {peer.kind} peers")
            case _:
                assert_never(peer.kind)
    matches[str(ace.family)] = ip
    if ace.protocol in (_TCP, _UDP):
        matches["tcp" if ace.protocol == _TCP else "udp"] = _ports_json(ace, remote)
    elif ace.icmp_type is not None:
        icmp = {"type": ace.icmp_type} | ({} if ace.icmp_code is None else {"code": ace.icmp_code})
        matches["icmp"] = icmp
    return {"name": ace.name, "matches": matches, "actions": {"forwarding": "accept"}}


def _ports_json(ace: Ace, remote: str) -> dict[str, object]:
    device = "source" if remote == "destination" else "destination"
    container: dict[str, object] = {}
    for side, ranges in ((remote, ace.remote_ports), (device, ace.device_ports)):
        if ranges != ANY_PORT:
            (only,) = ranges  # learning keeps one port per side
            container[f"{side}-port"] = {"operator": "eq", "port": only.low}
    if ace.initiated is not None:
        container["ietf-mud:direction-initiated"] = str(ace.initiated)
    return container
