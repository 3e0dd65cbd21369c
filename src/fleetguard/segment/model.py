"""The values every part of segmentation shares: a parsed MUD profile and the flows it is checked on.

A :class:`MudProfile` is what :mod:`fleetguard.segment.mud` makes of a MUD file (RFC 8520 with the
ACL model of RFC 8519). Each :class:`Ace` is normalised to one direction of the device's traffic:
``FROM_DEVICE`` ACEs come from the ``from-device-policy`` ACLs and name the remote side by its
*destination* fields; ``TO_DEVICE`` ACEs come from ``to-device-policy`` and name the remote side by
its *source* fields. The device's own side is only ever constrained by port. Every constraint on
the remote address is a :class:`Peer`; an ACE matches a remote address only when it is in all of
its peers (an empty tuple matches any address). The compiler resolves abstract peers (DNS names,
``manufacturer``, ``controller``, ...) against a fleet context; :mod:`fleetguard.segment.simulation`
checks :class:`Flow` records against the same values, so both agree on what is allowed.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "ANY_PORT",
    "WELL_KNOWN_CONTROLLERS",
    "Ace",
    "Direction",
    "Family",
    "Flow",
    "MudProfile",
    "Peer",
    "PeerKind",
    "PortRange",
]


class Direction(enum.StrEnum):
    """Which way traffic goes, seen from the device (RFC 8520 section 2.1 from/to-device-policy)."""

    FROM_DEVICE = "from-device"
    TO_DEVICE = "to-device"


class Family(enum.StrEnum):
    """The ACL type an ACE belongs to (RFC 8519 ipv4-acl-type, ipv6-acl-type, eth-acl-type)."""

    IPV4 = "ipv4"
    IPV6 = "ipv6"
    ETH = "eth"


class PeerKind(enum.StrEnum):
    """How the remote side of an ACE is named."""

    NETWORK = "network"  # value: an address prefix, e.g. "192.0.2.0/24" (RFC 8519)
    DNS_NAME = "dns-name"  # value: a host name (RFC 8520 section 8, ietf-acldns)
    MANUFACTURER = "manufacturer"  # value: the authority (host) of MUD URLs (section 4.1)
    SAME_MANUFACTURER = "same-manufacturer"  # value: "" (section 4.2)
    MODEL = "model"  # value: a MUD URL (section 4.3)
    LOCAL_NETWORKS = "local-networks"  # value: "" (section 4.4)
    CONTROLLER = "controller"  # value: a controller class URI (section 4.5)
    MY_CONTROLLER = "my-controller"  # value: "" (section 4.6)


# RFC 8520 section 4.5 (controller) and its IANA URNs: the well-known controller classes.
WELL_KNOWN_CONTROLLERS = frozenset({"urn:ietf:params:mud:dns", "urn:ietf:params:mud:ntp"})


@dataclass(frozen=True, slots=True)
class Peer:
    """One constraint on the remote address of an ACE."""

    kind: PeerKind
    value: str = ""


@dataclass(frozen=True, slots=True, order=True)
class PortRange:
    """An inclusive range of ports; ``eq 443`` is ``PortRange(443, 443)``."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high <= 65535:
            raise ValueError(f"invalid port range {self.low}-{self.high}")

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high


ANY_PORT: tuple[PortRange, ...] = (PortRange(0, 65535),)


@dataclass(frozen=True, slots=True)
class Ace:
    """One access-control entry, normalised (see the module docstring). Every ACE accepts.

    ``protocol`` is the IP protocol number (None: any). ``remote_ports`` and ``device_ports`` are
    unions of ranges (``ANY_PORT`` when the ACE names none; RFC 8519 ``neq`` becomes two ranges).
    ``initiated`` is ``ietf-mud:direction-initiated`` (TCP only): who may open the connection.
    ``icmp_type``/``icmp_code`` are None when not matched. For ``Family.ETH`` ACEs, ``ethertype``
    and ``destination_mac`` (lower-case ``aa:bb:..``) are set and the IP fields are unused.
    """

    name: str
    acl: str
    direction: Direction
    family: Family
    protocol: int | None = None
    peers: tuple[Peer, ...] = ()
    remote_ports: tuple[PortRange, ...] = ANY_PORT
    device_ports: tuple[PortRange, ...] = ANY_PORT
    initiated: Direction | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    ethertype: int | None = None
    destination_mac: str | None = None


@dataclass(frozen=True, slots=True)
class MudProfile:
    """A parsed MUD file; ``aces`` are in file order, from-device ACLs first.

    ``digest`` is the SHA-256 (hex) of the exact bytes parsed, so a profile is identified by its
    content as well as its URL. ``cache_validity`` is in hours (RFC 8520 section 3.5, 1..168).
    """

    url: str
    digest: str
    mud_version: int
    last_update: dt.datetime
    cache_validity: int
    is_supported: bool
    systeminfo: str
    mfg_name: str
    model_name: str
    firmware_rev: str
    software_rev: str
    documentation: str
    signature_url: str | None
    aces: tuple[Ace, ...]

    @property
    def authority(self) -> str:
        """The MUD URL's host, which RFC 8520 section 4.1 calls the manufacturer."""
        return (urlsplit(self.url).hostname or "").lower()

    def by_direction(self, direction: Direction) -> tuple[Ace, ...]:
        """The ACEs of one direction, in file order."""
        return tuple(ace for ace in self.aces if ace.direction is direction)


@dataclass(frozen=True, slots=True)
class Flow:
    """One observed flow (a connection or a UDP/ICMP exchange), first packet's direction.

    ``source``/``destination`` are IP addresses as text (IPv4 or IPv6). ``protocol`` is the IP
    protocol number; ports are 0 where the protocol has none; ICMP type/code are in
    ``icmp_type``/``icmp_code`` (None otherwise). ``packets``/``octets`` count both directions
    where the source says so.
    """

    start: dt.datetime
    source: str
    destination: str
    protocol: int
    source_port: int = 0
    destination_port: int = 0
    icmp_type: int | None = None
    icmp_code: int | None = None
    packets: int = 1
    octets: int = 0
    established: bool = False  # a TCP flow whose handshake was seen completing
