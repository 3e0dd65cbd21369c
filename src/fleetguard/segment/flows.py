"""Flows: packets grouped into bidirectional flows, and flow records read from files.

Theory of operation. :func:`assemble_flows` keeps one table entry per flow, keyed canonically so
that both directions of a conversation land on the same entry: TCP and UDP by protocol and the two
(address, port) ends in sorted order; ICMP and ICMPv6 by the two addresses, the request type and the
code (an echo reply joins its echo request, RFC 792 and RFC 4443 section 4); other IP protocols by
protocol and addresses. A flow's direction is the direction of its first packet, except that it is
oriented the way its opener would have sent it when that packet is an answer:

* a TCP SYN-ACK is reversed (its receiver sent the SYN);
* a TCP segment with neither SYN nor SYN-ACK (the capture started mid-connection), or a UDP
  datagram, from a port under 1024 to a port of 1024 or more is reversed: the server side is the
  well-known port (a DNS or NTP answer whose question was not captured);
* an ICMP reply (echo, timestamp, information, address mask; ICMPv6 echo) is reversed and recorded
  under its request type.

A TCP flow is ``established`` once its opener's SYN, the responder's SYN-ACK and the opener's ACK
have all been seen (RFC 9293 section 3.5). ``packets`` and ``octets`` count both directions;
octets are IP octets (the IP header's length), as Zeek's ``*_ip_bytes`` are, so both sources agree.

The table is bounded (``max_flows``). Overflow raises ``CaptureInvalid`` rather than dropping flows:
a profile learned from a table that silently lost flows would block what the device really does.
The same holds for the DNS answers and MAC/IP pairs kept alongside.

Files: :func:`read_zeek_conn_csv` reads Zeek ``conn.log`` records written as CSV with a header
line (as the IoT-23 data set ships them); :func:`write_flows_jsonl` / :func:`read_flows_jsonl` are
fleetguard's own format, one JSON object per line with the :class:`~fleetguard.segment.model.Flow`
field names. Every reader bounds the line length and the record count and names the line of a bad
record.
"""

from __future__ import annotations

import csv
import datetime as dt
import ipaddress
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Protocol

from fleetguard.segment.capture import Packet, SkippedPacket
from fleetguard.segment.errors import CaptureInvalid
from fleetguard.segment.model import Flow

__all__ = [
    "DEFAULT_MAX_FLOWS",
    "DEFAULT_MAX_RECORDS",
    "MAX_LINE_LENGTH",
    "ZEEK_REQUIRED_FIELDS",
    "HostAddress",
    "ObservedTraffic",
    "Resolution",
    "assemble_flows",
    "bounded_number",
    "normalized_address",
    "read_flows_jsonl",
    "read_zeek_conn_csv",
    "write_flows_jsonl",
    "zeek_count",
]

DEFAULT_MAX_FLOWS = 200_000  # about 100 MB of table in CPython
DEFAULT_MAX_RESOLUTIONS = 100_000
DEFAULT_MAX_RECORDS = 1_000_000
MAX_LINE_LENGTH = 4096  # a conn.log line is under 300 bytes; a Flow line under 400

_TCP, _UDP, _ICMP, _ICMPV6 = 6, 17, 1, 58
_SYN, _ACK = 0x02, 0x10
_WELL_KNOWN = 1024  # RFC 6335 section 6: system ports are 0-1023
# RFC 792 (types 0/8, 13/14, 15/16), RFC 950 (17/18), RFC 4443 section 4 (128/129): reply -> request.
_ICMP_REQUEST_OF = {_ICMP: {0: 8, 14: 13, 16: 15, 18: 17}, _ICMPV6: {129: 128}}


@dataclass(frozen=True, slots=True)
class Resolution:
    """A DNS answer seen going to ``client``: ``name`` resolved to ``address`` (last seen at ``time``)."""

    client: str
    name: str
    address: str
    time: dt.datetime


@dataclass(frozen=True, slots=True)
class HostAddress:
    """A MAC address seen sending from an IP address."""

    mac: str
    address: str


@dataclass(frozen=True, slots=True)
class ObservedTraffic:
    """What a capture or a flow file showed: flows in first-seen order, plus what packets add.

    ``resolutions`` and ``hosts`` are empty for flow records (they carry no DNS answers or MACs).
    ``packets`` counts frames read, ``skipped`` frames that could not be decoded, ``not_in_flows``
    frames that were decoded but belong to no flow (non-IP frames, non-first IP fragments).
    """

    flows: tuple[Flow, ...]
    resolutions: tuple[Resolution, ...] = ()
    hosts: tuple[HostAddress, ...] = ()
    packets: int = 0
    skipped: int = 0
    not_in_flows: int = 0

    @classmethod
    def of_flows(cls, flows: Iterable[Flow]) -> ObservedTraffic:
        """Wrap flow records (from Zeek or JSON Lines) with no DNS or MAC information."""
        records = tuple(flows)
        return cls(flows=records, packets=sum(flow.packets for flow in records))


class _FlowEntry:
    """A flow being assembled (mutable; internal to :func:`assemble_flows`)."""

    __slots__ = ("ack", "octets", "packets", "reply", "syn", "template")

    def __init__(self, template: Flow) -> None:
        self.template = template
        self.packets = 0
        self.octets = 0
        self.syn = self.reply = self.ack = False

    def add(self, packet: Packet) -> None:
        self.packets += 1
        self.octets += packet.ip_length
        flags = packet.tcp_flags
        if flags is None or not flags & (_SYN | _ACK):
            return
        forward = packet.source == self.template.source and packet.source_port == self.template.source_port
        if flags & _SYN:
            if forward and not flags & _ACK:
                self.syn = True
            elif not forward and flags & _ACK and self.syn:
                self.reply = True
        elif forward and self.reply:
            self.ack = True

    def flow(self) -> Flow:
        established = self.template.protocol == _TCP and self.ack
        return _replace_counts(self.template, self.packets, self.octets, established)


def _replace_counts(template: Flow, packets: int, octets: int, established: bool) -> Flow:
    return Flow(
        start=template.start,
        source=template.source,
        destination=template.destination,
        protocol=template.protocol,
        source_port=template.source_port,
        destination_port=template.destination_port,
        icmp_type=template.icmp_type,
        icmp_code=template.icmp_code,
        packets=packets,
        octets=octets,
        established=established,
    )


def assemble_flows(
    packets: Iterable[Packet | SkippedPacket],
    *,
    max_flows: int = DEFAULT_MAX_FLOWS,
    max_resolutions: int = DEFAULT_MAX_RESOLUTIONS,
) -> ObservedTraffic:
    """Group decoded packets into flows (see the module docstring) and collect DNS answers and MACs.

    Raises ``CaptureInvalid`` when there are more than ``max_flows`` flows or MAC/IP pairs, or more
    than ``max_resolutions`` distinct DNS answers.
    """
    table: dict[tuple[object, ...], _FlowEntry] = {}
    resolutions: dict[tuple[str, str, str], dt.datetime] = {}
    hosts: dict[HostAddress, None] = {}
    count = skipped = outside = 0
    for packet in packets:
        count += 1
        if isinstance(packet, SkippedPacket):
            skipped += 1
            continue
        if packet.source is None or packet.destination is None or packet.protocol is None or packet.fragment:
            outside += 1
            continue
        key = _key(packet)
        entry = table.get(key)
        if entry is None:
            if len(table) >= max_flows:
                raise _overflow(f"more than {max_flows} flows", "max_flows")
            entry = table[key] = _FlowEntry(_template(packet))
        entry.add(packet)
        if packet.source_mac is not None:
            hosts[HostAddress(packet.source_mac, packet.source)] = None
            if len(hosts) > max_flows:
                raise _overflow(f"more than {max_flows} MAC/IP address pairs", "max_flows")
        if packet.dns_answers and packet.source_port == 53:
            _record_answers(resolutions, packet, max_resolutions)
    return ObservedTraffic(
        flows=tuple(entry.flow() for entry in table.values()),
        resolutions=tuple(
            Resolution(client, name, address, time)
            for (client, name, address), time in sorted(resolutions.items(), key=lambda item: item[1])
        ),
        hosts=tuple(hosts),
        packets=count,
        skipped=skipped,
        not_in_flows=outside,
    )


def _overflow(what: str, parameter: str) -> CaptureInvalid:
    return CaptureInvalid(f"capture has {what}", hint=f"shorten the capture or raise {parameter}")


def _record_answers(
    resolutions: dict[tuple[str, str, str], dt.datetime], packet: Packet, max_resolutions: int
) -> None:
    assert packet.destination is not None
    for answer in packet.dns_answers:
        key = (packet.destination, answer.name, answer.address)
        resolutions.pop(key, None)  # re-inserted: the dict stays in order of last sighting
        resolutions[key] = packet.timestamp
        if len(resolutions) > max_resolutions:
            raise _overflow(f"more than {max_resolutions} distinct DNS answers", "max_resolutions")


def _key(packet: Packet) -> tuple[object, ...]:
    """The canonical key: the same for both directions of a flow."""
    source, destination, protocol = packet.source, packet.destination, packet.protocol
    if protocol in (_TCP, _UDP):
        ends = sorted(((source, packet.source_port), (destination, packet.destination_port)))
        return (protocol, *ends)
    low, high = sorted((source or "", destination or ""))
    if packet.icmp_type is not None:
        kind = _ICMP_REQUEST_OF.get(protocol or 0, {}).get(packet.icmp_type, packet.icmp_type)
        return (protocol, low, high, kind, packet.icmp_code)
    return (protocol, low, high)


def _template(packet: Packet) -> Flow:
    """The flow a first packet opens, oriented as its opener sent it (see the module docstring)."""
    assert packet.source is not None
    assert packet.destination is not None
    assert packet.protocol is not None
    source, destination = packet.source, packet.destination
    sport, dport = packet.source_port, packet.destination_port
    icmp_type = packet.icmp_type
    reverse = False
    if packet.tcp_flags is not None:
        flags = packet.tcp_flags
        # a SYN-ACK answers a SYN; mid-connection, the well-known port is the server's
        reverse = bool(flags & _ACK) if flags & _SYN else sport < _WELL_KNOWN <= dport
    elif packet.protocol == _UDP:
        reverse = sport < _WELL_KNOWN <= dport
    elif icmp_type is not None:
        request = _ICMP_REQUEST_OF.get(packet.protocol, {}).get(icmp_type)
        reverse, icmp_type = request is not None, icmp_type if request is None else request
    if reverse:
        source, destination, sport, dport = destination, source, dport, sport
    return Flow(
        start=packet.timestamp,
        source=source,
        destination=destination,
        protocol=packet.protocol,
        source_port=sport,
        destination_port=dport,
        icmp_type=icmp_type,
        icmp_code=packet.icmp_code,
    )


# -- flow record files -----------------------------------------------------------------------------


class _LineSource(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


def _lines(
    source: _LineSource, max_line_length: int, max_records: int, headers: int = 0
) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) of non-blank lines; raise on an overlong, non-UTF-8 or extra line.

    The first ``headers`` non-blank lines are not records and do not count.
    """
    number, records = 0, -headers
    while True:
        raw = source.readline(max_line_length + 1)
        if not raw:
            return
        number += 1
        if len(raw) > max_line_length:
            raise CaptureInvalid(f"line {number}: longer than {max_line_length} bytes")
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise CaptureInvalid(f"line {number}: not UTF-8") from None
        if not text.strip():
            continue
        records += 1
        if records > max_records:
            raise CaptureInvalid(
                f"line {number}: more than {max_records} records",
                hint="split the file or raise max_records",
            )
        yield number, text


# Zeek conn.log (https://docs.zeek.org/en/master/scripts/base/protocols/conn/main.zeek.html).
ZEEK_REQUIRED_FIELDS = ("ts", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto")
_ZEEK_PROTOCOLS = {"tcp": _TCP, "udp": _UDP, "icmp": _ICMP}
# Zeek conn_state values for a TCP connection whose handshake completed.
_ZEEK_ESTABLISHED = frozenset({"SF", "S1", "S2", "S3", "RSTO", "RSTR"})
_ZEEK_TIME = re.compile(r"(\d{1,11})(?:\.(\d{1,9}))?")
_MAX_COUNT = 2**63 - 1


def read_zeek_conn_csv(
    source: _LineSource,
    *,
    max_records: int = DEFAULT_MAX_RECORDS,
    max_line_length: int = MAX_LINE_LENGTH,
) -> tuple[Flow, ...]:
    """Read Zeek ``conn.log`` records written as CSV with a header line; return them as flows.

    Orientation is Zeek's (originator to responder); for ICMP, Zeek's ``id.orig_p``/``id.resp_p``
    are the type and code. ``packets``/``octets`` add both directions (``*_pkts``, ``*_ip_bytes``;
    ``-`` or empty counts 0); ``established`` is a TCP ``conn_state`` of SF, S1, S2, S3, RSTO or RSTR.
    Raises ``CaptureInvalid`` naming the line of a missing column or a bad value.
    """
    lines = _lines(source, max_line_length, max_records, headers=1)
    header_line = next(lines, None)
    if header_line is None:
        raise CaptureInvalid("line 1: empty file; expected a Zeek conn.log CSV header")
    header = _csv_row(header_line)
    missing = [name for name in ZEEK_REQUIRED_FIELDS if name not in header]
    if missing:
        raise CaptureInvalid(f"line {header_line[0]}: not a Zeek conn.log CSV header (missing {missing})")
    columns = {name: index for index, name in enumerate(header)}
    flows = []
    for number, text in lines:
        row = _csv_row((number, text))
        if len(row) != len(header):
            raise CaptureInvalid(f"line {number}: {len(row)} fields where the header has {len(header)}")
        try:
            flows.append(_zeek_flow(row, columns))
        except ValueError as exc:
            raise CaptureInvalid(f"line {number}: {exc}") from None
    return tuple(flows)


def _csv_row(line: tuple[int, str]) -> list[str]:
    number, text = line
    try:
        return next(csv.reader([text]), [])
    except csv.Error as exc:
        raise CaptureInvalid(f"line {number}: not CSV ({exc})") from None


def _zeek_flow(row: list[str], columns: dict[str, int]) -> Flow:
    def field(name: str) -> str:
        index = columns.get(name)
        return "" if index is None else row[index]

    source, destination = normalized_address(field("id.orig_h")), normalized_address(field("id.resp_h"))
    protocol = _ZEEK_PROTOCOLS.get(field("proto"))
    if protocol is None:
        raise ValueError(f"proto {field('proto')!r} is not tcp, udp or icmp")
    if protocol == _ICMP and ":" in source:
        protocol = _ICMPV6
    orig, resp = (
        bounded_number(field("id.orig_p"), 65535, "id.orig_p"),
        bounded_number(field("id.resp_p"), 65535, "id.resp_p"),
    )
    icmp = protocol in (_ICMP, _ICMPV6)
    if icmp and (orig > 255 or resp > 255):
        raise ValueError(f"ICMP type/code {orig}/{resp} over 255")
    return Flow(
        start=_zeek_time(field("ts")),
        source=source,
        destination=destination,
        protocol=protocol,
        source_port=0 if icmp else orig,
        destination_port=0 if icmp else resp,
        icmp_type=orig if icmp else None,
        icmp_code=resp if icmp else None,
        packets=zeek_count(field("orig_pkts"), "orig_pkts") + zeek_count(field("resp_pkts"), "resp_pkts"),
        octets=zeek_count(field("orig_ip_bytes"), "orig_ip_bytes")
        + zeek_count(field("resp_ip_bytes"), "resp_ip_bytes"),
        established=protocol == _TCP and field("conn_state") in _ZEEK_ESTABLISHED,
    )


def normalized_address(text: str) -> str:
    """Return an IP address's canonical text; raise ValueError when ``text`` is not one."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def bounded_number(text: str, maximum: int, name: str) -> int:
    """Return ``text`` (ASCII digits) as an integer in 0..``maximum``; raise ValueError naming ``name``."""
    if not text.isdigit() or not text.isascii() or len(text) > 19 or int(text) > maximum:
        raise ValueError(f"{name} {text!r} is not a number in 0..{maximum}")
    return int(text)


def zeek_count(text: str, name: str) -> int:
    """Return a Zeek count field (``-`` or empty: 0); raise ValueError as :func:`bounded_number` does."""
    return 0 if text in ("", "-") else bounded_number(text, _MAX_COUNT, name)


def _zeek_time(text: str) -> dt.datetime:
    match = _ZEEK_TIME.fullmatch(text)
    if match is None:
        raise ValueError(f"ts {text!r} is not seconds since the epoch")
    seconds, fraction = int(match[1]), (match[2] or "").ljust(9, "0")
    if seconds > 253_402_300_799:  # 9999-12-31T23:59:59Z
        raise ValueError(f"ts {text!r} is out of range")
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
        seconds=seconds, microseconds=int(fraction) // 1000
    )


# -- fleetguard's JSON Lines -----------------------------------------------------------------------

_FLOW_FIELDS = tuple(f.name for f in fields(Flow))
_OPTIONAL_FIELDS = frozenset(
    {"source_port", "destination_port", "icmp_type", "icmp_code", "packets", "octets", "established"}
)


def write_flows_jsonl(flows: Iterable[Flow], sink: _Sink) -> int:
    """Write one JSON object per flow (keys in field order, ``start`` as ISO 8601 UTC); return the count."""
    count = 0
    for flow in flows:
        record = {name: getattr(flow, name) for name in _FLOW_FIELDS}
        record["start"] = flow.start.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        sink.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
        count += 1
    return count


def read_flows_jsonl(
    source: _LineSource,
    *,
    max_records: int = DEFAULT_MAX_RECORDS,
    max_line_length: int = MAX_LINE_LENGTH,
) -> tuple[Flow, ...]:
    """Read flows written by :func:`write_flows_jsonl`.

    Raises ``CaptureInvalid`` naming the line of a record that is not a JSON object, has an unknown
    or missing field, a value of the wrong type or out of range, or a ``start`` without a UTC offset.
    """
    flows = []
    for number, text in _lines(source, max_line_length, max_records):
        try:
            flows.append(_json_flow(text))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            raise CaptureInvalid(f"line {number}: {exc}") from None
    return tuple(flows)


class _BadRecord(ValueError):
    """A JSON Lines record of the wrong shape (turned into CaptureInvalid with its line number)."""


def _json_flow(text: str) -> Flow:
    record = json.loads(text)
    if not isinstance(record, dict):
        raise _BadRecord("not a JSON object")
    unknown = sorted(set(record) - set(_FLOW_FIELDS))
    missing = sorted(set(_FLOW_FIELDS) - set(record) - _OPTIONAL_FIELDS)
    if unknown or missing:
        raise ValueError(f"unknown fields {unknown}, missing fields {missing}")
    start = record["start"]
    if not isinstance(start, str):
        raise _BadRecord("start is not a string")
    when = dt.datetime.fromisoformat(start)
    if when.tzinfo is None:
        raise ValueError(f"start {start!r} has no UTC offset")
    source, destination = _text(record, "source"), _text(record, "destination")
    return Flow(
        start=when.astimezone(dt.UTC),
        source=normalized_address(source),
        destination=normalized_address(destination),
        protocol=_integer(record, "protocol", 255),
        source_port=_integer(record, "source_port", 65535, 0),
        destination_port=_integer(record, "destination_port", 65535, 0),
        icmp_type=_optional_integer(record, "icmp_type", 255),
        icmp_code=_optional_integer(record, "icmp_code", 255),
        packets=_integer(record, "packets", _MAX_COUNT, 1),
        octets=_integer(record, "octets", _MAX_COUNT, 0),
        established=_boolean(record, "established"),
    )


def _text(record: dict[str, object], name: str) -> str:
    value = record[name]
    if not isinstance(value, str):
        raise _BadRecord(f"{name} is not a string")
    return value


def _integer(record: dict[str, object], name: str, maximum: int, default: int | None = None) -> int:
    value = record.get(name, default)
    # bool is an int in Python; JSON true is not a number.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise ValueError(f"{name} is not an integer in 0..{maximum}")
    return value


def _optional_integer(record: dict[str, object], name: str, maximum: int) -> int | None:
    return None if record.get(name) is None else _integer(record, name, maximum)


def _boolean(record: dict[str, object], name: str) -> bool:
    value = record.get(name, False)
    if not isinstance(value, bool):
        raise _BadRecord(f"{name} is not true or false")
    return value
