"""NetFlow v5/v9 and IPFIX decoding: exact records from hand-built packets, templates, bounds, bad input."""

from __future__ import annotations

import datetime as dt
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.monitor.model import FlowRecord
from fleetguard.monitor.netflow import FlowDecoder

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
NOW = int(T0.timestamp())
EXPORTER = "192.0.2.1"
NTP_NOW = NOW + 2208988800  # RFC 5905: seconds since 1900
UPTIME = 3_600_000  # the exporter booted an hour before NOW
SYN, ACK, FIN = 0x02, 0x10, 0x01


def ip4(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, text)


def ip6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


# --- builders (RFC 3954, RFC 7011, Cisco v5) --------------------------------------------------------


def v5(records: list[bytes], *, count: int | None = None, secs: int = NOW, uptime: int = UPTIME) -> bytes:
    header = struct.pack(
        "!HHIIIIBBH", 5, len(records) if count is None else count, uptime, secs, 0, 1, 0, 0, 0
    )
    return header + b"".join(records)


def v5_record(src: str, dst: str, sport: int, dport: int, proto: int, *, flags: int = 0, packets: int = 1,
              octets: int = 60, first: int = UPTIME - 5000, last: int = UPTIME - 1000) -> bytes:  # fmt: skip
    return struct.pack(
        "!4s4s4sHHIIIIHHBBBBHHBBH", ip4(src), ip4(dst), b"\xc0\x00\x02\xfe", 1, 2, packets, octets, first,
        last, sport, dport, 0, flags, proto, 0, 0, 0, 24, 24, 0,
    )  # fmt: skip


def flowset(set_id: int, body: bytes) -> bytes:
    return struct.pack("!HH", set_id, len(body) + 4) + body


def v9(*sets: bytes, secs: int = NOW, uptime: int = UPTIME, source_id: int = 7) -> bytes:
    return struct.pack("!HHIIII", 9, len(sets), uptime, secs, 1, source_id) + b"".join(sets)


def v9_template(template_id: int, fields: list[tuple[int, int]]) -> bytes:
    body = struct.pack("!HH", template_id, len(fields))
    return body + b"".join(struct.pack("!HH", element, length) for element, length in fields)


def ipfix(*sets: bytes, export: int = NOW, domain: int = 3) -> bytes:
    body = b"".join(sets)
    return struct.pack("!HHIII", 10, 16 + len(body), export, 1, domain) + body


def ipfix_template(template_id: int, fields: list[tuple[int, int] | tuple[int, int, int]]) -> bytes:
    """Fields are (element, length) or (element, length, enterprise number)."""
    body = struct.pack("!HH", template_id, len(fields))
    for spec in fields:
        if len(spec) == 3:
            body += struct.pack("!HHI", spec[0] | 0x8000, spec[1], spec[2])
        else:
            body += struct.pack("!HH", spec[0], spec[1])
    return body


V9_FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 1), (1, 4), (2, 4), (22, 4), (21, 4), (10, 2)]


def v9_data(src: str, dst: str, sport: int, dport: int, proto: int, flags: int, octets: int, packets: int,  # noqa: PLR0917 (one argument per field)
            first: int, last: int) -> bytes:  # fmt: skip
    return struct.pack(
        "!4s4sHHBBIIIIH", ip4(src), ip4(dst), sport, dport, proto, flags, octets, packets, first, last, 3
    )


def decode(decoder: FlowDecoder, datagram: bytes, exporter: str = EXPORTER) -> list[FlowRecord]:
    return decoder.decode(datagram, exporter, T0)


# --- NetFlow v5 -------------------------------------------------------------------------------------


def test_v5_records_are_decoded_exactly() -> None:
    packet = v5([
        v5_record("10.0.0.1", "10.0.0.2", 40000, 443, 6, flags=SYN | ACK | FIN, packets=10, octets=1500),
        v5_record("10.0.0.3", "8.8.8.8", 5353, 53, 17, first=UPTIME - 2000, last=UPTIME - 2000),
    ])  # fmt: skip
    decoder = FlowDecoder()
    assert decode(decoder, packet) == [
        FlowRecord(start=NOW - 5.0, duration=4.0, src="10.0.0.1", dst="10.0.0.2", sport=40000, dport=443,
                   proto="tcp", src_bytes=1500, dst_bytes=0, src_packets=10, dst_packets=0, state="FSA",
                   source="netflow5"),
        FlowRecord(start=NOW - 2.0, duration=0.0, src="10.0.0.3", dst="8.8.8.8", sport=5353, dport=53,
                   proto="udp", src_bytes=60, dst_bytes=0, src_packets=1, dst_packets=0, state="",
                   source="netflow5"),
    ]  # fmt: skip
    assert decoder.skipped.total == 0


def test_v5_uptime_wrap_is_handled() -> None:
    # The uptime wrapped (49.7 days) between the flow's start and the export.
    record = v5_record("10.0.0.1", "10.0.0.2", 1, 2, 17, first=(1 << 32) - 4000, last=500)
    [flow] = decode(FlowDecoder(), v5([record], uptime=1000))
    assert (flow.start, flow.duration) == (NOW - 5.0, 4.5)


def test_v5_truncated_datagram_keeps_the_whole_records_and_counts_the_rest() -> None:
    record = v5_record("10.0.0.1", "10.0.0.2", 1, 2, 17)
    decoder = FlowDecoder()
    flows = decode(decoder, v5([record, record, record[:20]], count=3))
    assert len(flows) == 2
    assert decoder.skipped.counts == {"truncated_record": 1}


@pytest.mark.parametrize("count", [0, 31])
def test_v5_impossible_count_is_skipped(count: int) -> None:
    decoder = FlowDecoder()
    assert decode(decoder, v5([], count=count)) == []
    assert decoder.skipped.counts == {"v5_count": 1}


# --- NetFlow v9 -------------------------------------------------------------------------------------


def test_v9_template_and_data_are_decoded_exactly() -> None:
    data = v9_data(
        "192.168.1.5", "203.0.113.9", 51000, 8883, 6, SYN | ACK, 4096, 12, UPTIME - 3000, UPTIME - 500
    )
    packet = v9(flowset(0, v9_template(256, V9_FIELDS)), flowset(256, data + b"\x00\x00"))  # with padding
    decoder = FlowDecoder()
    assert decode(decoder, packet) == [
        FlowRecord(start=NOW - 3.0, duration=2.5, src="192.168.1.5", dst="203.0.113.9", sport=51000,
                   dport=8883, proto="tcp", src_bytes=4096, dst_bytes=0, src_packets=12, dst_packets=0,
                   state="SA", source="netflow9"),
    ]  # fmt: skip
    assert decoder.skipped.total == 0
    assert decoder.stats.templates == 1


def test_v9_ipv6_and_reduced_size_counters() -> None:
    # Octets in 3 bytes, packets in 8 (RFC 7011 6.2 reduced-size encoding, used by v9 exporters too).
    fields = [(27, 16), (28, 16), (7, 2), (11, 2), (4, 1), (1, 3), (2, 8)]
    data = ip6("2001:db8::1") + ip6("2001:db8::2") + struct.pack("!HHB", 1234, 53, 17)
    data += (70000).to_bytes(3, "big") + struct.pack("!Q", 9)
    decoder = FlowDecoder()
    [flow] = decode(decoder, v9(flowset(0, v9_template(300, fields)), flowset(300, data)))
    assert (flow.src, flow.dst, flow.sport, flow.dport, flow.proto) == (
        "2001:db8::1",
        "2001:db8::2",
        1234,
        53,
        "udp",
    )
    assert (flow.src_bytes, flow.src_packets, flow.start, flow.duration) == (70000, 9, float(NOW), 0.0)


def test_v9_templates_are_per_source_id() -> None:
    decoder = FlowDecoder(hold_sets=0)
    decode(decoder, v9(flowset(0, v9_template(256, V9_FIELDS)), source_id=1))
    data = v9_data("10.0.0.1", "10.0.0.2", 1, 2, 17, 0, 1, 1, UPTIME, UPTIME)
    assert decode(decoder, v9(flowset(256, data), source_id=2)) == []
    assert decoder.skipped.counts == {"unknown_template": 1}
    assert len(decode(decoder, v9(flowset(256, data), source_id=1))) == 1


def test_v9_options_template_and_its_data_are_skipped_gracefully() -> None:
    # RFC 3954 6.1: scope (system, 4 bytes) and one option field (sampling interval, 4 bytes).
    options = struct.pack("!HHH", 257, 4, 4) + struct.pack("!HHHH", 1, 4, 34, 4) + b"\x00\x00"  # padding
    decoder = FlowDecoder()
    packet = v9(flowset(1, options), flowset(257, struct.pack("!II", 1, 100) * 2))
    assert decode(decoder, packet) == []
    assert decoder.skipped.counts == {"options_record": 2}
    assert decoder.stats.templates == 1


# --- IPFIX ------------------------------------------------------------------------------------------


IPFIX_FIELDS: list[tuple[int, int] | tuple[int, int, int]] = [
    (8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 2),
    (82, 65535),  # interfaceName, variable length
    (1, 8), (2, 8), (1, 8, 29305), (2, 4, 29305),  # reverse octets/packets (RFC 5103)
    (1000, 4, 9),  # an enterprise element of someone else: ignored
    (152, 8), (153, 8),
]  # fmt: skip


def ipfix_data(name: bytes, *, start_ms: int = NOW * 1000 - 2500, end_ms: int = NOW * 1000 - 500) -> bytes:
    length = struct.pack("!B", len(name)) if len(name) < 255 else struct.pack("!BH", 255, len(name))
    return (
        ip4("10.1.0.7") + ip4("10.1.0.1") + struct.pack("!HHBH", 60000, 1883, 6, SYN | ACK | FIN)
        + length + name + struct.pack("!QQQIIQQ", 2000, 20, 3000, 25, 0xDEADBEEF, start_ms, end_ms)
    )  # fmt: skip


def test_ipfix_variable_length_and_enterprise_fields_are_decoded_exactly() -> None:
    packet = ipfix(flowset(2, ipfix_template(400, IPFIX_FIELDS)), flowset(400, ipfix_data(b"eth0") + b"\x00"))
    decoder = FlowDecoder()
    assert decode(decoder, packet) == [
        FlowRecord(start=NOW - 2.5, duration=2.0, src="10.1.0.7", dst="10.1.0.1", sport=60000, dport=1883,
                   proto="tcp", src_bytes=2000, dst_bytes=3000, src_packets=20, dst_packets=25, state="FSA",
                   source="ipfix"),
    ]  # fmt: skip
    assert decoder.skipped.total == 0


def test_ipfix_long_variable_length_field() -> None:
    body = ipfix_data(b"x" * 300) + ipfix_data(b"")
    [first, second] = decode(
        FlowDecoder(), ipfix(flowset(2, ipfix_template(400, IPFIX_FIELDS)), flowset(400, body))
    )
    assert first == second


@pytest.mark.parametrize(
    ("fields", "values", "start", "duration"),
    [
        ([(150, 4), (151, 4)], struct.pack("!II", NOW - 10, NOW - 4), NOW - 10.0, 6.0),
        ([(156, 8), (157, 8)], struct.pack("!QQ", NTP_NOW - 3 << 32, NTP_NOW << 32 | 1 << 31),
         NOW - 3.0, 3.5),
        ([(158, 4), (159, 4)], struct.pack("!II", 4_000_000, 1_000_000), NOW - 4.0, 3.0),
        ([(160, 8), (22, 4), (21, 4)], struct.pack("!QII", (NOW - 100) * 1000, 90_000, 95_000),
         NOW - 10.0, 5.0),
        ([(22, 4), (21, 4)], struct.pack("!II", 90_000, 95_000), NOW - 5.0, 5.0),  # ends at export time
    ],
)  # fmt: skip
def test_ipfix_timestamp_forms(
    fields: list[tuple[int, int]], values: bytes, start: float, duration: float
) -> None:
    template = ipfix_template(500, [(8, 4), (12, 4), *fields])
    data = ip4("10.0.0.1") + ip4("10.0.0.2") + values
    [flow] = decode(FlowDecoder(), ipfix(flowset(2, template), flowset(500, data)))
    assert (flow.start, flow.duration) == (start, duration)


def test_ipfix_options_template_is_learned_and_its_data_skipped() -> None:
    # RFC 7011 3.4.2.2: template id, field count 2, scope field count 1.
    options = struct.pack("!HHH", 600, 2, 1) + struct.pack("!HHHH", 149, 4, 160, 8)
    decoder = FlowDecoder()
    assert decode(decoder, ipfix(flowset(3, options), flowset(600, struct.pack("!IQ", 3, NOW * 1000)))) == []
    assert decoder.skipped.counts == {"options_record": 1}


# --- templates: order, withdrawal, bounds -----------------------------------------------------------


def test_data_before_its_template_is_held_and_decoded_when_the_template_arrives() -> None:
    decoder = FlowDecoder()
    assert decode(decoder, ipfix(flowset(400, ipfix_data(b"eth0") * 2))) == []
    assert decoder.stats.held_sets == 1
    flows = decode(decoder, ipfix(flowset(2, ipfix_template(400, IPFIX_FIELDS))))
    assert [flow.src for flow in flows] == ["10.1.0.7", "10.1.0.7"]
    assert (decoder.stats.held_sets, decoder.skipped.total) == (0, 0)


def test_held_sets_are_bounded_and_the_oldest_is_counted() -> None:
    decoder = FlowDecoder(hold_sets=2)
    for template_id in (401, 402, 403):
        decode(decoder, ipfix(flowset(template_id, ipfix_data(b""))))
    assert decoder.stats.held_sets == 2
    assert decoder.skipped.counts == {"unknown_template": 1}
    assert decode(decoder, ipfix(flowset(2, ipfix_template(401, IPFIX_FIELDS)))) == []  # 401 was dropped


def test_template_withdrawal_forgets_one_template_or_all() -> None:
    decoder = FlowDecoder(hold_sets=0)
    decode(decoder, ipfix(flowset(2, ipfix_template(400, IPFIX_FIELDS) + ipfix_template(401, IPFIX_FIELDS))))
    assert decoder.stats.templates == 2
    decode(decoder, ipfix(flowset(2, struct.pack("!HH", 400, 0))))  # RFC 7011 8.1
    assert decode(decoder, ipfix(flowset(400, ipfix_data(b"")))) == []
    assert len(decode(decoder, ipfix(flowset(401, ipfix_data(b""))))) == 1
    decode(decoder, ipfix(flowset(2, struct.pack("!HH", 2, 0))))  # all templates of the domain
    assert (decoder.stats.templates, decoder.stats.templates_withdrawn) == (0, 2)
    assert decoder.skipped.counts == {"unknown_template": 1}


def test_a_refreshed_template_is_not_learned_twice() -> None:
    decoder = FlowDecoder()
    for _ in range(3):
        decode(decoder, ipfix(flowset(2, ipfix_template(400, IPFIX_FIELDS))))
    assert (decoder.stats.templates, decoder.stats.templates_learned) == (1, 1)


def test_template_flood_is_bounded_per_exporter_and_overall() -> None:
    decoder = FlowDecoder(max_templates=16, max_templates_per_exporter=8)
    decode(decoder, v9(flowset(0, v9_template(256, V9_FIELDS))), exporter="192.0.2.99")
    flood = b"".join(v9_template(template_id, V9_FIELDS) for template_id in range(300, 1300))
    decode(decoder, v9(flowset(0, flood)))
    assert decoder.stats.templates == 9  # 8 of the flooder's, the other exporter's one kept
    for index in range(10):
        decode(decoder, v9(flowset(0, flood[: 4 + 4 * len(V9_FIELDS)])), exporter=f"198.51.100.{index}")
    assert decoder.stats.templates == 16
    assert decoder.stats.templates_evicted == 1000 - 8 + 3
    data = v9_data("10.0.0.1", "10.0.0.2", 1, 2, 17, 0, 1, 1, UPTIME, UPTIME)
    assert decode(decoder, v9(flowset(1299, data))) != []  # the flooder's newest templates still work


# --- malformed input --------------------------------------------------------------------------------


def _template_then_data(data: bytes) -> bytes:
    return ipfix(flowset(2, ipfix_template(400, IPFIX_FIELDS)), flowset(400, data))


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", "unknown_version"),
        (b"\x00\x07rest", "unknown_version"),
        (struct.pack("!HH", 9, 1), "short_header"),
        (struct.pack("!HH", 10, 1), "short_header"),
        (struct.pack("!HH", 5, 1), "short_header"),
        (struct.pack("!HHIII", 10, 8, NOW, 1, 1), "message_length"),
        (struct.pack("!HHIII", 10, 100, NOW, 1, 1), "message_truncated"),
        (v9(struct.pack("!HH", 256, 2) + b"\x00" * 8), "set_length"),
        (v9(struct.pack("!HH", 256, 40) + b"\x00" * 8), "set_truncated"),
        (ipfix(flowset(5, b"\x00" * 4)), "reserved_set_id"),
        (v9(flowset(0, v9_template(256, [(8, 4), (12, 0)]))), "template_field_length"),
        (v9(flowset(0, v9_template(256, [(8, 4), (82, 65535)]))), "template_field_length"),
        (v9(flowset(0, v9_template(256, [(8, 4), (12, 4)])[:10])), "template_truncated"),
        (ipfix(flowset(2, ipfix_template(400, [(8, 4), (1000, 4, 9)])[:-2])), "template_truncated"),
        (v9(flowset(0, v9_template(200, [(8, 4)]))), "template_id"),
        (v9(flowset(0, v9_template(256, []))), "template_malformed"),
        (v9(flowset(0, v9_template(256, [(1, 4)] * 600))), "template_too_large"),
        (ipfix(flowset(3, struct.pack("!HHH", 600, 2, 0) + b"\x00" * 8)), "template_malformed"),
        (v9(flowset(1, struct.pack("!HHH", 600, 3, 4) + b"\x00" * 8)), "template_malformed"),
        (_template_then_data(ipfix_data(b"")[:15] + b"\x50" + b"\x00" * 60), "variable_length_overflow"),
        (_template_then_data(ipfix_data(b"")[:15] + b"\xff\xff\xff" + b"\x00" * 60),
         "variable_length_overflow"),
        (ipfix(flowset(2, ipfix_template(401, [(8, 4), (12, 4), (82, 65535), (83, 65535)])),
               flowset(401, b"\x00" * 8 + b"\x02ab")), "variable_length_overflow"),
        (v9(flowset(0, v9_template(256, [(1, 4), (2, 4)])), flowset(256, b"\x00" * 8)), "no_address"),
    ],
)  # fmt: skip
def test_malformed_input_is_counted_with_its_reason(datagram: bytes, reason: str) -> None:
    decoder = FlowDecoder()
    assert decode(decoder, datagram) == []
    assert decoder.skipped.counts == {reason: 1}


def test_a_bad_template_does_not_stop_the_next_one() -> None:
    sets = v9_template(256, [(8, 4), (12, 0)]) + v9_template(257, V9_FIELDS)
    decoder = FlowDecoder()
    data = v9_data("10.0.0.1", "10.0.0.2", 1, 2, 17, 0, 1, 1, UPTIME, UPTIME)
    assert len(decode(decoder, v9(flowset(0, sets), flowset(257, data)))) == 1
    assert decoder.skipped.counts == {"template_field_length": 1}


# --- clocks -----------------------------------------------------------------------------------------


def test_exporter_clock_far_off_is_reanchored_to_the_arrival_time() -> None:
    decoder = FlowDecoder()
    [flow] = decode(decoder, v5([v5_record("10.0.0.1", "10.0.0.2", 1, 2, 17)], secs=86400))  # a 1970 clock
    assert (flow.start, flow.duration) == (NOW - 5.0, 4.0)
    assert decoder.stats.clock_reanchored == 1


@pytest.mark.parametrize(
    ("first", "last"),
    [
        (UPTIME + 10_000, UPTIME + 20_000),  # starts after the export: ages wrap to ~49 days
        (UPTIME - 1000, UPTIME - 5000),  # ends before it starts
    ],
)
def test_impossible_flow_times_are_skipped_as_clock_jumps(first: int, last: int) -> None:
    decoder = FlowDecoder()
    assert decode(decoder, v5([v5_record("10.0.0.1", "10.0.0.2", 1, 2, 17, first=first, last=last)])) == []
    assert decoder.skipped.counts == {"clock_jump": 1}


def test_ipfix_absolute_time_far_from_export_is_a_clock_jump() -> None:
    decoder = FlowDecoder()
    datagram = _template_then_data(ipfix_data(b"", start_ms=(NOW - 10 * 86400) * 1000))
    assert decode(decoder, datagram) == []
    assert decoder.skipped.counts == {"clock_jump": 1}


def test_naive_arrival_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        FlowDecoder().decode(v5([]), EXPORTER, dt.datetime(2024, 5, 1))  # noqa: DTZ001 (naive on purpose)


# --- fuzz -------------------------------------------------------------------------------------------

VALID = [
    v5([v5_record("10.0.0.1", "10.0.0.2", 1, 2, 6, flags=SYN)] * 3),
    v9(
        flowset(0, v9_template(256, V9_FIELDS)),
        flowset(256, v9_data("10.0.0.1", "10.0.0.2", 1, 2, 6, 2, 1, 1, 0, 0)),
    ),
    _template_then_data(ipfix_data(b"eth0") + ipfix_data(b"y" * 300)),
]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.sampled_from([b"", b"\x00\x05", b"\x00\x09", b"\x00\x0a"]))
def test_random_bytes_are_only_counted(payload: bytes, version: bytes) -> None:
    decoder = FlowDecoder(max_templates=8, max_templates_per_exporter=4, hold_sets=2)
    records = decode(decoder, version + payload)
    assert all(isinstance(record, FlowRecord) for record in records)
    assert decoder.stats.templates <= 4


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALID), st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=8),
       st.integers(0, 2000))  # fmt: skip
def test_mutated_packets_are_only_counted(valid: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    packet = bytearray(valid)
    for position, value in flips:
        if position < len(packet):
            packet[position] = value
    decoder = FlowDecoder(hold_sets=2)
    for _ in range(2):  # the second pass decodes against the templates the first one taught
        records = decode(decoder, bytes(packet[: max(cut, 2)]))
        assert all(isinstance(record, FlowRecord) for record in records)
