"""Packet captures (pcap, pcapng) read into :class:`~fleetguard.monitor.model.PacketColumns`, fast.

Theory of operation. Monitoring reads captures of whole fleets, so the per-packet cost must be a
few microseconds (the goal is 300,000 packets/s on one core). The reader works in two passes over a
bounded window of the file (:data:`CHUNK_BYTES`, refilled as it goes):

1. *framing*: a tight loop walks the record headers (pcap, draft-ietf-opsawg-pcap section 5) or
   blocks (pcapng, draft-ietf-opsawg-pcapng section 3.1) and notes where each frame starts, its
   captured and wire lengths, its timestamp and link type. No object is made per packet;
2. *decoding*: the link, IP and transport headers of a whole batch are decoded at once with numpy
   gathers (``ndarray.take`` at computed offsets, clipped to the window so that a lying length can
   never index out of it): Ethernet with up to ``MAX_VLAN_TAGS`` 802.1Q/802.1ad tags, raw IP (101,
   228, 229), Linux SLL/SLL2; IPv4 (RFC 791), IPv6 with at most ``MAX_IPV6_EXTENSION_HEADERS``
   extension headers (RFC 8200 section 4), TCP ports and flags (RFC 9293 3.1), UDP ports (RFC 768),
   ICMP/ICMPv6 (RFC 792, RFC 4443). As in Zeek's conn.log, an ICMP packet's ``sport``/``dport``
   are its type and code. Addresses become FNV-1a keys, computed vectorized
   (:func:`~fleetguard.monitor.model.address_key` gives the same values).

Damage never raises, except :class:`~fleetguard.monitor.errors.CaptureCorrupt` for a file that is
not a capture at all (bad magic, truncated file header). A frame that cannot be decoded (short or
malformed headers, an unsupported link type) is counted in :class:`~fleetguard.monitor.model.Skipped`
and the rest are read. Damage to the framing (a record length over ``MAX_SNAPLEN``, a bad block
length, a record cut off by the end of the file) is counted once and ends the reading: nothing after
it can be trusted to be framed correctly. Reaching ``max_packets`` or ``max_bytes`` is counted the
same way. A frame whose captured length exceeds its wire length keeps the larger as ``length``.

The format rules shared with segmentation (pcap magics, pcapng section byte order, interface
options) come from :mod:`fleetguard.segment.capture`, which reads the same formats strictly, one
packet object at a time, for profile learning.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from fleetguard.monitor.errors import CaptureCorrupt
from fleetguard.monitor.model import PacketColumns, Skipped
from fleetguard.segment.capture import (
    DEFAULT_MAX_PACKETS,
    MAX_CAPTURE_BYTES,
    MAX_IPV6_EXTENSION_HEADERS,
    MAX_SNAPLEN,
    MAX_VLAN_TAGS,
    PCAP_MAGIC,
    LinkType,
    parse_interface,
    section_byte_order,
)
from fleetguard.segment.errors import CaptureInvalid

__all__ = [
    "CHUNK_BYTES",
    "DEFAULT_BATCH",
    "DEFAULT_MAX_PACKETS",
    "MAX_ADDRESSES",
    "MAX_CAPTURE_BYTES",
    "iter_batches",
    "read_packets",
    "read_stream",
]

DEFAULT_BATCH = 65_536
MAX_BATCH = 1_048_576
MAX_ADDRESSES = 100_000  # address texts kept per result, for evidence
CHUNK_BYTES = 8 * 1024**2  # the window read at a time; a record (<= MAX_SNAPLEN) always fits
MAX_BLOCK_LENGTH = 8 * 1024**2  # a pcapng block, as segment.capture bounds it
MAX_INTERFACES = 1024  # pcapng IDBs per section

_SHB = 0x0A0D0D0A  # pcapng section 4.1: a palindrome, so read the same in both byte orders
_SHB_BYTES = b"\x0a\x0d\x0d\x0a"
_IDB, _PB, _SPB, _EPB = 1, 2, 3, 6  # pcapng sections 4.2-4.4, appendix A (obsolete Packet Block)
_NO_LINK = -1

# FNV-1a 64 (draft-eastlake-fnv section 2): the same as fleetguard.monitor.model.address_key.
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)

_TCP, _UDP, _ICMP, _ICMPV6 = 6, 17, 1, 58
_IPV6_EXTENSIONS = (0, 43, 60)  # hop-by-hop, routing, destination options (RFC 8200 4.3-4.6)
_IPV6_FRAGMENT, _IPV6_AH = 44, 51  # RFC 8200 4.5; RFC 4302 2.2 (length in 4-octet units, minus 2)
_VLAN_ETHERTYPES = (0x8100, 0x88A8, 0x9100)
_ETHERTYPE_IPV4, _ETHERTYPE_IPV6 = 0x0800, 0x86DD
_ARPHRD_ETHER = 1

# Why a frame was not decoded: index = the code in the decoder's ``why`` array (0: decoded).
_REASONS = (
    "",
    "unsupported link type",
    "short link-layer header",
    "short VLAN tag",
    "raw IP packet of another version",
    "short IPv4 header",
    "bad IPv4 version/IHL",
    "truncated IPv4 options",
    "IPv4 total length shorter than its header",
    "short IPv6 header",
    "bad IPv6 version",
    "truncated IPv6 extension header",
    "too many IPv6 extension headers",
    "IPv6 extension headers overrun the payload length",
    "truncated TCP header",
    "bad TCP data offset",
    "truncated UDP header",
    "truncated ICMP header",
)
(
    _OK, _LINK, _SHORT_LINK, _SHORT_VLAN, _RAW_VERSION, _SHORT_IPV4, _BAD_IPV4, _IPV4_OPTIONS, _IPV4_TOTAL,
    _SHORT_IPV6, _BAD_IPV6, _IPV6_EXT_SHORT, _IPV6_EXT_MANY, _IPV6_EXT_OVERRUN, _SHORT_TCP, _TCP_OFFSET,
    _SHORT_UDP, _SHORT_ICMP,
) = range(len(_REASONS))  # fmt: skip

# Framing damage: counted once, then reading stops.
_TRUNCATED = "record cut off by the end of the file"
_HUGE_RECORD = f"record length over {MAX_SNAPLEN} (framing lost; rest of file not read)"
_BAD_BLOCK = "bad pcapng block length (framing lost; rest of file not read)"
_BAD_SECTION = "bad pcapng section header (rest of file not read)"
_BAD_INTERFACE = "bad pcapng interface description"
_MANY_INTERFACES = f"more than {MAX_INTERFACES} pcapng interfaces"
_UNDESCRIBED = "packet of an undescribed pcapng interface"
_SHORT_BLOCK = "pcapng packet block too short for its captured length"
_MAX_PACKETS = "packet limit reached (rest of file not read)"
_MAX_BYTES = "byte limit reached (rest of file not read)"

_I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class _Frames:
    """Framed records of one window: where each frame's bytes start, and its header fields."""

    start: _I64
    caplen: _I64
    wirelen: _I64
    ts: npt.NDArray[np.float64]
    link: _I64


# -- public API ------------------------------------------------------------------------------------


def read_packets(
    path: str | os.PathLike[str],
    *,
    max_packets: int = DEFAULT_MAX_PACKETS,
    max_bytes: int = MAX_CAPTURE_BYTES,
) -> tuple[PacketColumns, Skipped]:
    """Read a whole pcap/pcapng file; return its packets as columns and what was skipped, by reason.

    ``addresses`` holds the text of at most :data:`MAX_ADDRESSES` keys. Raises ``CaptureCorrupt``
    when the file is not a capture (bad magic, truncated file header) and ``OSError`` when it cannot
    be opened.
    """
    parts: list[PacketColumns] = []
    skipped = Skipped()
    for columns, batch_skipped in iter_batches(path, max_packets=max_packets, max_bytes=max_bytes):
        parts.append(columns)
        for reason, count in batch_skipped.counts.items():
            skipped.add(reason, count)
    return _concatenate(parts), skipped


def iter_batches(
    path: str | os.PathLike[str],
    batch: int = DEFAULT_BATCH,
    *,
    max_packets: int = DEFAULT_MAX_PACKETS,
    max_bytes: int = MAX_CAPTURE_BYTES,
) -> Iterator[tuple[PacketColumns, Skipped]]:
    """Yield a capture's packets in batches of at most ``batch``, each with what was skipped since the last.

    Memory stays bounded by :data:`CHUNK_BYTES` and the batch size. A batch may be empty when it only
    reports skipped input. Raises as :func:`read_packets` does, and ``ValueError`` for a ``batch``
    outside 1..1,048,576.
    """
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch {batch} is not in 1..{MAX_BATCH}")
    with open(path, "rb") as stream:
        yield from _stream_batches(stream, batch, max_packets, max_bytes)


def read_stream(
    stream: BinaryIO, *, max_packets: int = DEFAULT_MAX_PACKETS, max_bytes: int = MAX_CAPTURE_BYTES
) -> tuple[PacketColumns, Skipped]:
    """:func:`read_packets` over an open binary stream (live capture hands its frames over this way)."""
    parts: list[PacketColumns] = []
    skipped = Skipped()
    for columns, batch_skipped in _stream_batches(stream, DEFAULT_BATCH, max_packets, max_bytes):
        parts.append(columns)
        for reason, count in batch_skipped.counts.items():
            skipped.add(reason, count)
    return _concatenate(parts), skipped


# -- framing ---------------------------------------------------------------------------------------


class _Window:
    """The bytes of the file being framed: a buffer refilled from the stream, within ``max_bytes``."""

    __slots__ = ("_left", "_stream", "buffer", "eof", "over_limit")

    def __init__(self, stream: BinaryIO, max_bytes: int) -> None:
        self._stream = stream
        self._left = max_bytes
        self.buffer = b""
        self.eof = False
        self.over_limit = False

    def refill(self, keep_from: int) -> None:
        """Drop the bytes before ``keep_from`` and read up to CHUNK_BYTES more."""
        want = min(CHUNK_BYTES, self._left)
        data = self._stream.read(want) if want else b""
        self._left -= len(data)
        if len(data) < want or not data:
            self.eof = True
            self.over_limit = want == 0 and bool(self._stream.read(1))
        self.buffer = self.buffer[keep_from:] + data

    def more(self, pos: int) -> bool:
        """Whether any byte follows ``pos`` (reading on when the window holds none)."""
        if len(self.buffer) > pos:
            return True
        self.refill(pos)
        return bool(self.buffer) or self.over_limit


class _Framer:
    """Walks records of one format in a window; ``stop`` names framing damage that ended the walk."""

    def __init__(self) -> None:
        self.stop: str | None = None
        self.skipped = Skipped()

    def take_skipped(self) -> Skipped:
        """Return what was skipped while framing since the last call."""
        skipped, self.skipped = self.skipped, Skipped()
        return skipped

    def frames(self, buffer: bytes, pos: int, limit: int) -> tuple[_Frames, int]:
        """Frame at most ``limit`` records from ``pos``; return them and where the next one starts."""
        raise NotImplementedError


class _PcapFramer(_Framer):
    def __init__(self, header: bytes) -> None:
        super().__init__()
        endian, divisor = PCAP_MAGIC[header[:4]]
        # draft-ietf-opsawg-pcap section 4: version, reserved x2, snaplen, link type (low 16 bits).
        major, _minor, _r1, _r2, _snaplen, link = struct.unpack_from(endian + "HHIIII", header, 4)
        if major != 2:
            raise CaptureCorrupt(f"offset 4: pcap version {major} is not 2")
        self._caplen = struct.Struct(endian + "I")
        self._endian = endian
        self._divisor = 1e6 * divisor
        self._link = _supported(link & 0xFFFF)

    def frames(self, buffer: bytes, pos: int, limit: int) -> tuple[_Frames, int]:
        starts: list[int] = []
        append, caplen_at, end = starts.append, self._caplen.unpack_from, len(buffer)
        last, left = end - 16, limit
        while left and pos <= last:  # the hot loop: one unpack and two comparisons per record
            caplen = caplen_at(buffer, pos + 8)[0]
            after = pos + 16 + caplen
            if after > end or caplen > MAX_SNAPLEN:
                self.stop = _HUGE_RECORD if caplen > MAX_SNAPLEN else None
                break
            append(pos)
            pos, left = after, left - 1
        heads = np.array(starts, np.int64)
        data = np.frombuffer(buffer, np.uint8)
        fields = [_u32(data, heads + k, self._endian) for k in (0, 4, 8, 12)]
        return _Frames(
            start=heads + 16,
            caplen=fields[2],
            wirelen=fields[3],
            ts=fields[0] + fields[1] / self._divisor,
            link=np.full(len(heads), self._link, np.int64),
        ), pos


@dataclass(frozen=True, slots=True)
class _Iface:
    link: int
    units: int
    shift: float
    snaplen: int


class _PcapngFramer(_Framer):
    def __init__(self, header: bytes) -> None:
        super().__init__()
        try:
            self._endian = section_byte_order(header[8:12], 0)
        except CaptureInvalid as exc:
            raise CaptureCorrupt(exc.message) from None
        self._interfaces: list[_Iface] = []
        self._last = 0.0  # a Simple Packet Block has no timestamp: the previous packet's stands in

    def frames(self, buffer: bytes, pos: int, limit: int) -> tuple[_Frames, int]:
        rows: list[tuple[int, int, int, float, int]] = []
        end = len(buffer)
        while len(rows) < limit and pos + 12 <= end:
            raw_type = buffer[pos : pos + 4]
            if raw_type == _SHB_BYTES:
                try:
                    self._endian = section_byte_order(buffer[pos + 8 : pos + 12], pos)
                except CaptureInvalid:
                    self.stop = _BAD_SECTION
                    break
                self._interfaces = []
            block_type, total = struct.unpack_from(self._endian + "II", buffer, pos)
            if total < 12 or total % 4 or total > MAX_BLOCK_LENGTH:
                self.stop = _BAD_BLOCK
                break
            if pos + total > end:
                break
            if buffer[pos + total - 4 : pos + total] != buffer[pos + 4 : pos + 8]:
                self.stop = _BAD_BLOCK
                break
            row = self._block(block_type, buffer, pos, total)
            if row is not None:
                rows.append(row)
            pos += total
        return _frames_of_rows(rows), pos

    def _block(
        self, block_type: int, buffer: bytes, pos: int, total: int
    ) -> tuple[int, int, int, float, int] | None:
        body = pos + 8
        if block_type == _IDB:
            self._describe(buffer[body : pos + total - 4], pos)
        elif block_type in (_EPB, _PB):
            return self._packet(block_type, buffer, body, pos + total - 4)
        elif block_type == _SPB:
            return self._simple_packet(buffer, body, pos + total - 4)
        return None

    def _describe(self, body: bytes, pos: int) -> None:
        if len(self._interfaces) >= MAX_INTERFACES:
            self.skipped.add(_MANY_INTERFACES)
            return
        try:
            interface = parse_interface(body, self._endian, pos)
        except CaptureInvalid:
            self.skipped.add(_BAD_INTERFACE)
            interface = None  # still an interface: later packets name it by its index
        if interface is None or interface.linktype is None:
            self._interfaces.append(_Iface(_NO_LINK, 1_000_000, 0.0, 0))
            return
        units, shift = interface.units_per_second, float(interface.offset_seconds)
        self._interfaces.append(_Iface(int(interface.linktype), units, shift, interface.snaplen))

    def _packet(
        self, block_type: int, buffer: bytes, body: int, end: int
    ) -> tuple[int, int, int, float, int] | None:
        # pcapng 4.3 (EPB): interface, timestamp high, low, captured, wire length; appendix A (PB):
        # the interface is 16 bits, then 16 bits of drop count.
        if end - body < 20:
            self.skipped.add(_SHORT_BLOCK)
            return None
        fmt = "HHIIII" if block_type == _PB else "IIIII"
        interface_id, *rest = struct.unpack_from(self._endian + fmt, buffer, body)
        high, low, caplen, wirelen = rest[-4:]
        if interface_id >= len(self._interfaces):
            self.skipped.add(_UNDESCRIBED)
            return None
        if caplen > end - body - 20:
            self.skipped.add(_SHORT_BLOCK)
            return None
        iface = self._interfaces[interface_id]
        seconds, rest = divmod(high << 32 | low, iface.units)  # whole seconds first: float64 keeps ~0.2 µs
        ts = seconds + rest / iface.units + iface.shift
        self._last = ts
        return body + 20, caplen, wirelen, ts, iface.link

    def _simple_packet(self, buffer: bytes, body: int, end: int) -> tuple[int, int, int, float, int] | None:
        # pcapng 4.4: the captured length is the block's, at most interface 0's snaplen; no timestamp.
        if end - body < 4 or not self._interfaces:
            self.skipped.add(_SHORT_BLOCK if end - body < 4 else _UNDESCRIBED)
            return None
        (wirelen,) = struct.unpack_from(self._endian + "I", buffer, body)
        iface = self._interfaces[0]
        caplen = min(wirelen, end - body - 4, iface.snaplen or MAX_SNAPLEN)
        return body + 4, caplen, wirelen, self._last, iface.link


def _frames_of_rows(rows: list[tuple[int, int, int, float, int]]) -> _Frames:
    if not rows:
        empty = np.zeros(0, np.int64)
        return _Frames(empty, empty, empty, np.zeros(0, np.float64), empty)
    start, caplen, wirelen, ts, link = zip(*rows, strict=True)
    return _Frames(
        np.array(start, np.int64), np.array(caplen, np.int64), np.array(wirelen, np.int64),
        np.array(ts, np.float64), np.array(link, np.int64),
    )  # fmt: skip


_LINK_TYPES = frozenset(int(kind) for kind in LinkType)


def _supported(link: int) -> int:
    return link if link in _LINK_TYPES else _NO_LINK


def _open_framer(stream: BinaryIO) -> tuple[_Framer, bytes]:
    """Read the file header; return the framer for its format and the header's bytes."""
    head = stream.read(4)
    if head == _SHB_BYTES:
        head += stream.read(8)
        if len(head) < 12:
            raise CaptureCorrupt("offset 0: truncated pcapng section header")
        return _PcapngFramer(head), head
    if head in PCAP_MAGIC:
        head += stream.read(20)
        if len(head) < 24:
            raise CaptureCorrupt("offset 0: truncated pcap file header")
        return _PcapFramer(head), head
    raise CaptureCorrupt(
        f"offset 0: not a pcap or pcapng file (magic {head.hex() or 'none'})",
        hint="give a capture written by tcpdump, dumpcap or Wireshark",
    )


def _stream_batches(
    stream: BinaryIO, batch: int, max_packets: int, max_bytes: int
) -> Iterator[tuple[PacketColumns, Skipped]]:
    framer, head = _open_framer(stream)
    window = _Window(stream, max(0, max_bytes - len(head)))
    if isinstance(framer, _PcapngFramer):
        window.buffer = head  # the first SHB is a block like any other
    names = _AddressBook()
    pos, count = 0, 0
    window.refill(0)
    while True:
        wanted = min(batch, max_packets - count)
        frames, pos = framer.frames(window.buffer, pos, wanted)
        framed = len(frames.start)
        count += framed
        skipped = framer.take_skipped()
        columns = _decode(window.buffer, frames, skipped, names) if framed else PacketColumns.empty()
        done = _finished(
            framer, window, pos, short=framed < wanted, at_limit=count >= max_packets, skipped=skipped
        )
        if len(columns) or skipped.total:
            yield columns, skipped
        if done:
            return
        if framed < wanted:  # the window is used up: slide it
            window.refill(pos)
            pos = 0


def _finished(
    framer: _Framer, window: _Window, pos: int, *, short: bool, at_limit: bool, skipped: Skipped
) -> bool:
    """Whether reading ends at ``pos``; counts why in ``skipped`` when it ends before the file does."""
    if framer.stop is not None:
        skipped.add(framer.stop)
        return True
    if at_limit:
        if window.more(pos):
            skipped.add(_MAX_PACKETS)
        return True
    if not short or not window.eof:
        return False
    if window.over_limit:
        skipped.add(_MAX_BYTES)
    elif len(window.buffer) > pos:
        skipped.add(_TRUNCATED)
    return True


# -- decoding --------------------------------------------------------------------------------------


def _u8(data: npt.NDArray[np.uint8], at: _I64) -> _I64:
    return data.take(at, mode="clip").astype(np.int64)


def _u16(data: npt.NDArray[np.uint8], at: _I64) -> _I64:
    return _u8(data, at) << 8 | _u8(data, at + 1)


def _u32(data: npt.NDArray[np.uint8], at: _I64, endian: str) -> _I64:
    parts = [_u8(data, at + k) for k in range(4)]
    if endian == "<":
        parts.reverse()
    return parts[0] << 24 | parts[1] << 16 | parts[2] << 8 | parts[3]


def _fnv(data: npt.NDArray[np.uint8], at: _I64, size: int) -> npt.NDArray[np.uint64]:
    value = np.full(len(at), _FNV_OFFSET, np.uint64)
    for k in range(size):
        value ^= data.take(at + k, mode="clip").astype(np.uint64)
        value *= _FNV_PRIME  # uint64 arrays wrap modulo 2**64, as FNV wants
    return value


def _mac(data: npt.NDArray[np.uint8], at: _I64) -> npt.NDArray[np.uint64]:
    value = np.zeros(len(at), np.uint64)
    for k in range(6):
        value = value << np.uint64(8) | data.take(at + k, mode="clip").astype(np.uint64)
    return value


class _Batch:
    """The per-packet state of the vectorized decoder (every attribute is an array over the batch)."""

    def __init__(self, data: npt.NDArray[np.uint8], frames: _Frames) -> None:
        size = len(frames.start)
        self.data = data
        self.frames = frames
        self.end = frames.start + frames.caplen  # the first byte after the captured frame
        self.why = np.zeros(size, np.int64)
        self.ethertype = np.zeros(size, np.int64)
        self.l3 = frames.start.copy()
        self.src_mac = np.zeros(size, np.uint64)
        self.version = np.zeros(size, np.int64)
        self.proto = np.zeros(size, np.int64)
        self.l4 = np.zeros(size, np.int64)
        self.l4_size = np.zeros(size, np.int64)
        self.first = np.ones(size, bool)
        self.sport = np.zeros(size, np.int64)
        self.dport = np.zeros(size, np.int64)
        self.flags = np.zeros(size, np.int64)

    def fail(self, mask: npt.NDArray[np.bool_], code: int) -> None:
        """Mark the packets under ``mask`` that are still good as skipped with ``code``."""
        self.why[mask & (self.why == _OK)] = code

    def good(self, mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """Narrow ``mask`` to the packets not yet skipped."""
        ok: npt.NDArray[np.bool_] = mask & (self.why == _OK)
        return ok


def _link_layer(b: _Batch) -> None:
    """Find the ethertype and network-layer offset of each frame (per link type)."""
    data, start, cap, link = b.data, b.frames.start, b.frames.caplen, b.frames.link
    b.fail(link == _NO_LINK, _LINK)
    # IEEE 802.3 Ethernet, then up to MAX_VLAN_TAGS 802.1Q/802.1ad tags.
    eth = link == int(LinkType.ETHERNET)
    b.fail(eth & (cap < 14), _SHORT_LINK)
    eth = b.good(eth)
    b.ethertype[eth] = _u16(data, start[eth] + 12)
    b.l3[eth] = start[eth] + 14
    b.src_mac[eth] = _mac(data, start[eth] + 6)
    for _ in range(MAX_VLAN_TAGS):
        tagged = b.good(np.isin(b.ethertype, _VLAN_ETHERTYPES) & eth)
        b.fail(tagged & (b.l3 + 4 > b.end), _SHORT_VLAN)
        tagged = b.good(tagged)
        b.ethertype[tagged] = _u16(data, b.l3[tagged] + 2)
        b.l3[tagged] += 4
    _cooked(b, link == int(LinkType.LINUX_SLL), _SLL)
    _cooked(b, link == int(LinkType.LINUX_SLL2), _SLL2)
    for kind, versions in (
        (LinkType.RAW, (4, 6)), (LinkType.IPV4, (4,)), (LinkType.IPV6, (6,))
    ):  # fmt: skip
        raw = link == int(kind)
        b.fail(raw & (cap < 1), _SHORT_LINK)
        version = _u8(data, start) >> 4
        b.fail(raw & ~np.isin(version, versions), _RAW_VERSION)
        raw = b.good(raw)
        b.ethertype[raw] = np.where(version[raw] == 4, _ETHERTYPE_IPV4, _ETHERTYPE_IPV6)


@dataclass(frozen=True, slots=True)
class _Cooked:
    """Where a Linux cooked header keeps its fields (offsets from the frame's start)."""

    header: int
    protocol: int
    hatype: int
    address_length: int
    address_length_bytes: int
    address: int


# https://www.tcpdump.org/linktypes/LINKTYPE_LINUX_SLL.html and LINKTYPE_LINUX_SLL2.html
_SLL = _Cooked(header=16, protocol=14, hatype=2, address_length=4, address_length_bytes=2, address=6)
_SLL2 = _Cooked(header=20, protocol=0, hatype=8, address_length=11, address_length_bytes=1, address=12)


def _cooked(b: _Batch, mask: npt.NDArray[np.bool_], layout: _Cooked) -> None:
    """Linux cooked capture: the ethertype, and the sender's MAC when it is an Ethernet address."""
    b.fail(mask & (b.frames.caplen < layout.header), _SHORT_LINK)
    mask = b.good(mask)
    start = b.frames.start[mask]
    b.ethertype[mask] = _u16(b.data, start + layout.protocol)
    b.l3[mask] = start + layout.header
    at = start + layout.address_length
    length = _u16(b.data, at) if layout.address_length_bytes == 2 else _u8(b.data, at)
    ether = (_u16(b.data, start + layout.hatype) == _ARPHRD_ETHER) & (length == 6)
    b.src_mac[mask] = np.where(ether, _mac(b.data, start + layout.address), np.uint64(0))


def _ipv4(b: _Batch) -> None:
    """RFC 791 section 3.1."""
    data = b.data
    ip = b.ethertype == _ETHERTYPE_IPV4
    b.fail(ip & (b.end - b.l3 < 20), _SHORT_IPV4)
    ip = b.good(ip)
    l3, avail = b.l3[ip], (b.end - b.l3)[ip]
    vihl = _u8(data, l3)
    header = (vihl & 0x0F) * 4
    total = _u16(data, l3 + 2)
    total = np.where(total == 0, avail, total)  # TCP segmentation offload: the NIC fills it in later
    bad = (vihl >> 4 != 4) | (header < 20)
    b.why[ip] = np.select([bad, avail < header, total < header], [_BAD_IPV4, _IPV4_OPTIONS, _IPV4_TOTAL], _OK)
    b.version[ip] = 4
    b.proto[ip] = _u8(data, l3 + 9)
    b.first[ip] = (_u16(data, l3 + 6) & 0x1FFF) == 0
    b.l4[ip] = l3 + header
    b.l4_size[ip] = total - header


def _ipv6(b: _Batch) -> None:
    """RFC 8200 section 3, then its extension headers (section 4), at most MAX_IPV6_EXTENSION_HEADERS."""
    data = b.data
    ip = b.ethertype == _ETHERTYPE_IPV6
    b.fail(ip & (b.end - b.l3 < 40), _SHORT_IPV6)
    b.fail(ip & (_u8(data, b.l3) >> 4 != 6), _BAD_IPV6)
    ip = b.good(ip)
    l3 = b.l3[ip]
    payload = _u16(data, l3 + 4)
    payload = np.where(payload == 0, (b.end - b.l3)[ip] - 40, payload)  # jumbogram (RFC 2675) or offload
    b.version[ip] = 6
    b.proto[ip] = _u8(data, l3 + 6)
    b.l4[ip] = l3 + 40
    b.l4_size[ip] = payload
    for _ in range(MAX_IPV6_EXTENSION_HEADERS):
        ext = b.good(ip & np.isin(b.proto, (*_IPV6_EXTENSIONS, _IPV6_FRAGMENT, _IPV6_AH)))
        if not ext.any():
            break
        b.fail(ext & (b.end - b.l4 < 8), _IPV6_EXT_SHORT)
        ext = b.good(ext)
        pos, proto = b.l4[ext], b.proto[ext]
        length = _u8(data, pos + 1)
        size = np.where(
            proto == _IPV6_FRAGMENT, 8, np.where(proto == _IPV6_AH, (length + 2) * 4, (length + 1) * 8)
        )
        fragment = proto == _IPV6_FRAGMENT
        b.first[ext] &= ~fragment | ((_u16(data, pos + 2) >> 3) == 0)
        b.proto[ext] = _u8(data, pos)
        b.l4[ext] = pos + size
        b.l4_size[ext] -= size
    b.fail(ip & np.isin(b.proto, (*_IPV6_EXTENSIONS, _IPV6_FRAGMENT, _IPV6_AH)), _IPV6_EXT_MANY)
    b.fail(ip & (b.l4_size < 0), _IPV6_EXT_OVERRUN)


def _transport(b: _Batch) -> None:
    """Ports and flags of TCP (RFC 9293 3.1) and UDP (RFC 768); type and code of ICMP/ICMPv6."""
    data, captured = b.data, b.end - b.l4
    ip = b.good(b.first & (b.version > 0))
    tcp, udp = ip & (b.proto == _TCP), ip & (b.proto == _UDP)
    icmp = ip & (((b.proto == _ICMP) & (b.version == 4)) | ((b.proto == _ICMPV6) & (b.version == 6)))
    b.fail(tcp & ((captured < 14) | (b.l4_size < 20)), _SHORT_TCP)
    offset = _u8(data, b.l4 + 12) >> 4
    b.fail(tcp & ((offset < 5) | (offset * 4 > b.l4_size)), _TCP_OFFSET)
    b.fail(udp & ((captured < 4) | (b.l4_size < 8)), _SHORT_UDP)
    b.fail(icmp & ((captured < 2) | (b.l4_size < 4)), _SHORT_ICMP)
    ported = b.good(tcp | udp)
    b.sport[ported] = _u16(data, b.l4[ported])
    b.dport[ported] = _u16(data, b.l4[ported] + 2)
    tcp = b.good(tcp)
    b.flags[tcp] = _u8(data, b.l4[tcp] + 13)
    icmp = b.good(icmp)
    b.sport[icmp] = _u8(data, b.l4[icmp])
    b.dport[icmp] = _u8(data, b.l4[icmp] + 1)


def _decode(buffer: bytes, frames: _Frames, skipped: Skipped, names: _AddressBook) -> PacketColumns:
    """Decode a batch of framed records (see the module docstring); count the undecodable in ``skipped``."""
    b = _Batch(np.frombuffer(buffer, np.uint8), frames)
    _link_layer(b)
    _ipv4(b)
    _ipv6(b)
    _transport(b)
    for code, count in enumerate(np.bincount(b.why, minlength=len(_REASONS)).tolist()):
        if code != _OK and count:
            skipped.add(_REASONS[code], count)
    keep = b.why == _OK
    src, dst = np.zeros(len(keep), np.uint64), np.zeros(len(keep), np.uint64)
    for version, offsets, size in ((4, (12, 16), 4), (6, (8, 24), 16)):
        rows = keep & (b.version == version)
        src[rows] = _fnv(b.data, b.l3[rows] + offsets[0], size)
        dst[rows] = _fnv(b.data, b.l3[rows] + offsets[1], size)
    return PacketColumns(
        ts=frames.ts[keep],
        src=src[keep],
        dst=dst[keep],
        sport=b.sport[keep].astype(np.uint16),
        dport=b.dport[keep].astype(np.uint16),
        proto=b.proto[keep].astype(np.uint8),
        length=np.maximum(frames.wirelen, frames.caplen)[keep].astype(np.uint32),
        tcp_flags=b.flags[keep].astype(np.uint8),
        src_mac=b.src_mac[keep],
        addresses=names.texts(b, keep, src, dst),
    )


class _AddressBook:
    """Address texts by key, bounded by MAX_ADDRESSES (the texts are made once per key)."""

    def __init__(self) -> None:
        self._known: dict[int, str] = {}

    def texts(
        self, b: _Batch, keep: npt.NDArray[np.bool_], src: npt.NDArray[np.uint64], dst: npt.NDArray[np.uint64]
    ) -> dict[int, str]:
        """Return the text of each key of the batch (at most MAX_ADDRESSES), learning new ones."""
        found: dict[int, str] = {}
        ip = keep & (b.version > 0)
        keys = np.concatenate([src[ip], dst[ip]])
        at = np.concatenate(
            [b.l3[ip] + np.where(b.version[ip] == 4, 12, 8), b.l3[ip] + np.where(b.version[ip] == 4, 16, 24)]
        )
        versions = np.concatenate([b.version[ip], b.version[ip]])
        unique, index = np.unique(keys, return_index=True)
        for key, row in zip(unique.tolist()[:MAX_ADDRESSES], index.tolist(), strict=False):
            text = self._known.get(key)
            if text is None:
                text = _address_text(b.data, int(at[row]), int(versions[row]))
                if len(self._known) < MAX_ADDRESSES:
                    self._known[key] = text
            found[key] = text
        return found


def _address_text(data: npt.NDArray[np.uint8], at: int, version: int) -> str:
    if version == 4:
        return socket.inet_ntop(socket.AF_INET, data[at : at + 4].tobytes())
    return str(ipaddress.IPv6Address(data[at : at + 16].tobytes()))  # RFC 5952 text, as segment writes it


def _concatenate(parts: list[PacketColumns]) -> PacketColumns:
    if not parts:
        return PacketColumns.empty()
    addresses: dict[int, str] = {}
    for part in parts:
        for key, text in part.addresses.items():
            if len(addresses) >= MAX_ADDRESSES:
                break
            addresses.setdefault(key, text)

    def joined(name: str) -> npt.NDArray[Any]:
        return np.concatenate([getattr(part, name) for part in parts])

    return PacketColumns(
        ts=joined("ts"), src=joined("src"), dst=joined("dst"), sport=joined("sport"), dport=joined("dport"),
        proto=joined("proto"), length=joined("length"), tcp_flags=joined("tcp_flags"),
        src_mac=joined("src_mac"), addresses=addresses,
    )  # fmt: skip
