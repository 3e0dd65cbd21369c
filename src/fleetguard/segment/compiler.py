"""Compile the fleet's MUD profiles into the elements of a few large nftables sets.

Theory of operation. Every distinct MUD URL in the fleet is a *class* with a small integer id.
Devices join their class through one map (address -> class); what a class may do is a handful of
concatenated interval sets keyed by ``class . protocol . remote network . ports``. A packet from a
managed device looks up its class once and then the allow set once, so the cost of a decision and
of a quarantine does not grow with the number of devices, and 50,000 devices of 40 models are
50,000 map elements plus the models' rules, not 50,000 chains.

Enforcement is stateful, as a gateway's is: the ``from-device`` ACEs decide which connections the
device may open, the ``to-device`` ACEs which connections others may open to it, and replies ride
on connection tracking. So a TCP ACE whose ``direction-initiated`` (RFC 8520 section 4.2) names
the other side allows no new connection in its own direction; its flows are the replies of
connections the other ACL allows. A flow between two managed devices must be allowed by both the
sender's ``from-device`` and the receiver's ``to-device`` policy.

Abstract peers are resolved here against a :class:`FleetContext` (RFC 8520 section 4):
``manufacturer``/``same-manufacturer``/``model`` become the addresses of the fleet's devices whose
MUD URL has that authority or is that URL; ``local-networks`` the configured prefixes; ``controller``
and ``my-controller`` the configured controllers (``urn:ietf:params:mud:dns``/``ntp`` included);
DNS names the addresses the resolver last returned. An ACE's peers are intersected. A name with
no addresses, a controller nobody configured or an empty intersection allows nothing and is
reported in :attr:`CompiledFleet.unresolved`; it never widens to "any".
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fleetguard.segment.model import Ace, Direction, Family, MudProfile, Peer, PeerKind, PortRange

__all__ = [
    "ANY_PROTOCOL",
    "ClassRules",
    "CompiledFleet",
    "DeviceBinding",
    "FleetContext",
    "IcmpElement",
    "IpAddress",
    "IpNetwork",
    "PortElement",
    "compile_fleet",
    "compile_profile",
    "paused_gc",
    "profile_names",
]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ANY_PROTOCOL = (0, 255)
_ANY4 = ipaddress.IPv4Network("0.0.0.0/0")
_ANY6 = ipaddress.IPv6Network("::/0")
_ICMP = {Family.IPV4: 1, Family.IPV6: 58}
# Classes are nftables marks; 0 is "no class" (a managed device whose profile is missing).
_NO_CLASS = 0


@dataclass(frozen=True, slots=True)
class DeviceBinding:
    """Where a managed device is on the network, and the MUD URL its policy comes from."""

    device_id: str
    mud_url: str | None
    ipv4: ipaddress.IPv4Address | None = None
    ipv6: ipaddress.IPv6Address | None = None
    mac: str | None = None


@dataclass(frozen=True, slots=True)
class FleetContext:
    """What a MUD file leaves to the local administrator (RFC 8520 sections 8.5-8.7)."""

    local_networks: tuple[IpNetwork, ...] = ()
    controllers: Mapping[str, tuple[IpAddress, ...]] = field(default_factory=dict)
    my_controllers: Mapping[str, tuple[IpAddress, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, order=True)
class PortElement:
    """One element of an allow set: ``class . protocol . remote . remote ports . device ports``."""

    klass: int
    protocol: tuple[int, int]
    remote: IpNetwork
    remote_ports: PortRange
    device_ports: PortRange


@dataclass(frozen=True, slots=True, order=True)
class IcmpElement:
    """One element of an ICMP allow set: ``class . remote . type range . code range``."""

    klass: int
    remote: IpNetwork
    types: tuple[int, int]
    codes: tuple[int, int]


@dataclass(frozen=True, slots=True)
class ClassRules:
    """What one class (MUD URL) may do, by family and direction, as set elements."""

    ports: Mapping[tuple[Family, Direction], frozenset[PortElement]]
    icmp: Mapping[tuple[Family, Direction], frozenset[IcmpElement]]
    ethertypes: frozenset[tuple[int, str | None]]  # from-device (ethertype, destination MAC)
    unresolved: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CompiledFleet:
    """The whole fleet as set elements; :mod:`fleetguard.segment.nftables` renders it."""

    classes: Mapping[str, int]  # MUD URL -> class id
    members4: Mapping[ipaddress.IPv4Address, int]
    members6: Mapping[ipaddress.IPv6Address, int]
    macs: Mapping[str, int]
    rules: Mapping[int, ClassRules]
    devices: Mapping[str, DeviceBinding]
    unprofiled: tuple[str, ...]  # managed devices whose MUD profile is unknown: they get nothing
    unresolved: Mapping[str, tuple[str, ...]]  # MUD URL -> what allowed nothing, and why

    def class_of(self, device_id: str) -> int:
        """The class id of a managed device (0: no profile, so nothing is allowed)."""
        binding = self.devices[device_id]
        return self.classes.get(binding.mud_url or "", _NO_CLASS)


def profile_names(profiles: Iterable[MudProfile]) -> frozenset[str]:
    """Every DNS name the profiles refer to; the resolver keeps these current."""
    return frozenset(
        peer.value
        for profile in profiles
        for ace in profile.aces
        for peer in ace.peers
        if peer.kind is PeerKind.DNS_NAME
    )


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector for the duration (re-enabled as it was).

    Compiling 50,000 devices allocates about a million small acyclic objects (elements, networks,
    tuples); the cyclic collections that triggers doubled the time. Reference counting still frees
    them all.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def compile_fleet(
    profiles: Mapping[str, MudProfile],
    devices: Sequence[DeviceBinding],
    context: FleetContext,
    dns: Mapping[str, tuple[IpAddress, ...]],
) -> CompiledFleet:
    """Compile every device's profile; pure, so the same inputs give the same elements.

    ``profiles`` maps MUD URL to profile; ``dns`` maps each name of :func:`profile_names` to the
    addresses it resolves to now. A device whose MUD URL has no profile is managed and denied.
    """
    with paused_gc():
        return _compile_fleet(profiles, devices, context, dns)


def _compile_fleet(
    profiles: Mapping[str, MudProfile],
    devices: Sequence[DeviceBinding],
    context: FleetContext,
    dns: Mapping[str, tuple[IpAddress, ...]],
) -> CompiledFleet:
    classes = {url: number for number, url in enumerate(sorted(profiles), start=1)}
    peers = _FleetPeers.from_devices(devices, context, dns)
    rules = {classes[url]: compile_profile(profile, classes[url], peers) for url, profile in profiles.items()}
    members4: dict[ipaddress.IPv4Address, int] = {}
    members6: dict[ipaddress.IPv6Address, int] = {}
    macs: dict[str, int] = {}
    unprofiled: list[str] = []
    for device in devices:
        klass = classes.get(device.mud_url or "", _NO_CLASS)
        if klass == _NO_CLASS:
            unprofiled.append(device.device_id)
        if device.ipv4 is not None:
            members4[device.ipv4] = klass
        if device.ipv6 is not None:
            members6[device.ipv6] = klass
        if device.mac is not None:
            macs[device.mac] = klass
    unresolved = {
        url: rules[number].unresolved for url, number in classes.items() if rules[number].unresolved
    }
    return CompiledFleet(
        classes=classes,
        members4=members4,
        members6=members6,
        macs=macs,
        rules=rules,
        devices={device.device_id: device for device in devices},
        unprofiled=tuple(sorted(unprofiled)),
        unresolved=unresolved,
    )


def compile_profile(profile: MudProfile, klass: int, peers: _FleetPeers) -> ClassRules:
    """The set elements of one profile as class ``klass``."""
    ports: dict[tuple[Family, Direction], set[PortElement]] = {}
    icmp: dict[tuple[Family, Direction], set[IcmpElement]] = {}
    ethertypes: set[tuple[int, str | None]] = set()
    unresolved: list[str] = []
    for ace in profile.aces:
        if ace.family is Family.ETH:
            if ace.direction is Direction.FROM_DEVICE and ace.ethertype is not None:
                ethertypes.add((ace.ethertype, ace.destination_mac))
            continue
        if _replies_only(ace):
            continue
        if ace.destination_mac is not None:
            # MUDgee writes DHCP's broadcast (ff:ff:ff:ff:ff:ff) into IP ACEs; a router forwards no
            # link-layer broadcast, and a rule keyed by another MAC cannot be held at layer 3:
            # either way the ACE allows nothing here (never: everything).
            unresolved.append(
                f"{ace.acl}/{ace.name}: matches destination MAC {ace.destination_mac}, not routed"
            )
            continue
        remotes, why = peers.networks(ace, profile)
        if not remotes:
            unresolved.append(f"{ace.acl}/{ace.name}: {why}")
            continue
        key = (ace.family, ace.direction)
        # ICMP is checked in sets of its own (type and code, no ports); an ACE for any protocol
        # allows ICMP too.
        if ace.protocol is None or ace.protocol == _ICMP[ace.family]:
            icmp.setdefault(key, set()).update(_icmp_elements(ace, klass, remotes))
        if ace.protocol != _ICMP[ace.family]:
            ports.setdefault(key, set()).update(_port_elements(ace, klass, remotes))
    return ClassRules(
        ports={key: _disjoint_ports(_without_subsumed_ports(value)) for key, value in ports.items()},
        icmp={key: _disjoint_icmp(_without_subsumed_icmp(value)) for key, value in icmp.items()},
        ethertypes=frozenset(ethertypes),
        unresolved=tuple(unresolved),
    )


def _replies_only(ace: Ace) -> bool:
    # RFC 8520 section 4.2: direction-initiated names who opens the TCP connection; an ACE in the
    # other direction's ACL describes that connection's replies, which connection tracking passes.
    return ace.initiated is not None and ace.initiated is not ace.direction


def _port_elements(ace: Ace, klass: int, remotes: Sequence[IpNetwork]) -> Iterable[PortElement]:
    protocol = ANY_PROTOCOL if ace.protocol is None else (ace.protocol, ace.protocol)
    for remote in remotes:
        for remote_ports in ace.remote_ports:
            for device_ports in ace.device_ports:
                yield PortElement(klass, protocol, remote, remote_ports, device_ports)


def _icmp_elements(ace: Ace, klass: int, remotes: Sequence[IpNetwork]) -> Iterable[IcmpElement]:
    types = (0, 255) if ace.icmp_type is None else (ace.icmp_type, ace.icmp_type)
    codes = (0, 255) if ace.icmp_code is None else (ace.icmp_code, ace.icmp_code)
    for remote in remotes:
        yield IcmpElement(klass, remote, types, codes)


@dataclass(frozen=True, slots=True)
class _FleetPeers:
    """Resolves an ACE's peers to networks of its family (see the module docstring)."""

    by_authority: Mapping[str, tuple[IpAddress, ...]]
    by_url: Mapping[str, tuple[IpAddress, ...]]
    context: FleetContext
    dns: Mapping[str, tuple[IpAddress, ...]]
    cache: dict[tuple[PeerKind, str, str], list[IpNetwork]] = field(default_factory=dict)

    @classmethod
    def from_devices(
        cls, devices: Sequence[DeviceBinding], context: FleetContext, dns: Mapping[str, tuple[IpAddress, ...]]
    ) -> _FleetPeers:
        by_authority: dict[str, list[IpAddress]] = {}
        by_url: dict[str, list[IpAddress]] = {}
        for device in devices:
            if device.mud_url:
                addresses = by_url.setdefault(device.mud_url, [])
                if device.ipv4 is not None:
                    addresses.append(device.ipv4)
                if device.ipv6 is not None:
                    addresses.append(device.ipv6)
        for url, addresses in by_url.items():
            by_authority.setdefault((urlsplit(url).hostname or "").lower(), []).extend(addresses)
        return cls(
            by_authority={key: tuple(value) for key, value in by_authority.items()},
            by_url={key: tuple(value) for key, value in by_url.items()},
            context=context,
            dns=dns,
        )

    def networks(self, ace: Ace, profile: MudProfile) -> tuple[list[IpNetwork], str]:
        """The remote networks ``ace`` allows, and why there are none when the list is empty."""
        result: list[IpNetwork] = [_ANY4 if ace.family is Family.IPV4 else _ANY6]
        for peer in ace.peers:
            allowed = [net for net in self._peer(peer, profile) if _family(net) is ace.family]
            if not allowed:
                return [], _no_addresses(peer)
            result = allowed if result in ([_ANY4], [_ANY6]) else _intersect(result, allowed)
            if not result:
                return [], "its address constraints do not overlap"
        return result, ""

    def _peer(self, peer: Peer, profile: MudProfile) -> Sequence[IpNetwork]:
        key = (
            peer.kind,
            profile.authority if peer.kind is PeerKind.SAME_MANUFACTURER else peer.value,
            profile.url,
        )
        cached = self.cache.get(key)
        if cached is None:
            cached = self.cache[key] = self._resolve(peer, profile)
        return cached

    def _resolve(self, peer: Peer, profile: MudProfile) -> list[IpNetwork]:  # noqa: PLR0911 - one per kind
        match peer.kind:
            case PeerKind.NETWORK:
                return [ipaddress.ip_network(peer.value)]
            case PeerKind.DNS_NAME:
                return _hosts(self.dns.get(peer.value, ()))
            case PeerKind.MANUFACTURER:
                return _hosts(self.by_authority.get(peer.value, ()))
            case PeerKind.SAME_MANUFACTURER:
                return _hosts(self.by_authority.get(profile.authority, ()))
            case PeerKind.MODEL:
                return _hosts(self.by_url.get(peer.value, ()))
            case PeerKind.LOCAL_NETWORKS:
                return list(self.context.local_networks)
            case PeerKind.CONTROLLER:
                return _hosts(self.context.controllers.get(peer.value, ()))
            case PeerKind.MY_CONTROLLER:
                return _hosts(self.context.my_controllers.get(profile.url, ()))


def _without_subsumed_ports(elements: set[PortElement]) -> frozenset[PortElement]:
    # nftables refuses an interval element that lies wholly inside another ("File exists"), and
    # it would add nothing: keep only elements no other element covers.
    groups: dict[_PortKey, list[IpNetwork]] = {}
    for e in elements:
        groups.setdefault((e.klass, e.protocol, e.remote_ports, e.device_ports), []).append(e.remote)
    kept = {key: _collapse(networks) for key, networks in groups.items()}
    out: set[PortElement] = set()
    for key, networks in kept.items():
        wider = [
            kept[other] for other in kept if other != key and other[0] == key[0] and _covers_ports(other, key)
        ]
        for network in networks:
            if not any(_within(network, nets) for nets in wider):
                out.add(PortElement(key[0], key[1], network, key[2], key[3]))
    return frozenset(out)


_PortKey = tuple[int, tuple[int, int], PortRange, PortRange]


def _covers_ports(wide: _PortKey, narrow: _PortKey) -> bool:
    return (
        wide[1][0] <= narrow[1][0] and narrow[1][1] <= wide[1][1]
        and wide[2].low <= narrow[2].low and narrow[2].high <= wide[2].high
        and wide[3].low <= narrow[3].low and narrow[3].high <= wide[3].high
    )  # fmt: skip


def _without_subsumed_icmp(elements: set[IcmpElement]) -> frozenset[IcmpElement]:
    groups: dict[tuple[int, tuple[int, int], tuple[int, int]], list[IpNetwork]] = {}
    for e in elements:
        groups.setdefault((e.klass, e.types, e.codes), []).append(e.remote)
    kept = {key: _collapse(networks) for key, networks in groups.items()}
    out: set[IcmpElement] = set()
    for key, networks in kept.items():
        wider = [
            kept[other]
            for other in kept
            if other != key and other[0] == key[0]
            and _range_in(key[1], other[1]) and _range_in(key[2], other[2])
        ]  # fmt: skip
        for network in networks:
            if not any(_within(network, nets) for nets in wider):
                out.add(IcmpElement(key[0], network, key[1], key[2]))
    return frozenset(out)


# -- disjoint elements ---------------------------------------------------------------------------
#
# The kernel's concatenated interval sets (nft_set_pipapo) refuse an element whose first point
# (every field's low end) or last point (every field's high end) lies inside an element already in
# the set ("File exists"), whatever the insertion order: partial overlaps fail as well as
# containment. So after dropping the elements another one covers, every remaining overlap is
# removed by subtracting the earlier (larger) element from the later one, field by field, which
# keeps the union of what is allowed and leaves a set of pairwise disjoint boxes. Overlaps are
# rare (nested prefixes with different ports), so candidates are found with a sweep over the
# address field and only they pay for the subtraction.

_Box = tuple[tuple[int, int], ...]


def _disjoint_ports(elements: frozenset[PortElement]) -> frozenset[PortElement]:
    listed = list(elements)
    by_class: dict[int, list[int]] = {}
    for index, e in enumerate(listed):
        by_class.setdefault(e.klass, []).append(index)
    out: list[PortElement] = []
    for klass, indexes in by_class.items():
        boxes: list[_Box] = [
            (_span(e.remote), e.protocol, (e.remote_ports.low, e.remote_ports.high),
             (e.device_ports.low, e.device_ports.high))
            for e in (listed[i] for i in indexes)
        ]  # fmt: skip
        unchanged, pieces = _disjoint(boxes)
        out.extend(listed[indexes[i]] for i in unchanged)
        version = listed[indexes[0]].remote.version
        out.extend(
            PortElement(klass, box[1], network, PortRange(*box[2]), PortRange(*box[3]))
            for box in pieces
            for network in _networks(version, box[0])
        )
    return frozenset(out)


def _disjoint_icmp(elements: frozenset[IcmpElement]) -> frozenset[IcmpElement]:
    listed = list(elements)
    by_class: dict[int, list[int]] = {}
    for index, e in enumerate(listed):
        by_class.setdefault(e.klass, []).append(index)
    out: list[IcmpElement] = []
    for klass, indexes in by_class.items():
        boxes: list[_Box] = [(_span(listed[i].remote), listed[i].types, listed[i].codes) for i in indexes]
        unchanged, pieces = _disjoint(boxes)
        out.extend(listed[indexes[i]] for i in unchanged)
        version = listed[indexes[0]].remote.version
        out.extend(
            IcmpElement(klass, network, box[1], box[2])
            for box in pieces
            for network in _networks(version, box[0])
        )
    return frozenset(out)


def _span(network: IpNetwork) -> tuple[int, int]:
    return int(network.network_address), int(network.broadcast_address)


def _networks(version: int, span: tuple[int, int]) -> list[IpNetwork]:
    kind = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    if span[0] == span[1]:
        return [_host_network(version, span[0])]
    return list(ipaddress.summarize_address_range(kind(span[0]), kind(span[1])))


def _disjoint(boxes: list[_Box]) -> tuple[list[int], list[_Box]]:
    """Make the boxes pairwise disjoint with the same union (field 0 is the address span).

    Returns the indexes of the boxes that stay as they are, and the pieces that replace the others.
    """
    conflicted = _overlapping(boxes)
    unchanged = [index for index in range(len(boxes)) if index not in conflicted]
    kept = _AddressIndex()
    # Wider address spans first, then larger boxes, so that the many narrow boxes (hosts) are each
    # cut around the few wide ones (networks), not a network around every host (deterministic).
    for box in sorted((boxes[i] for i in conflicted), key=lambda b: (b[0][0] - b[0][1], -_volume(b), b)):
        pieces = [box]
        for other in kept.near(box[0]):
            pieces = [piece for p in pieces for piece in _subtract(p, other)]
            if not pieces:
                break
        for piece in pieces:
            kept.add(piece)
    return unchanged, kept.boxes


class _AddressIndex:
    """Kept boxes, found by address: wide ones always, narrow ones by 256-address bucket."""

    _SHIFT = 8

    def __init__(self) -> None:
        self.boxes: list[_Box] = []
        self._wide: list[_Box] = []
        self._buckets: dict[int, list[_Box]] = {}

    def add(self, box: _Box) -> None:
        self.boxes.append(box)
        low, high = box[0][0] >> self._SHIFT, box[0][1] >> self._SHIFT
        if high - low > 1:
            self._wide.append(box)
            return
        for bucket in {low, high}:
            self._buckets.setdefault(bucket, []).append(box)

    def near(self, span: tuple[int, int]) -> list[_Box]:
        low, high = span[0] >> self._SHIFT, span[1] >> self._SHIFT
        if high - low > 1:
            return list(self.boxes)
        narrow = [box for bucket in {low, high} for box in self._buckets.get(bucket, ())]
        return self._wide + narrow


def _overlapping(boxes: list[_Box]) -> set[int]:
    order = sorted(range(len(boxes)), key=lambda i: boxes[i][0])
    active: list[int] = []
    found: set[int] = set()
    for index in order:
        low = boxes[index][0][0]
        active = [a for a in active if boxes[a][0][1] >= low]
        for other in active:
            if _overlap(boxes[index], boxes[other]):
                found.update((index, other))
        active.append(index)
    return found


def _overlap(a: _Box, b: _Box) -> bool:
    return all(x[0] <= y[1] and y[0] <= x[1] for x, y in zip(a, b, strict=True))


def _volume(box: _Box) -> int:
    volume = 1
    for low, high in box:
        volume *= high - low + 1
    return volume


def _subtract(box: _Box, other: _Box) -> list[_Box]:
    if not _overlap(box, other):
        return [box]
    pieces: list[_Box] = []
    current = list(box)
    for axis, (low, high) in enumerate(box):
        cut_low, cut_high = other[axis]
        if low < cut_low:
            pieces.append((*current[:axis], (low, cut_low - 1), *current[axis + 1 :]))
        if high > cut_high:
            pieces.append((*current[:axis], (cut_high + 1, high), *current[axis + 1 :]))
        current[axis] = (max(low, cut_low), min(high, cut_high))
    return pieces  # what is left in ``current`` lies inside ``other``


def _range_in(inner: tuple[int, int], outer: tuple[int, int]) -> bool:
    return outer[0] <= inner[0] and inner[1] <= outer[1]


def _collapse(networks: list[IpNetwork]) -> list[IpNetwork]:
    # Drop every prefix that another one contains (adjacent prefixes may stay: nft takes them).
    ordered = sorted(set(networks), key=lambda n: (n.version, int(n.network_address), -n.num_addresses))
    out: list[IpNetwork] = []
    version, end = 0, -1
    for network in ordered:
        last = int(network.broadcast_address)
        if network.version == version and last <= end:
            continue
        out.append(network)
        version, end = network.version, last
    return out


def _within(network: IpNetwork, networks: list[IpNetwork]) -> bool:
    # ``networks`` is the output of _collapse (sorted, none inside another): only the prefix that
    # starts at or before this one can contain it.
    key = (network.version, int(network.network_address))
    index = bisect.bisect_right(networks, key, key=lambda n: (n.version, int(n.network_address))) - 1
    if index < 0:
        return False
    candidate = networks[index]
    return candidate.version == network.version and int(network.broadcast_address) <= int(
        candidate.broadcast_address
    )


def _no_addresses(peer: Peer) -> str:
    what = f"{peer.kind.value} {peer.value}".rstrip()
    return f"{what} has no addresses of this family"


def _hosts(addresses: Iterable[IpAddress]) -> list[IpNetwork]:
    # The fewest prefixes that cover exactly these addresses: runs of consecutive addresses (a DHCP
    # pool's devices) become a few prefixes instead of one element each.
    out: list[IpNetwork] = []
    for version, kind in ((4, ipaddress.IPv4Address), (6, ipaddress.IPv6Address)):
        values = sorted({int(a) for a in addresses if a.version == version})
        start = 0
        for index in range(1, len(values) + 1):
            if index == len(values) or values[index] != values[index - 1] + 1:
                if start == index - 1:
                    out.append(_host_network(version, values[start]))
                else:
                    first, last = kind(values[start]), kind(values[index - 1])
                    out.extend(ipaddress.summarize_address_range(first, last))
                start = index
    return out


def _host_network(version: int, value: int) -> IpNetwork:
    if version == 4:
        return ipaddress.IPv4Network((value, 32))
    return ipaddress.IPv6Network((value, 128))


def _family(network: IpNetwork) -> Family:
    return Family.IPV4 if network.version == 4 else Family.IPV6


def _intersect(left: Sequence[IpNetwork], right: Sequence[IpNetwork]) -> list[IpNetwork]:
    # Two prefixes overlap only when one contains the other; the overlap is the longer one.
    out: list[IpNetwork] = []
    for a in left:
        for b in right:
            if a.version != b.version:
                continue
            if a.prefixlen >= b.prefixlen and a.subnet_of(b):  # type: ignore[arg-type]
                out.append(a)
            elif b.subnet_of(a):  # type: ignore[arg-type]
                out.append(b)
    return out
