"""NetFlow v5, NetFlow v9 (RFC 3954) and IPFIX (RFC 7011) datagrams decoded into flow records.

Theory of operation. :class:`FlowDecoder` is a sans-I/O parser: the collector (or a test) hands it one
UDP payload, the exporter's address and the time it arrived, and gets back the :class:`FlowRecord`
values it carried. Nothing in the input raises: every datagram, set or record that cannot be used is
counted in :attr:`FlowDecoder.skipped` by reason, and parsing goes on with the next set or datagram.

* NetFlow v5 is a fixed format: a 24-byte header and up to 30 records of 48 bytes.
* NetFlow v9 and IPFIX are template based. Templates (and options templates) are kept per
  (exporter address, version, source id / observation domain, template id) in a cache bounded per
  exporter and overall; a template flood evicts the least recently used templates (counted in
  :attr:`FlowDecoder.stats`), so memory stays bounded whatever the exporters send. IPFIX template
  withdrawal (RFC 7011 8.1) removes one template or all of them. Options templates are learned so that
  their data records are recognized and skipped (``options_record``), never reported as unknown.
* Data sets whose template is not known yet (a collector restart, a template sent after its data) are
  held in a small bounded buffer and decoded when the template arrives; when the buffer is full the
  oldest set is dropped and counted (``unknown_template``, counted per data set: without the
  template its records cannot be counted).
* Field mapping: IPv4/IPv6 source and destination addresses, ports (ICMP type/code as Zeek does),
  protocol, octets and packets (with RFC 5103 reverse counters and the initiator/responder IEs of
  RFC 5102 as the destination side), TCP flags, and flow start/end in any of the sysUpTime, seconds,
  milliseconds, NTP micro/nanoseconds and delta-microseconds forms.
* Clocks. v5/v9 timestamps are milliseconds of the exporter's uptime, converted with the header's
  uptime and UNIX seconds modulo 2**32 (the uptime wraps after 49.7 days). An exporter whose clock is
  more than ``max_clock_skew`` seconds away from the arrival time (no NTP, a clock jump) has its export
  time re-anchored to the arrival time (counted in :attr:`FlowDecoder.stats`). Records whose times
  are impossible relative to the export time (ending after it, starting more than ``max_flow_age``
  before it, ending before they start) are skipped as ``clock_jump``.

What :attr:`FlowDecoder.skipped` counts is the unit named by the reason: whole datagrams
(``unknown_version``, ``short_header``, ``message_length``, ...), sets (``set_length``,
``set_truncated``, ``reserved_set_id``, ``unknown_template``), templates (``template_*``) and records
(``no_address``, ``clock_jump``, ``options_record``, ``truncated_record``).

Spoofing: UDP source addresses are trivially forged; nothing in NetFlow/IPFIX over UDP authenticates
the exporter. The defense is the collector's allow-list of exporter addresses plus the bounds here.
"""

from __future__ import annotations

import enum
import socket
import struct
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, assert_never

from fleetguard.monitor.model import FlowRecord, Skipped

__all__ = ["DecoderStats", "FlowDecoder"]

_V5_HEADER = struct.Struct("!HHIIIIBBH")  # Cisco NetFlow v5 export header, 24 bytes
# srcaddr dstaddr (nexthop input output) dPkts dOctets First Last srcport dstport (pad1) tcp_flags prot (rest)
_V5_RECORD = struct.Struct("!4s4s8xIIIIHHxBB9x")
_V5_MAX_COUNT = 30  # Cisco: at most 30 records per v5 datagram
_V9_HEADER = struct.Struct("!HHIIII")  # RFC 3954 5.1, 20 bytes
_IPFIX_HEADER = struct.Struct("!HHIII")  # RFC 7011 3.1, 16 bytes
_PAIR = struct.Struct("!HH")
_TRIPLE = struct.Struct("!HHH")
_U32 = struct.Struct("!I")
_VARIABLE = 65535  # RFC 7011 7: a field length of 65535 marks a variable-length field
_MAX_TEMPLATE_FIELDS = 512  # far above real templates (<100 fields); bounds the memory of one template
_UPTIME_WRAP = 1 << 32  # sysUpTime is unsigned32 milliseconds
_NTP_EPOCH = 2208988800  # seconds from 1900-01-01 (NTP, RFC 5905) to 1970-01-01
_REVERSE_PEN = 29305  # RFC 5103 6.1: reverse information elements use this enterprise number

# Set ids: RFC 3954 5.2/5.3 (v9) and RFC 7011 3.3.2 (IPFIX).
_V9_TEMPLATE, _V9_OPTIONS = 0, 1
_IPFIX_TEMPLATE, _IPFIX_OPTIONS = 2, 3
_FIRST_DATA_SET = 256

_PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp"}  # Zeek's names; ICMPv6 is "icmp" in Zeek too
_FLAG_LETTERS = "FSRPAUEC"  # TCP flag bits from the lowest (FIN) to CWR, RFC 9293 3.1
_FLAG_TEXT = tuple(
    "".join(letter for bit, letter in enumerate(_FLAG_LETTERS) if value >> bit & 1) for value in range(256)
)


class _Slot(enum.IntEnum):
    """What an information element means for a :class:`FlowRecord`."""

    SRC = enum.auto()
    DST = enum.auto()
    SPORT = enum.auto()
    DPORT = enum.auto()
    ICMP = enum.auto()
    PROTO = enum.auto()
    OCTETS = enum.auto()
    PACKETS = enum.auto()
    REV_OCTETS = enum.auto()
    REV_PACKETS = enum.auto()
    FLAGS = enum.auto()
    START = enum.auto()
    END = enum.auto()
    INIT_TIME = enum.auto()


class _Clock(enum.Enum):
    """How a flow timestamp is encoded (RFC 7012 / IANA IPFIX registry)."""

    UPTIME_MS = "uptime"  # flowStart/EndSysUpTime (21, 22): exporter uptime milliseconds
    SECONDS = "seconds"  # flowStart/EndSeconds (150, 151)
    MILLISECONDS = "ms"  # flowStart/EndMilliseconds (152, 153)
    NTP = "ntp"  # flowStart/EndMicro/Nanoseconds (154-157): 64-bit NTP timestamps
    DELTA_US = "delta"  # flowStart/EndDeltaMicroseconds (158, 159): microseconds before export time


# (enterprise number, element id) -> slot, clock encoding, and the lengths it may have.
# Element ids: IANA "IPFIX Information Elements"; ids below 128 are NetFlow v9's field types (RFC 3954 8).
_INTEGER = (1, 2, 3, 4, 5, 6, 7, 8)
_ELEMENTS: dict[tuple[int, int], tuple[_Slot, _Clock | None, tuple[int, ...]]] = {
    (0, 8): (_Slot.SRC, None, (4,)),  # sourceIPv4Address
    (0, 27): (_Slot.SRC, None, (16,)),  # sourceIPv6Address
    (0, 12): (_Slot.DST, None, (4,)),  # destinationIPv4Address
    (0, 28): (_Slot.DST, None, (16,)),  # destinationIPv6Address
    (0, 7): (_Slot.SPORT, None, _INTEGER),  # sourceTransportPort
    (0, 11): (_Slot.DPORT, None, _INTEGER),  # destinationTransportPort
    (0, 32): (_Slot.ICMP, None, _INTEGER),  # icmpTypeCodeIPv4
    (0, 139): (_Slot.ICMP, None, _INTEGER),  # icmpTypeCodeIPv6
    (0, 4): (_Slot.PROTO, None, _INTEGER),  # protocolIdentifier
    (0, 1): (_Slot.OCTETS, None, _INTEGER),  # octetDeltaCount (v9 IN_BYTES)
    (0, 85): (_Slot.OCTETS, None, _INTEGER),  # octetTotalCount
    (0, 231): (_Slot.OCTETS, None, _INTEGER),  # initiatorOctets
    (0, 2): (_Slot.PACKETS, None, _INTEGER),  # packetDeltaCount (v9 IN_PKTS)
    (0, 86): (_Slot.PACKETS, None, _INTEGER),  # packetTotalCount
    (0, 298): (_Slot.PACKETS, None, _INTEGER),  # initiatorPackets
    (_REVERSE_PEN, 1): (_Slot.REV_OCTETS, None, _INTEGER),  # reverseOctetDeltaCount, RFC 5103
    (0, 232): (_Slot.REV_OCTETS, None, _INTEGER),  # responderOctets
    (_REVERSE_PEN, 2): (_Slot.REV_PACKETS, None, _INTEGER),  # reversePacketDeltaCount, RFC 5103
    (0, 299): (_Slot.REV_PACKETS, None, _INTEGER),  # responderPackets
    (0, 6): (_Slot.FLAGS, None, _INTEGER),  # tcpControlBits (1 byte in v9, 2 in RFC 7125)
    (0, 22): (_Slot.START, _Clock.UPTIME_MS, _INTEGER),  # flowStartSysUpTime (v9 FIRST_SWITCHED)
    (0, 21): (_Slot.END, _Clock.UPTIME_MS, _INTEGER),  # flowEndSysUpTime (v9 LAST_SWITCHED)
    (0, 150): (_Slot.START, _Clock.SECONDS, _INTEGER),  # flowStartSeconds
    (0, 151): (_Slot.END, _Clock.SECONDS, _INTEGER),  # flowEndSeconds
    (0, 152): (_Slot.START, _Clock.MILLISECONDS, _INTEGER),  # flowStartMilliseconds
    (0, 153): (_Slot.END, _Clock.MILLISECONDS, _INTEGER),  # flowEndMilliseconds
    (0, 154): (_Slot.START, _Clock.NTP, (8,)),  # flowStartMicroseconds
    (0, 155): (_Slot.END, _Clock.NTP, (8,)),  # flowEndMicroseconds
    (0, 156): (_Slot.START, _Clock.NTP, (8,)),  # flowStartNanoseconds
    (0, 157): (_Slot.END, _Clock.NTP, (8,)),  # flowEndNanoseconds
    (0, 158): (_Slot.START, _Clock.DELTA_US, _INTEGER),  # flowStartDeltaMicroseconds
    (0, 159): (_Slot.END, _Clock.DELTA_US, _INTEGER),  # flowEndDeltaMicroseconds
    (0, 160): (_Slot.INIT_TIME, None, _INTEGER),  # systemInitTimeMilliseconds
}
_ADDRESS_SLOTS = (_Slot.SRC, _Slot.DST)


class _Field(NamedTuple):
    element: int
    enterprise: int
    length: int


@dataclass(frozen=True, slots=True)
class _Plan:
    """Where each slot's value sits in a decoded record's value tuple (-1: absent)."""

    positions: tuple[int, ...]  # indexed by _Slot
    start_clock: _Clock | None
    end_clock: _Clock | None

    def at(self, slot: _Slot) -> int:
        return self.positions[slot]


@dataclass(frozen=True, slots=True)
class _Template:
    fields: tuple[_Field, ...]
    options: bool
    fixed: struct.Struct | None  # None when a field is variable-length
    min_length: int  # a record is at least this long (variable-length fields count one byte)
    wanted: tuple[bool, ...]  # per field: is its value kept in the value tuple
    integer: tuple[bool, ...]  # per kept field: decoded as an unsigned integer (else bytes)
    widen: bool  # an integer field has a reduced-size length (RFC 7011 6.2) that struct reads as bytes
    plan: _Plan


@dataclass(frozen=True, slots=True)
class _Export:
    """The clock of one datagram: exporter time, uptime (v5/v9), and the re-anchoring offset."""

    source: str
    export: float
    uptime_ms: int  # -1 for IPFIX, which has no uptime in its header
    offset: float


@dataclass(frozen=True, slots=True)
class _Held:
    key: tuple[str, int, int, int]
    data: bytes
    export: _Export


@dataclass(frozen=True, slots=True)
class DecoderStats:
    """Template cache and clock events of a :class:`FlowDecoder` (not input loss; that is ``skipped``)."""

    templates: int
    templates_learned: int
    templates_evicted: int
    templates_withdrawn: int
    clock_reanchored: int
    held_sets: int


_TemplateKey = tuple[str, int, int, int]  # exporter address, version, source id / domain, template id


class FlowDecoder:
    """Decodes NetFlow v5/v9 and IPFIX datagrams (see the module docstring). Not thread-safe.

    ``max_templates`` bounds the template cache overall and ``max_templates_per_exporter`` per exporter
    address; ``hold_sets`` bounds the data sets held for a template not yet seen (0: skip them at once).
    """

    def __init__(
        self,
        *,
        max_templates: int = 4096,
        max_templates_per_exporter: int = 256,
        hold_sets: int = 32,
        max_clock_skew: float = 300.0,
        max_flow_age: float = 86400.0,
    ) -> None:
        if max_templates < 1 or max_templates_per_exporter < 1 or hold_sets < 0:
            raise ValueError("template cache bounds must be positive and hold_sets not negative")
        self.skipped = Skipped()
        self._max_templates = max_templates
        self._max_per_exporter = max_templates_per_exporter
        self._hold_sets = hold_sets
        self._max_skew = max_clock_skew
        self._max_age = max_flow_age
        self._templates: OrderedDict[_TemplateKey, _Template] = OrderedDict()
        self._by_exporter: dict[str, OrderedDict[_TemplateKey, None]] = {}
        self._held: deque[_Held] = deque()
        self._learned = self._evicted = self._withdrawn = self._reanchored = 0

    @property
    def stats(self) -> DecoderStats:
        """Return the template cache size and the counts of template and clock events so far."""
        return DecoderStats(
            len(self._templates), self._learned, self._evicted, self._withdrawn, self._reanchored,
            len(self._held),
        )  # fmt: skip

    def decode(self, datagram: bytes, exporter: str, received: datetime) -> list[FlowRecord]:
        """Return the flow records of one datagram from ``exporter`` that arrived at ``received``.

        Never raises on the datagram's content; what is not used is counted in :attr:`skipped`.
        Raises ValueError when ``received`` is naive (time must be timezone-aware).
        """
        if received.tzinfo is None:
            raise ValueError("received must be timezone-aware")
        arrival = received.timestamp()
        if len(datagram) < 2:
            self.skipped.add("unknown_version")
            return []
        version = datagram[0] << 8 | datagram[1]
        if version == 5:
            return self._decode_v5(datagram, arrival)
        if version == 9:
            return self._decode_v9(datagram, exporter, arrival)
        if version == 10:
            return self._decode_ipfix(datagram, exporter, arrival)
        self.skipped.add("unknown_version")
        return []

    # --- clocks -------------------------------------------------------------------------------------

    def _export(self, source: str, export: float, uptime_ms: int, arrival: float) -> _Export:
        offset = 0.0
        if abs(export - arrival) > self._max_skew:
            offset = arrival - export
            self._reanchored += 1
        return _Export(source, export, uptime_ms, offset)

    def _span(self, start: float, end: float, clock: _Export) -> tuple[float, float] | None:
        """Return (start, duration) in the collector's clock, or None when the times are impossible."""
        if end < start or start < clock.export - self._max_age or end > clock.export + self._max_skew:
            return None
        return start + clock.offset, end - start

    # --- NetFlow v5 ---------------------------------------------------------------------------------

    def _decode_v5(self, data: bytes, arrival: float) -> list[FlowRecord]:
        if len(data) < _V5_HEADER.size:
            self.skipped.add("short_header")
            return []
        _, count, uptime, secs, nsecs, _, _, _, _ = _V5_HEADER.unpack_from(data)
        if not 0 < count <= _V5_MAX_COUNT:
            self.skipped.add("v5_count")
            return []
        clock = self._export("netflow5", secs + nsecs / 1e9, uptime, arrival)
        present = min(count, (len(data) - _V5_HEADER.size) // _V5_RECORD.size)
        if present < count:
            self.skipped.add("truncated_record", count - present)
        records: list[FlowRecord] = []
        for index in range(present):
            src, dst, packets, octets, first, last, sport, dport, flags, proto = _V5_RECORD.unpack_from(
                data, _V5_HEADER.size + index * _V5_RECORD.size
            )
            span = self._uptime_span(first, last, clock)
            if span is None:
                self.skipped.add("clock_jump")
                continue
            records.append(
                FlowRecord(
                    start=span[0], duration=span[1], src=socket.inet_ntop(socket.AF_INET, src),
                    dst=socket.inet_ntop(socket.AF_INET, dst), sport=sport, dport=dport,
                    proto=_protocol(proto), src_bytes=octets, dst_bytes=0, src_packets=packets,
                    dst_packets=0, state=_FLAG_TEXT[flags] if proto == 6 else "", source="netflow5",
                )
            )  # fmt: skip
        return records

    def _uptime_span(self, first: int, last: int, clock: _Export) -> tuple[float, float] | None:
        # RFC 3954 8 (FIRST_SWITCHED, LAST_SWITCHED): sysUpTime milliseconds; ages modulo the wrap.
        start = clock.export - ((clock.uptime_ms - first) % _UPTIME_WRAP) / 1000
        end = clock.export - ((clock.uptime_ms - last) % _UPTIME_WRAP) / 1000
        return self._span(start, end, clock)

    # --- NetFlow v9 and IPFIX framing ---------------------------------------------------------------

    def _decode_v9(self, data: bytes, exporter: str, arrival: float) -> list[FlowRecord]:
        if len(data) < _V9_HEADER.size:
            self.skipped.add("short_header")
            return []
        _, _, uptime, secs, _, source_id = _V9_HEADER.unpack_from(data)
        clock = self._export("netflow9", float(secs), uptime, arrival)
        return self._decode_sets(data, _V9_HEADER.size, len(data), (exporter, 9, source_id), clock)

    def _decode_ipfix(self, data: bytes, exporter: str, arrival: float) -> list[FlowRecord]:
        if len(data) < _IPFIX_HEADER.size:
            self.skipped.add("short_header")
            return []
        _, length, export, _, domain = _IPFIX_HEADER.unpack_from(data)
        if length < _IPFIX_HEADER.size:
            self.skipped.add("message_length")
            return []
        if length > len(data):
            self.skipped.add("message_truncated")
            return []
        clock = self._export("ipfix", float(export), -1, arrival)
        return self._decode_sets(data, _IPFIX_HEADER.size, length, (exporter, 10, domain), clock)

    def _decode_sets(
        self, data: bytes, offset: int, end: int, domain: tuple[str, int, int], clock: _Export
    ) -> list[FlowRecord]:
        """Walk the sets of one message (RFC 3954 5.2-5.4, RFC 7011 3.3): templates first as they come."""
        records: list[FlowRecord] = []
        ipfix = domain[1] == 10
        while offset + 4 <= end:
            set_id, length = _PAIR.unpack_from(data, offset)
            if length < 4:
                self.skipped.add("set_length")  # cannot find the next set: the rest of the message is lost
                break
            if offset + length > end:
                self.skipped.add("set_truncated")
                break
            start, stop = offset + 4, offset + length
            offset = stop
            if set_id >= _FIRST_DATA_SET:
                self._data_set(data[start:stop], (*domain, set_id), clock, records)
            elif set_id == (_IPFIX_TEMPLATE if ipfix else _V9_TEMPLATE):
                self._template_set(data, start, stop, domain, records, options=False)
            elif set_id == (_IPFIX_OPTIONS if ipfix else _V9_OPTIONS):
                self._template_set(data, start, stop, domain, records, options=True)
            else:
                self.skipped.add("reserved_set_id")
        return records

    # --- templates ----------------------------------------------------------------------------------

    def _template_set(
        self, data: bytes, start: int, stop: int, domain: tuple[str, int, int], records: list[FlowRecord],
        *, options: bool,
    ) -> None:  # fmt: skip
        ipfix = domain[1] == 10
        offset = start
        while offset + 4 <= stop:
            template_id, count = _PAIR.unpack_from(data, offset)
            if template_id == 0 and count == 0 and not any(data[offset:stop]):
                return  # padding (RFC 3954 5.2, RFC 7011 3.3.1)
            if ipfix and count == 0:
                self._withdraw(domain, template_id)  # RFC 7011 8.1
                offset += 4
                continue
            parsed = self._template_record(data, offset, stop, ipfix=ipfix, options=options)
            if isinstance(parsed, str):
                self.skipped.add(parsed)
                if parsed == "template_truncated":
                    return
                offset = self._template_end(data, offset, stop, ipfix=ipfix, options=options)
                continue
            template, offset = parsed
            if template_id < _FIRST_DATA_SET:
                self.skipped.add("template_id")
                continue
            self._learn((*domain, template_id), template, records)

    def _template_record(  # noqa: PLR0911 (a parser: one return per kind of malformed template)
        self, data: bytes, offset: int, stop: int, *, ipfix: bool, options: bool
    ) -> tuple[_Template, int] | str:
        """Return a template and the offset after it, or the reason it is unusable."""
        header = _field_count(data, offset, stop, ipfix=ipfix, options=options)
        if isinstance(header, str):
            return header
        count, offset = header
        if count == 0:
            return "template_malformed"  # v9 has no withdrawal; an empty template describes nothing
        if count > _MAX_TEMPLATE_FIELDS:
            return "template_too_large"
        fields: list[_Field] = []
        for _ in range(count):
            if offset + 4 > stop:
                return "template_truncated"
            element, length = _PAIR.unpack_from(data, offset)
            offset += 4
            enterprise = 0
            if ipfix and element & 0x8000:  # RFC 7011 3.2: the enterprise bit, then a 4-byte PEN
                if offset + 4 > stop:
                    return "template_truncated"
                (enterprise,) = _U32.unpack_from(data, offset)
                offset += 4
                element &= 0x7FFF
            if length == 0 or (length == _VARIABLE and not ipfix):
                return "template_field_length"
            fields.append(_Field(element, enterprise, length))
        if sum(field.length for field in fields if field.length != _VARIABLE) > 65535:
            return "template_too_large"
        return _compile(tuple(fields), options=options), offset

    def _template_end(self, data: bytes, offset: int, stop: int, *, ipfix: bool, options: bool) -> int:
        """Return the offset after a malformed template record whose fields are all present."""
        header = _field_count(data, offset, stop, ipfix=ipfix, options=options)
        if isinstance(header, str):
            return stop
        count, offset = header
        for _ in range(count):
            if offset + 4 > stop:
                return stop
            element = data[offset] << 8 | data[offset + 1]
            offset += 8 if ipfix and element & 0x8000 else 4
        return offset

    def _learn(self, key: _TemplateKey, template: _Template, records: list[FlowRecord]) -> None:
        known = self._templates.get(key)
        if known is not None and known.fields == template.fields and known.options == template.options:
            self._templates.move_to_end(key)  # a periodic refresh (RFC 7011 8.4)
            self._by_exporter[key[0]].move_to_end(key)
            return
        self._forget(key)
        owned = self._by_exporter.setdefault(key[0], OrderedDict())
        if len(owned) >= self._max_per_exporter:
            self._forget(next(iter(owned)))
            self._evicted += 1
        if len(self._templates) >= self._max_templates:
            self._forget(next(iter(self._templates)))
            self._evicted += 1
        self._templates[key] = template
        self._by_exporter.setdefault(key[0], OrderedDict())[key] = None
        self._learned += 1
        if self._held:
            self._release(key, records)

    def _forget(self, key: _TemplateKey) -> bool:
        if self._templates.pop(key, None) is None:
            return False
        owned = self._by_exporter[key[0]]
        del owned[key]
        if not owned:
            del self._by_exporter[key[0]]
        return True

    def _withdraw(self, domain: tuple[str, int, int], template_id: int) -> None:
        # RFC 7011 8.1: template id 2 (3) withdraws all templates (options templates) of the domain.
        if template_id in (_IPFIX_TEMPLATE, _IPFIX_OPTIONS):
            options = template_id == _IPFIX_OPTIONS
            owned = self._by_exporter.get(domain[0], OrderedDict())
            keys = [key for key in owned if key[:3] == domain and self._templates[key].options == options]
        else:
            keys = [(*domain, template_id)]
        self._withdrawn += sum(self._forget(key) for key in keys)

    # --- data ---------------------------------------------------------------------------------------

    def _data_set(self, body: bytes, key: _TemplateKey, clock: _Export, records: list[FlowRecord]) -> None:
        template = self._templates.get(key)
        if template is None:
            self._hold(_Held(key, body, clock))
            return
        self._templates.move_to_end(key)  # least recently used first out of the cache
        self._by_exporter[key[0]].move_to_end(key)
        if template.options:
            self.skipped.add("options_record", max(1, len(body) // template.min_length))
            return
        values = _fixed_values(body, template) if template.fixed else self._variable_values(body, template)
        for value in values:
            record = self._record(value, template.plan, clock)
            if isinstance(record, str):
                self.skipped.add(record)
            else:
                records.append(record)

    def _hold(self, held: _Held) -> None:
        if self._hold_sets == 0:
            self.skipped.add("unknown_template")
            return
        if len(self._held) >= self._hold_sets:
            self._held.popleft()
            self.skipped.add("unknown_template")
        self._held.append(held)

    def _release(self, key: _TemplateKey, records: list[FlowRecord]) -> None:
        waiting = [held for held in self._held if held.key == key]
        if not waiting:
            return
        self._held = deque(held for held in self._held if held.key != key)
        for held in waiting:
            self._data_set(held.data, key, held.export, records)

    def _variable_values(self, body: bytes, template: _Template) -> list[tuple[int | bytes, ...]]:
        """Decode records with variable-length fields (RFC 7011 7: a 1-byte length, or 255 and 2 bytes)."""
        rows: list[tuple[int | bytes, ...]] = []
        offset, stop = 0, len(body)
        while stop - offset >= template.min_length:
            row: list[int | bytes] = []
            for field, wanted in zip(template.fields, template.wanted, strict=True):
                length = field.length
                if length == _VARIABLE:
                    if offset >= stop:
                        self.skipped.add("variable_length_overflow")
                        return rows
                    length = body[offset]
                    offset += 1
                    if length == 255:
                        if offset + 2 > stop:
                            self.skipped.add("variable_length_overflow")
                            return rows
                        length = body[offset] << 8 | body[offset + 1]
                        offset += 2
                if offset + length > stop:
                    self.skipped.add("variable_length_overflow")
                    return rows
                if wanted:
                    raw = body[offset : offset + length]
                    row.append(int.from_bytes(raw, "big") if template.integer[len(row)] else raw)
                offset += length
            rows.append(tuple(row))
        return rows

    def _record(self, values: tuple[int | bytes, ...], plan: _Plan, clock: _Export) -> FlowRecord | str:
        src, dst = plan.at(_Slot.SRC), plan.at(_Slot.DST)
        if src < 0 or dst < 0:
            return "no_address"
        span = self._times(values, plan, clock)
        if span is None:
            return "clock_jump"
        proto = _value(values, plan, _Slot.PROTO)
        sport, dport = _value(values, plan, _Slot.SPORT), _value(values, plan, _Slot.DPORT)
        if plan.at(_Slot.SPORT) < 0 and plan.at(_Slot.ICMP) >= 0:
            icmp = _value(values, plan, _Slot.ICMP)  # Zeek: ICMP type as the source port, code as dest
            sport, dport = icmp >> 8, icmp & 0xFF
        return FlowRecord(
            start=span[0], duration=span[1], src=_address(values[src]), dst=_address(values[dst]),
            sport=sport, dport=dport, proto=_protocol(proto),
            src_bytes=_value(values, plan, _Slot.OCTETS), dst_bytes=_value(values, plan, _Slot.REV_OCTETS),
            src_packets=_value(values, plan, _Slot.PACKETS),
            dst_packets=_value(values, plan, _Slot.REV_PACKETS),
            state=_FLAG_TEXT[_value(values, plan, _Slot.FLAGS) & 0xFF] if proto == 6 else "",
            source=clock.source,
        )  # fmt: skip

    def _times(
        self, values: tuple[int | bytes, ...], plan: _Plan, clock: _Export
    ) -> tuple[float, float] | None:
        first, last = plan.at(_Slot.START), plan.at(_Slot.END)
        if first < 0 and last < 0:
            return clock.export + clock.offset, 0.0
        if first < 0 or last < 0 or plan.start_clock is not plan.end_clock:
            # One of the pair only (or mixed encodings): an instant at the time given.
            position, kind = (first, plan.start_clock) if first >= 0 else (last, plan.end_clock)
            assert kind is not None
            point = self._instant(_integer(values[position]), kind, values, plan, clock)
            return None if point is None else self._span(point, point, clock)
        assert plan.start_clock is not None
        if plan.start_clock is _Clock.UPTIME_MS and clock.uptime_ms >= 0:
            return self._uptime_span(_integer(values[first]), _integer(values[last]), clock)
        if plan.start_clock is _Clock.UPTIME_MS and plan.at(_Slot.INIT_TIME) < 0:
            # IPFIX uptimes without systemInitTimeMilliseconds: the flow is taken to end at export time.
            elapsed = ((_integer(values[last]) - _integer(values[first])) % _UPTIME_WRAP) / 1000
            return self._span(clock.export - elapsed, clock.export, clock)
        start = self._instant(_integer(values[first]), plan.start_clock, values, plan, clock)
        end = self._instant(_integer(values[last]), plan.start_clock, values, plan, clock)
        if start is None or end is None:
            return None
        return self._span(start, end, clock)

    def _instant(  # noqa: PLR0911 (one return per timestamp encoding)
        self, raw: int, kind: _Clock, values: tuple[int | bytes, ...], plan: _Plan, clock: _Export
    ) -> float | None:
        """Return one timestamp in the exporter's clock (seconds since the epoch)."""
        match kind:
            case _Clock.SECONDS:
                return float(raw)
            case _Clock.MILLISECONDS:
                return raw / 1000
            case _Clock.NTP:
                return (raw >> 32) - _NTP_EPOCH + (raw & 0xFFFFFFFF) / _UPTIME_WRAP
            case _Clock.DELTA_US:
                return clock.export - raw / 1e6
            case _Clock.UPTIME_MS:
                if clock.uptime_ms >= 0:
                    return clock.export - ((clock.uptime_ms - raw) % _UPTIME_WRAP) / 1000
                if plan.at(_Slot.INIT_TIME) >= 0:  # IPFIX: uptime relative to systemInitTimeMilliseconds
                    return (_integer(values[plan.at(_Slot.INIT_TIME)]) + raw) / 1000
                return None
            case _:
                assert_never(kind)


def _field_count(data: bytes, offset: int, stop: int, *, ipfix: bool, options: bool) -> tuple[int, int] | str:
    """Return (field count, offset of the first field specifier) of a template record header."""
    if not options:
        return _PAIR.unpack_from(data, offset)[1], offset + 4
    if offset + 6 > stop:
        return "template_truncated"
    _, first, second = _TRIPLE.unpack_from(data, offset)
    if ipfix:  # RFC 7011 3.4.2.2: field count, scope field count (never 0, never above the count)
        return (first, offset + 6) if 0 < second <= first else "template_malformed"
    # RFC 3954 6.1: option scope length and option length, in bytes of 4-byte field specifiers
    if first % 4 or second % 4 or first + second == 0:
        return "template_malformed"
    return (first + second) // 4, offset + 6


def _compile(fields: tuple[_Field, ...], *, options: bool) -> _Template:
    """Return a template with its struct (when every field is fixed-length) and its slot plan."""
    positions = [-1] * (max(_Slot) + 1)
    clocks: dict[_Slot, _Clock | None] = {}
    wanted: list[bool] = []
    integer: list[bool] = []
    codes: list[str] = []
    for field in fields:
        meaning = None if options else _ELEMENTS.get((field.enterprise, field.element))
        keep = meaning is not None and positions[meaning[0]] < 0 and field.length in meaning[2]
        if meaning is not None and keep:
            slot, clock, _ = meaning
            positions[slot] = len(integer)
            clocks[slot] = clock
            integer.append(slot not in _ADDRESS_SLOTS)
        wanted.append(keep)
        codes.append(_code(field.length, keep=keep, integer=keep and integer[-1]))
    variable = any(field.length == _VARIABLE for field in fields)
    kept = [field for field, keep in zip(fields, wanted, strict=True) if keep]
    widen = any(
        is_int and field.length not in (1, 2, 4, 8) for field, is_int in zip(kept, integer, strict=True)
    )
    return _Template(
        fields=fields, options=options, fixed=None if variable else struct.Struct("!" + "".join(codes)),
        min_length=sum(1 if field.length == _VARIABLE else field.length for field in fields),
        wanted=tuple(wanted), integer=tuple(integer), widen=widen,
        plan=_Plan(tuple(positions), clocks.get(_Slot.START), clocks.get(_Slot.END)),
    )  # fmt: skip


def _code(length: int, *, keep: bool, integer: bool) -> str:
    if not keep:
        return f"{length}x" if length != _VARIABLE else ""
    if integer and length in (1, 2, 4, 8):
        return {1: "B", 2: "H", 4: "I", 8: "Q"}[length]
    return f"{length}s"


def _fixed_values(body: bytes, template: _Template) -> list[tuple[int | bytes, ...]]:
    assert template.fixed is not None
    size, unpack = template.fixed.size, template.fixed.unpack_from
    rows: list[tuple[int | bytes, ...]] = [
        unpack(body, offset) for offset in range(0, len(body) - size + 1, size)
    ]
    if not template.widen:
        return rows
    return [
        tuple(_integer(v) if is_int else v for v, is_int in zip(row, template.integer, strict=True))
        for row in rows
    ]


def _value(values: tuple[int | bytes, ...], plan: _Plan, slot: _Slot) -> int:
    position = plan.positions[slot]
    return 0 if position < 0 else _integer(values[position])


def _integer(value: int | bytes) -> int:
    return value if isinstance(value, int) else int.from_bytes(value, "big")


def _address(value: int | bytes) -> str:
    assert isinstance(value, bytes)
    return socket.inet_ntop(socket.AF_INET if len(value) == 4 else socket.AF_INET6, value)


def _protocol(number: int) -> str:
    return _PROTOCOLS.get(number, str(number))
