"""A bounded, pure-Python reader of packet captures: classic pcap and pcapng.

Theory of operation. :func:`read_capture` reads a capture incrementally from anything with
``read(n)`` (it never holds more than one block or record) and yields, per captured frame, either a
:class:`Packet` (the fields segmentation needs: addresses, ports, TCP flags, ICMP type/code, and the
DNS answers of port-53 UDP responses) or a :class:`SkippedPacket` naming why the frame could not be
decoded. The two kinds of damage are kept apart on purpose:

* damage to the *file* (bad magic, a truncated record, a block length that overruns the file, a
  captured length over :data:`MAX_SNAPLEN`, more packets or bytes than allowed) raises
  :class:`~fleetguard.segment.errors.CaptureInvalid` with the byte offset, because nothing after it
  can be trusted to be framed correctly;
* damage to a *packet* (a short IP header, a bad IHL, a TCP data offset under 5, a malformed DNS
  message) is data the device sent, so it is reported as a :class:`SkippedPacket` (or, for DNS, as
  ``Packet.dns_error``) and reading goes on. A device must not be able to stop its own observation.

Formats: pcap as described in draft-ietf-opsawg-pcap (both byte orders, micro- and nanosecond magic)
and pcapng per draft-ietf-opsawg-pcapng (SHB, IDB, EPB, SPB and the obsolete PB; other blocks are
skipped by their length). Link types (https://www.tcpdump.org/linktypes.html): Ethernet (1, with up to
:data:`MAX_VLAN_TAGS` 802.1Q/802.1ad tags), raw IP (101, 228, 229), Linux cooked SLL (113) and SLL2
(276).
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import ipaddress
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from fleetguard.segment.errors import CaptureInvalid

__all__ = [
    "DEFAULT_MAX_PACKETS",
    "MAX_BLOCK_LENGTH",
    "MAX_CAPTURE_BYTES",
    "MAX_SNAPLEN",
    "PCAP_MAGIC",
    "DnsAnswer",
    "Interface",
    "LinkType",
    "Packet",
    "SkippedPacket",
    "parse_dns_answers",
    "parse_interface",
    "read_capture",
    "section_byte_order",
]

# Limits. MAX_SNAPLEN is libpcap's MAXIMUM_SNAPLEN (pcap-int.h); a larger captured length is corrupt.
MAX_SNAPLEN = 262_144
MAX_CAPTURE_BYTES = 2 * 1024**3  # 2 GiB, read as a stream
DEFAULT_MAX_PACKETS = 10_000_000
MAX_BLOCK_LENGTH = 8 * 1024**2  # a pcapng block; name-resolution blocks can be large, packets are not
MAX_INTERFACES = 1024  # pcapng IDBs per section
MAX_VLAN_TAGS = 4
MAX_IPV6_EXTENSION_HEADERS = 8
MAX_DNS_QUESTIONS = 16
MAX_DNS_ANSWERS = 256
MAX_DNS_CNAME_CHAIN = 16
_MAX_DNS_NAME = 255  # RFC 1035 section 2.3.4: 255 octets
_MAX_DNS_POINTERS = 64
_MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second a datetime holds

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# draft-ietf-opsawg-pcap section 4: the magic number fixes byte order and timestamp resolution.
PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1),
    b"\xa1\xb2\xc3\xd4": (">", 1),
    b"\x4d\x3c\xb2\xa1": ("<", 1000),  # nanosecond: divide by 1000 for microseconds
    b"\xa1\xb2\x3c\x4d": (">", 1000),
}
# draft-ietf-opsawg-pcapng section 4.1: the SHB type is a palindrome; the byte-order magic is not.
_SHB = 0x0A0D0D0A
_SHB_BYTES = b"\x0a\x0d\x0d\x0a"
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_IDB, _EPB, _SPB, _PB = 0x00000001, 0x00000006, 0x00000003, 0x00000002
_OPT_IF_TSRESOL, _OPT_IF_TSOFFSET = 9, 14  # pcapng section 4.2 options

ETHERTYPE_IPV4, ETHERTYPE_IPV6 = 0x0800, 0x86DD
_VLAN_ETHERTYPES = frozenset({0x8100, 0x88A8, 0x9100})
_IPV6_EXTENSIONS = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options (RFC 8200 4.3-4.6)
_IPV6_FRAGMENT, _IPV6_AH = 44, 51  # RFC 8200 section 4.5; RFC 4302 section 2.2 (length in 4-octet units)
_TCP, _UDP, _ICMP, _ICMPV6 = 6, 17, 1, 58
_DNS_PORT = 53


class LinkType(enum.IntEnum):
    """The link types read here (tcpdump.org LINKTYPE_ values)."""

    ETHERNET = 1
    RAW = 101
    LINUX_SLL = 113
    IPV4 = 228
    IPV6 = 229
    LINUX_SLL2 = 276


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """An address a DNS response gave for a name: the name asked (the head of any CNAME chain)."""

    name: str
    address: str


@dataclass(frozen=True, slots=True)
class Packet:
    """One decoded frame.

    ``length`` is the frame's length on the wire. Link fields are None where the link type has none
    (raw IP has no MACs). IP fields are None for non-IP frames. ``ip_length`` is the IP packet's
    length from its own header (so a short snaplen does not change it); ``payload_length`` is what
    follows the TCP/UDP header or the 4-byte ICMP header (the whole IP payload for other protocols).
    ``fragment`` marks a non-first IP fragment, which carries no transport header (ports stay 0).
    ``dns_answers`` are set for UDP port-53 responses; ``dns_error`` says why one did not parse.
    """

    timestamp: dt.datetime
    length: int
    source_mac: str | None = None
    destination_mac: str | None = None
    ethertype: int | None = None
    ip_version: int | None = None
    source: str | None = None
    destination: str | None = None
    protocol: int | None = None
    ip_length: int = 0
    source_port: int = 0
    destination_port: int = 0
    tcp_flags: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    payload_length: int = 0
    fragment: bool = False
    dns_answers: tuple[DnsAnswer, ...] = ()
    dns_error: str | None = None


@dataclass(frozen=True, slots=True)
class SkippedPacket:
    """A frame that was captured intact but could not be decoded; ``offset`` is its record's."""

    offset: int
    reason: str


Decoded = Packet | SkippedPacket


class _Source:
    """A byte stream with its offset and a byte budget; raises CaptureInvalid on short reads."""

    __slots__ = ("_limit", "_read", "offset")

    def __init__(self, source: _Readable, limit: int) -> None:
        self._read = source.read
        self._limit = limit
        self.offset = 0

    def take(self, size: int, what: str, *, eof_ok: bool = False, start: int | None = None) -> bytes:
        """Return exactly ``size`` bytes; b"" at a clean end of file when ``eof_ok``.

        ``start`` is the offset a truncation is reported at (the record's or block's own).
        """
        if self.offset + size > self._limit:
            raise CaptureInvalid(
                f"offset {self.offset}: capture is larger than the limit of {self._limit} bytes",
                hint="split the capture (editcap -c) or raise the limit",
            )
        data = self._read(size)
        if len(data) != size:
            if eof_ok and not data:
                return data
            where = self.offset if start is None else start
            raise CaptureInvalid(
                f"offset {where}: truncated {what}: {len(data)} of {size} bytes",
                hint="the capture was cut off; re-capture or trim the last record",
            )
        self.offset += size
        return data


def read_capture(
    source: _Readable,
    *,
    max_packets: int = DEFAULT_MAX_PACKETS,
    max_bytes: int = MAX_CAPTURE_BYTES,
) -> Iterator[Decoded]:
    """Yield each frame of a pcap or pcapng stream as a :class:`Packet` or :class:`SkippedPacket`.

    Reading is lazy: stop early with ``itertools.islice``. Raises ``CaptureInvalid`` (with the byte
    offset) when the file is not a capture, is truncated, breaks a format rule, holds a record over
    :data:`MAX_SNAPLEN` or a block over :data:`MAX_BLOCK_LENGTH`, or has more than ``max_packets``
    frames or ``max_bytes`` bytes.
    """
    src = _Source(source, max_bytes)
    magic = src.take(4, "file header")
    if magic == _SHB_BYTES:
        yield from _read_pcapng(src, max_packets)
    elif magic in PCAP_MAGIC:
        yield from _read_pcap(src, magic, max_packets)
    else:
        raise CaptureInvalid(
            f"offset 0: not a pcap or pcapng file (magic {magic.hex()})",
            hint="give a capture written by tcpdump, dumpcap or Wireshark",
        )


def _too_many(offset: int, max_packets: int) -> CaptureInvalid:
    return CaptureInvalid(
        f"offset {offset}: more than {max_packets} packets",
        hint="shorten the capture or raise max_packets",
    )


def _timestamp(seconds: int, microseconds: int, offset: int) -> dt.datetime:
    if not 0 <= seconds <= _MAX_SECONDS:
        raise CaptureInvalid(f"offset {offset}: timestamp {seconds} s is out of range")
    return _EPOCH + dt.timedelta(seconds=seconds, microseconds=microseconds)


def _read_pcap(src: _Source, magic: bytes, max_packets: int) -> Iterator[Decoded]:
    # draft-ietf-opsawg-pcap section 4: version, reserved x2, snaplen, link type (low 16 bits; the
    # high bits carry FCS information, which is not needed: IP lengths come from the IP header).
    endian, divisor = PCAP_MAGIC[magic]
    major, _minor, _res1, _res2, _snaplen, link = struct.unpack(
        endian + "HHIIII", src.take(20, "file header")
    )
    if major != 2:
        raise CaptureInvalid(f"offset 4: pcap version {major} is not 2")
    linktype = _link_type(link & 0xFFFF, 20)
    record = struct.Struct(endian + "IIII")
    count = 0
    while True:
        offset = src.offset
        header = src.take(16, "record header", eof_ok=True)
        if not header:
            return
        seconds, fraction, caplen, length = record.unpack(header)
        if caplen > MAX_SNAPLEN:
            raise CaptureInvalid(f"offset {offset}: captured length {caplen} is over {MAX_SNAPLEN}")
        data = src.take(caplen, "packet data", start=offset)
        count += 1
        if count > max_packets:
            raise _too_many(offset, max_packets)
        yield _decode(linktype, data, _timestamp(seconds, fraction // divisor, offset), length, offset)


def _link_type(value: int, offset: int) -> LinkType:
    try:
        return LinkType(value)
    except ValueError:
        raise CaptureInvalid(
            f"offset {offset}: link type {value} is not supported",
            hint="capture on Ethernet or with -i any (Linux cooked), or convert with editcap -T",
        ) from None


@dataclass(frozen=True, slots=True)
class Interface:
    """A pcapng interface: its link type (None: unsupported), snaplen and timestamp units."""

    linktype: LinkType | None
    snaplen: int
    units_per_second: int
    offset_seconds: int

    def timestamp(self, units: int, offset: int) -> dt.datetime:
        seconds, rest = divmod(units, self.units_per_second)
        return _timestamp(seconds + self.offset_seconds, rest * 1_000_000 // self.units_per_second, offset)


def _read_pcapng(src: _Source, max_packets: int) -> Iterator[Decoded]:
    """Walk pcapng blocks (pcapng section 3.1: type, total length, body, total length again)."""
    endian = ""
    interfaces: list[Interface] = []
    count = 0
    head = _SHB_BYTES + src.take(8, "section header block")
    while True:
        offset = src.offset - 12
        raw_type, raw_length, third = head[:4], head[4:8], head[8:12]
        if raw_type == _SHB_BYTES:
            endian = section_byte_order(third, offset)
            interfaces = []
        elif not endian:
            raise CaptureInvalid(f"offset {offset}: block before the first section header")
        (total,) = struct.unpack(endian + "I", raw_length)
        if total < 12 or total % 4 or total > MAX_BLOCK_LENGTH:
            raise CaptureInvalid(
                f"offset {offset}: block length {total} is not a multiple of 4 in 12..{MAX_BLOCK_LENGTH}"
            )
        rest = src.take(total - 12, f"block (length {total} overruns the file)", start=offset)
        block = head + rest
        if block[-4:] != raw_length:
            raise CaptureInvalid(f"offset {offset}: block's trailing length differs from its length")
        (block_type,) = struct.unpack(endian + "I", raw_type)
        body = block[8:-4]
        if block_type == _SHB:
            _require_section_version(body, endian, offset)
        elif block_type == _IDB:
            if len(interfaces) >= MAX_INTERFACES:
                raise CaptureInvalid(f"offset {offset}: more than {MAX_INTERFACES} interfaces")
            interfaces.append(parse_interface(body, endian, offset))
        elif block_type in (_EPB, _SPB, _PB):
            count += 1
            if count > max_packets:
                raise _too_many(offset, max_packets)
            yield _packet_block(block_type, body, endian, interfaces, offset)
        head = src.take(12, "block header", eof_ok=True)
        if not head:
            return


def section_byte_order(magic: bytes, offset: int) -> str:
    """Return the struct byte order ("<" or ">") of a pcapng section; raise CaptureInvalid on a bad magic."""
    if struct.unpack("<I", magic)[0] == _BYTE_ORDER_MAGIC:
        return "<"
    if struct.unpack(">I", magic)[0] == _BYTE_ORDER_MAGIC:
        return ">"
    raise CaptureInvalid(f"offset {offset + 8}: bad pcapng byte-order magic {magic.hex()}")


def _require_section_version(body: bytes, endian: str, offset: int) -> None:
    # pcapng section 4.1: byte-order magic, major 1, minor, section length (64 bits), options.
    if len(body) < 16:
        raise CaptureInvalid(f"offset {offset}: section header block is too short")
    major = struct.unpack_from(endian + "H", body, 4)[0]
    if major != 1:
        raise CaptureInvalid(f"offset {offset}: pcapng major version {major} is not 1")


def parse_interface(body: bytes, endian: str, offset: int) -> Interface:
    """Return the interface an IDB body describes; raise CaptureInvalid on a short block or bad option."""
    # pcapng section 4.2: link type (16), reserved (16), snaplen (32), options.
    if len(body) < 8:
        raise CaptureInvalid(f"offset {offset}: interface description block is too short")
    link, _reserved, snaplen = struct.unpack_from(endian + "HHI", body)
    try:
        linktype: LinkType | None = LinkType(link)
    except ValueError:
        linktype = None  # its packets are skipped, the rest of the file is still read
    units, shift = 1_000_000, 0
    for code, value in _options(body, 8, endian, offset):
        if code == _OPT_IF_TSRESOL and len(value) >= 1:
            exponent = value[0] & 0x7F
            if exponent > 30:
                raise CaptureInvalid(f"offset {offset}: if_tsresol {value[0]:#x} is out of range")
            units = 2**exponent if value[0] & 0x80 else 10**exponent
        elif code == _OPT_IF_TSOFFSET and len(value) >= 8:
            shift = struct.unpack_from(endian + "q", value)[0]
    return Interface(linktype, snaplen, units, shift)


def _options(body: bytes, start: int, endian: str, offset: int) -> Iterator[tuple[int, bytes]]:
    """Yield (code, value) of a pcapng option list (section 3.5), each value padded to 4 bytes."""
    pos = start
    while pos + 4 <= len(body):
        code, size = struct.unpack_from(endian + "HH", body, pos)
        if code == 0:
            return
        end = pos + 4 + size
        if end > len(body):
            raise CaptureInvalid(f"offset {offset}: option {code} overruns its block")
        yield code, body[pos + 4 : end]
        pos = end + (-size % 4)


_EPB_HEADER = struct.Struct("IIIII")  # interface, timestamp high, low, captured length, length
_PB_HEADER = struct.Struct("HHIIII")  # interface (16), drops (16), then as EPB


def _packet_block(
    block_type: int, body: bytes, endian: str, interfaces: list[Interface], offset: int
) -> Decoded:
    if len(body) < (4 if block_type == _SPB else 20):
        raise CaptureInvalid(f"offset {offset}: packet block is too short")
    if block_type == _EPB:  # pcapng section 4.3
        interface_id, high, low, caplen, length = struct.unpack_from(endian + _EPB_HEADER.format, body)
        header = 20
    elif block_type == _PB:  # pcapng appendix A, the obsolete Packet Block
        interface_id, _drops, high, low, caplen, length = struct.unpack_from(endian + _PB_HEADER.format, body)
        header = 20
    else:  # pcapng section 4.4: the captured length is what the block holds, at most the snaplen
        (length,) = struct.unpack_from(endian + "I", body)
        snaplen = interfaces[0].snaplen if interfaces and interfaces[0].snaplen else MAX_SNAPLEN
        interface_id, high, low, caplen, header = 0, 0, 0, min(length, snaplen, len(body) - 4), 4
    if interface_id >= len(interfaces):
        raise CaptureInvalid(f"offset {offset}: packet of interface {interface_id}, which was not described")
    if caplen > MAX_SNAPLEN or header + caplen > len(body):
        raise CaptureInvalid(f"offset {offset}: captured length {caplen} overruns its block or {MAX_SNAPLEN}")
    interface = interfaces[interface_id]
    if interface.linktype is None:
        return SkippedPacket(offset, "unsupported link type")
    # A simple packet block has no timestamp (section 4.4): the epoch stands in for it.
    timestamp = _EPOCH if block_type == _SPB else interface.timestamp(high << 32 | low, offset)
    return _decode(interface.linktype, body[header : header + caplen], timestamp, length, offset)


# -- link layer ------------------------------------------------------------------------------------

_U16 = struct.Struct("!H")
_SLL = struct.Struct("!HHH8sH")  # packet type, ARPHRD, address length, address, protocol
_SLL2 = struct.Struct("!HHIHBB8s")  # protocol, reserved, ifindex, ARPHRD, packet type, addr len, addr
_ARPHRD_ETHER = 1


def _decode(linktype: LinkType, data: bytes, timestamp: dt.datetime, length: int, offset: int) -> Decoded:
    """Decode the link layer, then IP."""
    framing = _LINK_DECODERS[linktype](data)
    if isinstance(framing, str):
        return SkippedPacket(offset, framing)
    source_mac, destination_mac, ethertype, start = framing
    link = (timestamp, length, source_mac, destination_mac, ethertype)
    if ethertype == ETHERTYPE_IPV4:
        return _decode_ipv4(data, start, link, offset)
    if ethertype == ETHERTYPE_IPV6:
        return _decode_ipv6(data, start, link, offset)
    return Packet(timestamp, length, source_mac, destination_mac, ethertype)


_Framing = tuple[str | None, str | None, int, int] | str  # source MAC, destination MAC, ethertype, start


def _ethernet(data: bytes) -> _Framing:
    # IEEE 802.3 framing; 802.1Q/802.1ad tags are stepped over (at most MAX_VLAN_TAGS).
    if len(data) < 14:
        return "short Ethernet header"
    ethertype, start = _U16.unpack_from(data, 12)[0], 14
    for _ in range(MAX_VLAN_TAGS):
        if ethertype not in _VLAN_ETHERTYPES:
            break
        if len(data) < start + 4:
            return "short VLAN tag"
        ethertype, start = _U16.unpack_from(data, start + 2)[0], start + 4
    return data[6:12].hex(":"), data[0:6].hex(":"), ethertype, start


def _linux_sll(data: bytes) -> _Framing:
    # https://www.tcpdump.org/linktypes/LINKTYPE_LINUX_SLL.html: only the sender's address is kept.
    if len(data) < 16:
        return "short Linux cooked header"
    _kind, hatype, size, address, ethertype = _SLL.unpack_from(data)
    return (address[:6].hex(":") if hatype == _ARPHRD_ETHER and size == 6 else None), None, ethertype, 16


def _linux_sll2(data: bytes) -> _Framing:
    # https://www.tcpdump.org/linktypes/LINKTYPE_LINUX_SLL2.html
    if len(data) < 20:
        return "short Linux cooked v2 header"
    ethertype, _res, _index, hatype, _kind, size, address = _SLL2.unpack_from(data)
    return (address[:6].hex(":") if hatype == _ARPHRD_ETHER and size == 6 else None), None, ethertype, 20


def _raw_ip(data: bytes, only: int | None) -> _Framing:
    version = data[0] >> 4 if data else 0
    if version not in (4, 6) or (only is not None and version != only):
        return f"raw IP packet of version {version}"
    return None, None, ETHERTYPE_IPV4 if version == 4 else ETHERTYPE_IPV6, 0


_LINK_DECODERS: dict[LinkType, Callable[[bytes], _Framing]] = {
    LinkType.ETHERNET: _ethernet,
    LinkType.RAW: functools.partial(_raw_ip, only=None),
    LinkType.IPV4: functools.partial(_raw_ip, only=4),
    LinkType.IPV6: functools.partial(_raw_ip, only=6),
    LinkType.LINUX_SLL: _linux_sll,
    LinkType.LINUX_SLL2: _linux_sll2,
}

_Link = tuple[dt.datetime, int, str | None, str | None, int]

# -- IP --------------------------------------------------------------------------------------------

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")


def _decode_ipv4(data: bytes, start: int, link: _Link, offset: int) -> Decoded:
    # RFC 791 section 3.1.
    if len(data) - start < 20:
        return SkippedPacket(offset, "short IPv4 header")
    vihl, _tos, total, _ident, fragment, _ttl, protocol, _sum, source, destination = _IPV4.unpack_from(
        data, start
    )
    header = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or header < 20:
        return SkippedPacket(offset, f"bad IPv4 version/IHL {vihl:#04x}")
    if len(data) - start < header:
        return SkippedPacket(offset, "truncated IPv4 options")
    if total == 0:  # TCP segmentation offload: the NIC fills the length in later
        total = len(data) - start
    if total < header:
        return SkippedPacket(offset, f"IPv4 total length {total} is shorter than its header")
    head = (*link, 4, _ipv4_text(source), _ipv4_text(destination), protocol, total)
    if fragment & 0x1FFF:  # a non-first fragment: no transport header
        return Packet(*head, payload_length=total - header, fragment=True)
    return _decode_transport(data, start + header, total - header, head, offset)


_ipv4_text = functools.partial(socket.inet_ntop, socket.AF_INET)


@functools.lru_cache(maxsize=4096)
def _ipv6_text(raw: bytes) -> str:
    # ipaddress, not inet_ntop: the same RFC 5952 text as every other module's addresses.
    return str(ipaddress.IPv6Address(raw))


def _decode_ipv6(data: bytes, start: int, link: _Link, offset: int) -> Decoded:
    # RFC 8200 section 3, then its extension headers (section 4), at most MAX_IPV6_EXTENSION_HEADERS.
    if len(data) - start < 40:
        return SkippedPacket(offset, "short IPv6 header")
    first_word, payload, protocol, _hops, source, destination = _IPV6.unpack_from(data, start)
    if first_word >> 28 != 6:
        return SkippedPacket(offset, f"bad IPv6 version {first_word >> 28}")
    if payload == 0:  # a jumbogram (RFC 2675) or offload: take what was captured
        payload = len(data) - start - 40
    walked = _ipv6_extensions(data, start + 40, protocol)
    if isinstance(walked, str):
        return SkippedPacket(offset, walked)
    protocol, pos, first = walked
    remaining = payload - (pos - start - 40)
    if remaining < 0:
        return SkippedPacket(offset, "IPv6 extension headers overrun the payload length")
    head = (*link, 6, _ipv6_text(source), _ipv6_text(destination), protocol, payload + 40)
    if not first:
        return Packet(*head, payload_length=remaining, fragment=True)
    return _decode_transport(data, pos, remaining, head, offset)


def _ipv6_extensions(data: bytes, pos: int, protocol: int) -> tuple[int, int, bool] | str:
    """Step over IPv6 extension headers; return (upper protocol, its offset, first fragment?)."""
    first = True
    for _ in range(MAX_IPV6_EXTENSION_HEADERS + 1):
        if protocol not in _IPV6_EXTENSIONS and protocol not in (_IPV6_FRAGMENT, _IPV6_AH):
            return protocol, pos, first
        if len(data) < pos + 8:
            return "truncated IPv6 extension header"
        if protocol == _IPV6_FRAGMENT:
            first, size = first and _U16.unpack_from(data, pos + 2)[0] >> 3 == 0, 8
        elif protocol == _IPV6_AH:
            size = (data[pos + 1] + 2) * 4
        else:
            size = (data[pos + 1] + 1) * 8
        protocol, pos = data[pos], pos + size
    return f"more than {MAX_IPV6_EXTENSION_HEADERS} IPv6 extension headers"


# -- transport -------------------------------------------------------------------------------------

_PORTS = struct.Struct("!HH")
_Head = tuple[
    dt.datetime, int, str | None, str | None, int, int, str, str, int, int
]  # link fields, IP fields


def _decode_transport(data: bytes, pos: int, size: int, head: _Head, offset: int) -> Decoded:
    """Decode TCP (RFC 9293 3.1), UDP (RFC 768), ICMP (RFC 792) or ICMPv6 (RFC 4443 2.1)."""
    protocol = head[8]
    decoder = _TRANSPORT_DECODERS.get(protocol)
    if decoder is None:
        return Packet(*head, payload_length=size)
    return decoder(data, pos, size, head, offset)


def _tcp(data: bytes, pos: int, size: int, head: _Head, offset: int) -> Decoded:
    if len(data) - pos < 20 or size < 20:
        return SkippedPacket(offset, "truncated TCP header")
    sport, dport = _PORTS.unpack_from(data, pos)
    header = (data[pos + 12] >> 4) * 4
    if header < 20 or header > size:
        return SkippedPacket(offset, f"bad TCP data offset {header // 4}")
    flags = data[pos + 13] | (data[pos + 12] & 1) << 8  # with NS (RFC 3540)
    return Packet(*head, sport, dport, flags, payload_length=size - header)


def _udp(data: bytes, pos: int, size: int, head: _Head, offset: int) -> Decoded:
    if len(data) - pos < 8 or size < 8:
        return SkippedPacket(offset, "truncated UDP header")
    sport, dport = _PORTS.unpack_from(data, pos)
    answers: tuple[DnsAnswer, ...] = ()
    error = None
    if _DNS_PORT in (sport, dport):
        try:
            answers = parse_dns_answers(data[pos + 8 : pos + size])
        except CaptureInvalid as exc:  # the device's bad DNS is recorded, not fatal to the file
            error = exc.message
    return Packet(*head, sport, dport, payload_length=size - 8, dns_answers=answers, dns_error=error)


def _icmp(data: bytes, pos: int, size: int, head: _Head, offset: int) -> Decoded:
    if len(data) - pos < 4 or size < 4:
        return SkippedPacket(offset, "truncated ICMP header")
    return Packet(*head, icmp_type=data[pos], icmp_code=data[pos + 1], payload_length=size - 4)


_TRANSPORT_DECODERS: dict[int, Callable[[bytes, int, int, _Head, int], Decoded]] = {
    _TCP: _tcp,
    _UDP: _udp,
    _ICMP: _icmp,
    _ICMPV6: _icmp,
}


# -- DNS -------------------------------------------------------------------------------------------

_DNS_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_TYPE_A, _TYPE_CNAME, _TYPE_AAAA, _CLASS_IN = 1, 5, 28, 1
_NAME_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*")


def parse_dns_answers(message: bytes) -> tuple[DnsAnswer, ...]:
    """Return the A/AAAA answers of a DNS response, each under the name that was asked.

    A query, or a response with an error RCODE, has no answers. CNAME chains in the answer section
    are followed back to the question (at most :data:`MAX_DNS_CNAME_CHAIN` links). Raises
    ``CaptureInvalid`` when the message is truncated, has more than :data:`MAX_DNS_QUESTIONS`
    questions or :data:`MAX_DNS_ANSWERS` answers, or a name is over 255 octets, uses a reserved label
    type or a compression pointer that does not point before the name (a loop; RFC 1035 4.1.4).
    """
    # RFC 1035 section 4.1.1: id, flags (QR is the top bit, RCODE the low four), four counts.
    if len(message) < 12:
        raise CaptureInvalid(f"DNS message of {len(message)} bytes is shorter than its header")
    _ident, flags, questions, answers, _ns, _ar = _DNS_HEADER.unpack_from(message)
    if not flags & 0x8000 or flags & 0x000F:
        return ()
    if questions > MAX_DNS_QUESTIONS or answers > MAX_DNS_ANSWERS:
        raise CaptureInvalid(f"DNS message has {questions} questions and {answers} answers (too many)")
    pos, asked = 12, ""
    for index in range(questions):
        name, pos = _dns_name(message, pos)
        asked = asked if index else name
        pos += 4
    aliases: dict[str, str] = {}  # CNAME target -> the name it is an alias of
    found: list[tuple[str, str]] = []
    for _ in range(answers):
        owner, pos = _dns_name(message, pos)
        if pos + 10 > len(message):
            raise CaptureInvalid(f"DNS resource record at offset {pos} is truncated")
        rtype, rclass, _ttl, rdlength = _RR.unpack_from(message, pos)
        pos += 10
        if pos + rdlength > len(message):
            raise CaptureInvalid(f"DNS record data at offset {pos} overruns the message")
        if rclass & 0x7FFF == _CLASS_IN:  # the top bit is mDNS's cache-flush (RFC 6762 10.2)
            if rtype == _TYPE_A and rdlength == 4:
                found.append((owner, socket.inet_ntop(socket.AF_INET, message[pos : pos + 4])))
            elif rtype == _TYPE_AAAA and rdlength == 16:
                found.append((owner, _ipv6_text(message[pos : pos + 16])))
            elif rtype == _TYPE_CNAME:
                aliases.setdefault(_dns_name(message, pos)[0], owner)
        pos += rdlength
    return tuple(DnsAnswer(_alias_head(owner, aliases, asked), address) for owner, address in found)


def _alias_head(name: str, aliases: dict[str, str], asked: str) -> str:
    """Walk a CNAME chain back towards the question; stop at it, at a cycle, or after the bound."""
    seen = {name}
    for _ in range(MAX_DNS_CNAME_CHAIN):
        if name == asked or name not in aliases:
            return name
        name = aliases[name]
        if name in seen:
            return name
        seen.add(name)
    return name


def _dns_name(message: bytes, start: int) -> tuple[str, int]:
    """Read a possibly compressed name (RFC 1035 4.1.4); return it (lower case) and the next offset.

    Every pointer must go to an offset before anything read so far for this name, so offsets only
    decrease and the walk ends; bytes outside letters, digits, ``-``, ``_`` and ``*`` are written
    ``\\DDD`` as in zone files (RFC 1035 5.1), so a name is always safe text.
    """
    labels: list[str] = []
    pos, lowest, after, octets = start, start, -1, 0
    for _ in range(_MAX_DNS_NAME + _MAX_DNS_POINTERS):
        if pos >= len(message):
            raise CaptureInvalid(f"DNS name at offset {start} runs past the end of the message")
        size = message[pos]
        if size & 0xC0 == 0xC0:
            if pos + 1 >= len(message):
                raise CaptureInvalid(f"DNS name at offset {start}: truncated compression pointer")
            target = (size & 0x3F) << 8 | message[pos + 1]
            if target >= lowest:
                raise CaptureInvalid(
                    f"DNS name at offset {start}: compression pointer to {target} does not point "
                    "before the name (a loop)"
                )
            after = pos + 2 if after < 0 else after
            pos = lowest = target
            continue
        if size & 0xC0:
            raise CaptureInvalid(f"DNS name at offset {start}: reserved label type {size:#04x}")
        octets += size + 1
        if octets > _MAX_DNS_NAME:
            raise CaptureInvalid(f"DNS name at offset {start} is longer than {_MAX_DNS_NAME} octets")
        if size == 0:
            return ".".join(labels), (pos + 1 if after < 0 else after)
        label = message[pos + 1 : pos + 1 + size]
        if len(label) < size:
            raise CaptureInvalid(f"DNS name at offset {start} runs past the end of the message")
        labels.append(_label_text(label))
        pos += size + 1
    raise CaptureInvalid(f"DNS name at offset {start} has too many labels")  # unreachable: octets bound


def _label_text(label: bytes) -> str:
    if all(byte in _NAME_SAFE for byte in label):
        return label.decode("ascii").lower()
    return "".join(chr(b).lower() if b in _NAME_SAFE else f"\\{b:03d}" for b in label)
