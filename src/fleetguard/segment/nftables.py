"""Render a :class:`~fleetguard.segment.compiler.CompiledFleet` as one nftables table, and run nft.

The table (``inet fleetguard``) is a few large sets and six short chains; see
:mod:`fleetguard.segment.compiler` for why. In the ``forward`` chain the quarantine sets come
first, before ``ct state established,related accept``, so that putting an address in quarantine
stops the flows it already has, not just its new ones. Then a packet from a managed device jumps to
``from_device``, which sets the packet mark to the device's class (``meta mark set ip saddr map
@class4``) and returns if ``class . protocol . destination . ports`` is in an allow set; a packet
to a managed device does the same in ``to_device``; anything else of a managed device is recorded
in the ``violations`` set (dynamic, with a timeout: the detector reads it) and dropped, counted per
device in ``denied``. Traffic between unmanaged hosts is not ours and passes.

fleetguard owns the packet mark of managed traffic at this hook; the table is replaced as a whole
by one ``nft -f`` transaction (``table``; ``delete table``; the new table), so an apply either
happens completely or, when nft refuses it, leaves the table in force untouched. Quarantine,
release, DNS changes and device moves are element updates, also one transaction each.
Devices with a MAC address are also checked at layer 2 when the gateway bridges them
(``bridge fleetguard``): IPv4, IPv6 and ARP go on to the rules above, other ethertypes need an
``eth`` ACE.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from fleetguard.segment.compiler import (
    CompiledFleet,
    IcmpElement,
    IpAddress,
    IpNetwork,
    PortElement,
    paused_gc,
)
from fleetguard.segment.errors import RulesetRejected
from fleetguard.segment.model import Direction, Family, PortRange

__all__ = [
    "TABLE",
    "ElementUpdate",
    "NftCommand",
    "Nftables",
    "Violation",
    "quarantine_update",
    "read_counters",
    "read_violations",
    "render_fleet",
    "set_elements",
]

TABLE = "fleetguard"
_BRIDGE_TABLE = "fleetguard"
# nft's error output is bounded before it reaches a message or an event.
_MAX_ERROR = 2000
_MAX_OUTPUT = 256 * 1024 * 1024
VIOLATION_TIMEOUT = "1h"
VIOLATION_SET_SIZE = 65536

_SETS_HEADER = """\
	map class4 {{ type ipv4_addr : mark; counter;{class4} }}
	map class6 {{ type ipv6_addr : mark; counter;{class6} }}
	set quarantine4 {{ type ipv4_addr; counter;{quarantine4} }}
	set quarantine6 {{ type ipv6_addr; counter;{quarantine6} }}
	set denied4 {{ type ipv4_addr; counter;{denied4} }}
	set denied6 {{ type ipv6_addr; counter;{denied6} }}
	set out4 {{ type mark . inet_proto . ipv4_addr . inet_service . inet_service; flags interval;{out4} }}
	set in4 {{ type mark . inet_proto . ipv4_addr . inet_service . inet_service; flags interval;{in4} }}
	set out6 {{ type mark . inet_proto . ipv6_addr . inet_service . inet_service; flags interval;{out6} }}
	set in6 {{ type mark . inet_proto . ipv6_addr . inet_service . inet_service; flags interval;{in6} }}
	set icmp_out4 {{ type mark . ipv4_addr . icmp_type . icmp_code; flags interval;{icmp_out4} }}
	set icmp_in4 {{ type mark . ipv4_addr . icmp_type . icmp_code; flags interval;{icmp_in4} }}
	set icmp_out6 {{ type mark . ipv6_addr . icmpv6_type . icmpv6_code; flags interval;{icmp_out6} }}
	set icmp_in6 {{ type mark . ipv6_addr . icmpv6_type . icmpv6_code; flags interval;{icmp_in6} }}
	set violations4 {{ type ipv4_addr . inet_proto . ipv4_addr . inet_service; flags dynamic,timeout; timeout {timeout}; size {size}; }}
	set violations6 {{ type ipv6_addr . inet_proto . ipv6_addr . inet_service; flags dynamic,timeout; timeout {timeout}; size {size}; }}
"""  # noqa: E501 - one declaration a line reads best

_CHAINS = """\
	chain forward {
		type filter hook forward priority filter; policy accept;
		ip saddr @quarantine4 drop
		ip daddr @quarantine4 drop
		ip6 saddr @quarantine6 drop
		ip6 daddr @quarantine6 drop
		ct state established,related accept
		ip saddr @class4 jump from_device4
		ip6 saddr @class6 jump from_device6
		ip daddr @class4 jump to_device4
		ip6 daddr @class6 jump to_device6
	}
	chain from_device4 {
		meta mark set ip saddr map @class4
		meta l4proto icmp meta mark . ip daddr . icmp type . icmp code @icmp_out4 return
		meta l4proto != icmp meta mark . meta l4proto . ip daddr . th sport . th dport @out4 return
		update @violations4 { ip saddr . meta l4proto . ip daddr . th dport }
		ip saddr @denied4 drop
		drop
	}
	chain to_device4 {
		meta mark set ip daddr map @class4
		meta l4proto icmp meta mark . ip saddr . icmp type . icmp code @icmp_in4 return
		meta l4proto != icmp meta mark . meta l4proto . ip saddr . th sport . th dport @in4 return
		update @violations4 { ip saddr . meta l4proto . ip daddr . th dport }
		ip daddr @denied4 drop
		drop
	}
	chain from_device6 {
		meta mark set ip6 saddr map @class6
		meta l4proto ipv6-icmp meta mark . ip6 daddr . icmpv6 type . icmpv6 code @icmp_out6 return
		meta l4proto != ipv6-icmp meta mark . meta l4proto . ip6 daddr . th sport . th dport @out6 return
		update @violations6 { ip6 saddr . meta l4proto . ip6 daddr . th dport }
		ip6 saddr @denied6 drop
		drop
	}
	chain to_device6 {
		meta mark set ip6 daddr map @class6
		meta l4proto ipv6-icmp meta mark . ip6 saddr . icmpv6 type . icmpv6 code @icmp_in6 return
		meta l4proto != ipv6-icmp meta mark . meta l4proto . ip6 saddr . th sport . th dport @in6 return
		update @violations6 { ip6 saddr . meta l4proto . ip6 daddr . th dport }
		ip6 daddr @denied6 drop
		drop
	}
"""

_BRIDGE = """\
table bridge {table} {{
	map eth_class {{ type ether_addr : mark;{eth_class} }}
	set eth_out {{ type mark . ether_type . ether_addr; flags interval;{eth_out} }}
	chain forward {{
		type filter hook forward priority filter; policy accept;
		ether saddr @eth_class jump from_device
	}}
	chain from_device {{
		ether type {{ ip, ip6, arp }} return
		meta mark set ether saddr map @eth_class
		meta mark . ether type . ether daddr @eth_out return
		drop
	}}
}}
"""

_ANY_MAC = "00:00:00:00:00:00-ff:ff:ff:ff:ff:ff"


def render_fleet(fleet: CompiledFleet, *, quarantined: Iterable[IpAddress] = (), comment: str = "") -> str:
    """Return the nft script that replaces fleetguard's tables with ``fleet`` in one transaction."""
    with paused_gc():
        elements = set_elements(fleet, quarantined=quarantined)
    parts = [f"table inet {TABLE}\ndelete table inet {TABLE}\n", f"table inet {TABLE} {{\n"]
    if comment:
        parts.append(f"\tcomment {json.dumps(comment[:120])}\n")
    parts.append(
        _SETS_HEADER.format(
            timeout=VIOLATION_TIMEOUT,
            size=VIOLATION_SET_SIZE,
            **{
                name: _elements_clause(values)
                for name, values in elements.items()
                if not name.startswith("eth")
            },
        )
    )
    parts.append(_CHAINS)
    parts.append("}\n")
    parts.append(f"table bridge {_BRIDGE_TABLE}\ndelete table bridge {_BRIDGE_TABLE}\n")
    if fleet.macs:
        parts.append(
            _BRIDGE.format(
                table=_BRIDGE_TABLE,
                eth_class=_elements_clause(elements["eth_class"]),
                eth_out=_elements_clause(elements["eth_out"]),
            )
        )
    return "".join(parts)


def set_elements(fleet: CompiledFleet, *, quarantined: Iterable[IpAddress] = ()) -> dict[str, list[str]]:
    """Every set's elements as nft text, by set name; element updates diff these."""
    members4 = [(_text(a), klass) for a, klass in sorted(fleet.members4.items(), key=_by_address)]
    members6 = [(_text(a), klass) for a, klass in sorted(fleet.members6.items(), key=_by_address)]
    out: dict[str, list[str]] = {
        "class4": [f"{text} : {klass}" for text, klass in members4],
        "class6": [f"{text} : {klass}" for text, klass in members6],
        "denied4": [text for text, _ in members4],
        "denied6": [text for text, _ in members6],
        "quarantine4": sorted(str(a) for a in quarantined if a.version == 4),
        "quarantine6": sorted(str(a) for a in quarantined if a.version == 6),
        "eth_class": [f"{mac} : {klass}" for mac, klass in sorted(fleet.macs.items())],
        "eth_out": sorted(
            f"{klass} . 0x{ethertype:04x} . {mac or _ANY_MAC}"
            for klass, rules in fleet.rules.items()
            for ethertype, mac in rules.ethertypes
        ),
    }
    for family, suffix in ((Family.IPV4, "4"), (Family.IPV6, "6")):
        for direction, name in ((Direction.FROM_DEVICE, "out"), (Direction.TO_DEVICE, "in")):
            ports: list[PortElement] = []
            icmp: list[IcmpElement] = []
            for klass in sorted(fleet.rules):
                rules = fleet.rules[klass]
                ports.extend(rules.ports.get((family, direction), ()))
                icmp.extend(rules.icmp.get((family, direction), ()))
            out[f"{name}{suffix}"] = [_port_element(e, direction) for e in sorted(ports, key=_port_sort_key)]
            out[f"icmp_{name}{suffix}"] = [_icmp_element(e) for e in sorted(icmp, key=_icmp_sort_key)]
    return out


def _by_address(item: tuple[IpAddress, int]) -> int:
    return int(item[0])


def _port_sort_key(e: PortElement) -> tuple[int, tuple[int, int], int, int, int, int, int, int]:
    return (
        e.klass, e.protocol, int(e.remote.network_address), e.remote.prefixlen,
        e.remote_ports.low, e.remote_ports.high, e.device_ports.low, e.device_ports.high,
    )  # fmt: skip


def _icmp_sort_key(e: IcmpElement) -> tuple[int, int, int, tuple[int, int], tuple[int, int]]:
    return (e.klass, int(e.remote.network_address), e.remote.prefixlen, e.types, e.codes)


def _port_element(e: PortElement, direction: Direction) -> str:
    # The sets are keyed by the packet's source port, then its destination port: from the device
    # that is (device port, remote port), towards it (remote port, device port).
    if direction is Direction.FROM_DEVICE:
        sport, dport = e.device_ports, e.remote_ports
    else:
        sport, dport = e.remote_ports, e.device_ports
    protocol = _range(*e.protocol)
    return f"{e.klass} . {protocol} . {_network(e.remote)} . {_ports(sport)} . {_ports(dport)}"


def _range(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}-{high}"


def _ports(ports: PortRange) -> str:
    return _range(ports.low, ports.high)


def _network(network: IpNetwork) -> str:
    if network.prefixlen == network.max_prefixlen:
        return _text(network.network_address)
    return f"{_text(network.network_address)}/{network.prefixlen}"


def _text(address: IpAddress) -> str:
    # ipaddress's own str() is pure Python; inet_ntoa is C (this is most of rendering 50,000 devices).
    return socket.inet_ntoa(address.packed) if address.version == 4 else str(address)


def _icmp_element(e: IcmpElement) -> str:
    return f"{e.klass} . {_network(e.remote)} . {_range(*e.types)} . {_range(*e.codes)}"


def _elements_clause(values: Sequence[str]) -> str:
    if not values:
        return ""
    return " elements = { " + ",\n\t\t".join(values) + " };"


class NftCommand(Protocol):
    """Runs nft; :class:`Nftables` is the real one, tests of the pure parts may fake it."""

    def run(self, script: str, *, check_only: bool = False) -> None:
        """Run ``script`` as one transaction (``nft -f``; ``nft -c -f`` for ``check_only``)."""

    def query(self, *arguments: str) -> str:
        """Run ``nft -j`` with ``arguments`` and return its JSON output."""


@dataclass(frozen=True, slots=True)
class Nftables:
    """The nft program, run without a shell; ``prefix`` runs it elsewhere (``ip netns exec gw``)."""

    prefix: tuple[str, ...] = ()
    program: str = "nft"
    timeout_s: float = 60.0

    def run(self, script: str, *, check_only: bool = False) -> None:
        """Apply ``script`` atomically, or only check it; raise :class:`RulesetRejected` if refused."""
        with tempfile.TemporaryDirectory(prefix="fleetguard-nft-") as folder:
            path = os.path.join(folder, "ruleset.nft")
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(script)
            self._call(["-c", "-f", path] if check_only else ["-f", path])

    def query(self, *arguments: str) -> str:
        """Return ``nft -j <arguments>``'s output."""
        return self._call(["-j", *arguments])

    def _call(self, arguments: list[str]) -> str:
        command = [*self.prefix, self.program, *arguments]
        try:
            done = subprocess.run(  # noqa: S603 - fixed program, no shell, arguments are ours
                command, capture_output=True, timeout=self.timeout_s, check=False
            )
        except FileNotFoundError as exc:
            raise RulesetRejected(
                f"{command[0]} is not installed", hint="install nftables (apt install nftables)"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise RulesetRejected(f"nft did not finish in {self.timeout_s:g} s; nothing was changed") from exc
        if done.returncode != 0:
            error = done.stderr.decode("utf-8", "replace").strip()[:_MAX_ERROR]
            raise RulesetRejected(
                f"nft refused the change (exit {done.returncode}); "
                f"the ruleset in force is unchanged: {error}",
                hint="nft needs root (CAP_NET_ADMIN) and a kernel with nf_tables; see nft's message",
            )
        return done.stdout[:_MAX_OUTPUT].decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class ElementUpdate:
    """Elements to delete and to add, by set name: one transaction."""

    delete: Mapping[str, Sequence[str]]
    add: Mapping[str, Sequence[str]]

    @property
    def empty(self) -> bool:
        """True when there is nothing to change."""
        return not any(self.delete.values()) and not any(self.add.values())

    def script(self) -> str:
        """The nft script: deletions first, so an element may move in one transaction."""
        lines = [
            f"delete element inet {TABLE} {name} {{ {', '.join(values)} }}"
            for name, values in sorted(self.delete.items())
            if values
        ]
        lines += [
            f"add element inet {TABLE} {name} {{ {', '.join(values)} }}"
            for name, values in sorted(self.add.items())
            if values
        ]
        return "\n".join(lines) + "\n"

    @classmethod
    def between(cls, old: Mapping[str, Sequence[str]], new: Mapping[str, Sequence[str]]) -> ElementUpdate:
        """What turns the sets ``old`` into ``new`` (both from :func:`set_elements`)."""
        delete: dict[str, list[str]] = {}
        add: dict[str, list[str]] = {}
        for name in sorted(set(old) | set(new)):
            before, after = set(old.get(name, ())), set(new.get(name, ()))
            if name.startswith("eth"):
                continue  # the bridge table is replaced by a full apply when MACs change
            if name.startswith("class"):
                # A map element changes value by delete + add of its key.
                before_keys = {_key(v): v for v in before}
                after_keys = {_key(v): v for v in after}
                delete[name] = sorted(_key(v) for k, v in before_keys.items() if after_keys.get(k) != v)
                add[name] = sorted(v for k, v in after_keys.items() if before_keys.get(k) != v)
            else:
                delete[name] = sorted(before - after)
                add[name] = sorted(after - before)
        return cls(delete=delete, add=add)


def _key(map_element: str) -> str:
    return map_element.split(" : ", 1)[0]


def quarantine_update(addresses: Iterable[IpAddress], *, release: bool = False) -> str:
    """The nft script that puts ``addresses`` in quarantine (or releases them); idempotent.

    Release adds before it deletes, in the same transaction, so releasing an address that is not
    in quarantine is not an error.
    """
    by_set: dict[str, list[str]] = {}
    for address in addresses:
        by_set.setdefault(f"quarantine{address.version}", []).append(str(address))
    lines: list[str] = []
    for name, values in sorted(by_set.items()):
        joined = ", ".join(sorted(values))
        lines.append(f"add element inet {TABLE} {name} {{ {joined} }}")
        if release:
            lines.append(f"delete element inet {TABLE} {name} {{ {joined} }}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Violation:
    """A flow a managed device tried that its policy does not allow (from the violations sets)."""

    source: IpAddress
    protocol: int
    destination: IpAddress
    destination_port: int
    expires_s: int


def read_violations(nft: NftCommand) -> list[Violation]:
    """Every flow in the ``violations4``/``violations6`` sets now (each expires after an hour)."""
    out: list[Violation] = []
    for name in ("violations4", "violations6"):
        document = json.loads(nft.query("list", "set", "inet", TABLE, name))
        out.extend(_violations(document))
    return out


def _violations(document: object) -> Iterator[Violation]:
    for item in _set_items(document):
        for element in item.get("elem", ()):
            value = element.get("elem", {}).get("val", element) if isinstance(element, dict) else element
            parts = value.get("concat") if isinstance(value, dict) else None
            if not isinstance(parts, list) or len(parts) != 4:
                continue
            expires = element.get("elem", {}).get("expires", 0) if isinstance(element, dict) else 0
            yield Violation(
                source=ipaddress.ip_address(parts[0]),
                protocol=_protocol_number(parts[1]),
                destination=ipaddress.ip_address(parts[2]),
                destination_port=int(parts[3]),
                expires_s=int(expires),
            )


COUNTED_SETS = ("class4", "class6", "denied4", "denied6", "quarantine4", "quarantine6")


def read_counters(
    nft: NftCommand, *, names: Sequence[str] = COUNTED_SETS
) -> dict[str, dict[str, tuple[int, int]]]:
    """Per-address (packets, bytes) of the ``class``, ``denied`` and ``quarantine`` sets."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for name in names:
        kind = "map" if name.startswith("class") else "set"
        document = json.loads(nft.query("list", kind, "inet", TABLE, name))
        counters: dict[str, tuple[int, int]] = {}
        for item in _set_items(document):
            for element in item.get("elem", ()):
                key, counter = _counted(element)
                if key is not None:
                    counters[key] = counter
        out[name] = counters
    return out


def _counted(element: object) -> tuple[str | None, tuple[int, int]]:
    # A set element with a counter is {"elem": {"val": KEY, "counter": {...}}}; a map element is
    # [that, VALUE].
    if isinstance(element, list) and element:
        element = element[0]
    if not isinstance(element, dict) or "elem" not in element:
        return (str(element) if isinstance(element, str) else None), (0, 0)
    inner = element["elem"]
    counter = inner.get("counter", {})
    return str(inner.get("val")), (int(counter.get("packets", 0)), int(counter.get("bytes", 0)))


def _set_items(document: object) -> Iterator[dict[str, list[object]]]:
    if not isinstance(document, dict):
        return
    for entry in document.get("nftables", ()):
        if isinstance(entry, dict):
            for kind in ("set", "map"):
                item = entry.get(kind)
                if isinstance(item, dict):
                    yield item


_PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "sctp": 132, "gre": 47}


def _protocol_number(value: object) -> int:
    if isinstance(value, int):
        return value
    text = str(value)
    return int(text) if text.isdigit() else _PROTOCOLS.get(text, 0)
