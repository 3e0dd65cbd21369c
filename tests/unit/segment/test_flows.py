"""Flow assembly from packets, and flow records from Zeek conn.log CSV and fleetguard's JSON Lines."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.segment.capture import DnsAnswer, Packet, SkippedPacket
from fleetguard.segment.errors import CaptureInvalid
from fleetguard.segment.flows import (
    HostAddress,
    ObservedTraffic,
    Resolution,
    assemble_flows,
    read_flows_jsonl,
    read_zeek_conn_csv,
    write_flows_jsonl,
)
from fleetguard.segment.model import Flow

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "net"
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
DEVICE, SERVER, GATEWAY = "192.168.1.50", "203.0.113.10", "192.168.1.1"
DEVICE_MAC, GATEWAY_MAC = "aa:bb:cc:00:00:01", "00:1c:7f:53:d0:28"
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01


def tcp(src: str, dst: str, sport: int, dport: int, flags: int, *, at: int = 0, size: int = 40) -> Packet:
    return Packet(
        timestamp=T0 + dt.timedelta(seconds=at),
        length=size + 14,
        source_mac=DEVICE_MAC if src == DEVICE else GATEWAY_MAC,
        destination_mac=GATEWAY_MAC if src == DEVICE else DEVICE_MAC,
        ethertype=0x0800,
        ip_version=4,
        source=src,
        destination=dst,
        protocol=6,
        ip_length=size,
        source_port=sport,
        destination_port=dport,
        tcp_flags=flags,
    )


def out(flags: int, at: int = 0, size: int = 40) -> Packet:
    return tcp(DEVICE, SERVER, 50000, 443, flags, at=at, size=size)


def back(flags: int, at: int = 0, size: int = 40) -> Packet:
    return tcp(SERVER, DEVICE, 443, 50000, flags, at=at, size=size)


def icmp(src: str, dst: str, kind: int, at: int = 0) -> Packet:
    return Packet(
        T0 + dt.timedelta(seconds=at), 98, None, None, 0x0800, 4, src, dst, 1, 84, icmp_type=kind, icmp_code=0
    )


def test_a_tcp_handshake_makes_one_established_flow_counting_both_directions() -> None:
    packets = [
        out(SYN),
        back(SYN | ACK, 1),
        out(ACK, 2),
        out(PSH | ACK, 3, 540),
        back(ACK, 4),
        out(FIN | ACK, 5),
    ]
    traffic = assemble_flows(packets)
    assert traffic.flows == (
        Flow(T0, DEVICE, SERVER, 6, 50000, 443, packets=6, octets=740, established=True),
    )
    assert traffic.hosts == (HostAddress(DEVICE_MAC, DEVICE), HostAddress(GATEWAY_MAC, SERVER))
    assert (traffic.packets, traffic.skipped, traffic.not_in_flows) == (6, 0, 0)


def test_a_flow_first_seen_at_its_syn_ack_is_oriented_as_the_syn_sender_would_have() -> None:
    traffic = assemble_flows([back(SYN | ACK), out(ACK, 1)])
    assert traffic.flows == (
        Flow(T0, DEVICE, SERVER, 6, 50000, 443, packets=2, octets=80, established=False),
    )


def test_a_handshake_without_the_final_ack_is_not_established() -> None:
    (flow,) = assemble_flows([out(SYN), back(SYN | ACK, 1)]).flows
    assert (flow.source, flow.established) == (DEVICE, False)


def test_a_connection_joined_mid_stream_puts_the_well_known_port_on_the_server_side() -> None:
    (flow,) = assemble_flows([back(PSH | ACK), out(ACK, 1)]).flows
    assert (flow.source, flow.source_port, flow.destination, flow.destination_port) == (
        DEVICE,
        50000,
        SERVER,
        443,
    )
    (flow,) = assemble_flows([tcp(DEVICE, SERVER, 40000, 50000, ACK)]).flows
    assert (flow.source, flow.destination_port) == (DEVICE, 50000)


def test_an_echo_reply_joins_its_request_and_a_lone_reply_is_oriented_as_the_request() -> None:
    traffic = assemble_flows(
        [icmp(DEVICE, GATEWAY, 8), icmp(GATEWAY, DEVICE, 0, 1), icmp(GATEWAY, DEVICE, 3)]
    )
    assert traffic.flows == (
        Flow(T0, DEVICE, GATEWAY, 1, icmp_type=8, icmp_code=0, packets=2, octets=168),
        Flow(T0, GATEWAY, DEVICE, 1, icmp_type=3, icmp_code=0, packets=1, octets=84),
    )
    (flow,) = assemble_flows([icmp(GATEWAY, DEVICE, 0)]).flows
    assert (flow.source, flow.destination, flow.icmp_type) == (DEVICE, GATEWAY, 8)


def test_dns_answers_are_kept_per_client_last_sighting_last() -> None:
    answer = Packet(
        T0, 120, GATEWAY_MAC, DEVICE_MAC, 0x0800, 4, GATEWAY, DEVICE, 17, 100, 53, 40000,
        dns_answers=(DnsAnswer("a.example", SERVER), DnsAnswer("b.example", "192.0.2.9")),
    )  # fmt: skip
    later = Packet(
        T0 + dt.timedelta(seconds=9), 120, GATEWAY_MAC, DEVICE_MAC, 0x0800, 4, GATEWAY, DEVICE, 17, 100, 53,
        40001, dns_answers=(DnsAnswer("a.example", SERVER),),
    )  # fmt: skip
    traffic = assemble_flows([answer, later])
    assert traffic.resolutions == (
        Resolution(DEVICE, "b.example", "192.0.2.9", T0),
        Resolution(DEVICE, "a.example", SERVER, T0 + dt.timedelta(seconds=9)),
    )
    # answers whose questions were not captured: oriented from the client to the well-known port
    assert [(flow.source, flow.destination_port) for flow in traffic.flows] == [(DEVICE, 53), (DEVICE, 53)]


def test_skipped_non_ip_and_fragment_packets_are_counted_outside_flows() -> None:
    arp = Packet(T0, 42, DEVICE_MAC, "ff:ff:ff:ff:ff:ff", 0x0806)
    fragment = Packet(T0, 60, None, None, 0x0800, 4, DEVICE, SERVER, 17, 46, payload_length=26, fragment=True)
    traffic = assemble_flows([SkippedPacket(24, "short IPv4 header"), arp, fragment, out(SYN)])
    assert (traffic.packets, traffic.skipped, traffic.not_in_flows, len(traffic.flows)) == (4, 1, 2, 1)


def test_the_flow_table_is_bounded() -> None:
    packets = [tcp(DEVICE, SERVER, 50000 + n, 443, SYN) for n in range(3)]
    assert len(assemble_flows(packets, max_flows=3).flows) == 3
    with pytest.raises(CaptureInvalid, match="capture has more than 2 flows"):
        assemble_flows(packets, max_flows=2)


def test_dns_answers_are_bounded() -> None:
    answers = tuple(DnsAnswer(f"n{n}.example", f"192.0.2.{n}") for n in range(3))
    packet = Packet(T0, 200, None, None, 0x0800, 4, GATEWAY, DEVICE, 17, 180, 53, 4000, dns_answers=answers)
    with pytest.raises(CaptureInvalid, match="more than 2 distinct DNS answers"):
        assemble_flows([packet], max_resolutions=2)


# -- Zeek conn.log CSV -----------------------------------------------------------------------------

HEADER = (
    "ts,uid,id.orig_h,id.orig_p,id.resp_h,id.resp_p,proto,service,duration,orig_bytes,resp_bytes,conn_state,"
    "local_orig,local_resp,missed_bytes,history,orig_pkts,orig_ip_bytes,resp_pkts,resp_ip_bytes,tunnel_parents,"
    "label,detailed-label"
)
ZEEK = (
    HEADER + "\n"
    "1547127288.026074,CX,192.168.1.197,58312,104.24.96.120,80,tcp,http,3.9,83,67212,SF,,,0,ShADadttFf,"
    "54,3371,50,69224,,Malicious,FileDownload\n"
    "1537523548.856516,CG,::,143,ff02::16,0,icmp,,0.004,40,0,OTH,,,0,,2,152,0,0,,benign,-\n"
    "1537522897.7,CC,192.168.2.1,5353,224.0.0.251,5353,udp,dns,,,,S0,,,0,D,1,391,-,-,,benign,-\n"
)


def zeek(text: str, **limits: int) -> tuple[Flow, ...]:
    return read_zeek_conn_csv(io.BytesIO(text.encode()), **limits)


def test_zeek_conn_records_become_flows() -> None:
    assert zeek(ZEEK) == (
        Flow(
            dt.datetime(2019, 1, 10, 13, 34, 48, 26074, tzinfo=dt.UTC), "192.168.1.197", "104.24.96.120", 6,
            58312, 80, packets=104, octets=72595, established=True,
        ),
        Flow(
            dt.datetime(2018, 9, 21, 9, 52, 28, 856516, tzinfo=dt.UTC), "::", "ff02::16", 58,
            icmp_type=143, icmp_code=0, packets=2, octets=152,
        ),
        Flow(
            dt.datetime(2018, 9, 21, 9, 41, 37, 700000, tzinfo=dt.UTC), "192.168.2.1", "224.0.0.251", 17,
            5353, 5353, packets=1, octets=391,
        ),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "line 1: empty file"),
        ("ts,uid,proto\n", r"line 1: not a Zeek conn.log CSV header \(missing \['id.orig_h'"),
        (ZEEK.replace("104.24.96.120", "104.24.96"), "line 2: '104.24.96' is not an IP address"),
        (ZEEK.replace(",tcp,", ",sctp,"), "line 2: proto 'sctp' is not tcp, udp or icmp"),
        (ZEEK.replace(",58312,", ",65536,"), r"line 2: id.orig_p '65536' is not a number in 0..65535"),
        (ZEEK.replace("1547127288.026074", "yesterday"), "line 2: ts 'yesterday' is not seconds"),
        (ZEEK.replace(",CG,", ",CG,extra,"), "line 3: 24 fields where the header has 23"),
        (ZEEK.replace(",391,", ",-3,"), "line 4: orig_ip_bytes '-3' is not a number"),
        (ZEEK + "x" * 5000 + "\n", "line 5: longer than 4096 bytes"),
        (ZEEK.replace("benign", "b\udcff"), "line 3: not UTF-8"),
    ],
)
def test_bad_zeek_records_name_their_line(text: str, match: str) -> None:
    with pytest.raises(CaptureInvalid, match=match):
        read_zeek_conn_csv(io.BytesIO(text.encode("utf-8", "surrogateescape")))


def test_zeek_record_count_is_bounded() -> None:
    assert len(zeek(ZEEK, max_records=3)) == 3
    with pytest.raises(CaptureInvalid, match="line 4: more than 2 records"):
        zeek(ZEEK, max_records=2)


IOT23 = DATA / "iot23-conn" / "CTU-Malware-Capture-44-1-labeled.csv"


@pytest.mark.skipif(not IOT23.is_file(), reason=f"no IoT-23 conn.log CSV at {IOT23}")
def test_an_iot23_conn_log_reads_with_its_exact_first_record() -> None:
    with IOT23.open("rb") as stream:
        flows = read_zeek_conn_csv(stream, max_records=10_000)
    assert flows[0] == Flow(
        start=dt.datetime(2019, 1, 10, 20, 6, 29, 67208, tzinfo=dt.UTC),
        source="192.168.1.199",
        destination="46.101.251.172",
        protocol=6,
        source_port=59222,
        destination_port=80,
        packets=244,
        octets=185843,
        established=True,
    )
    assert len(flows) == len(IOT23.read_bytes().splitlines()) - 1
    with IOT23.open("rb") as stream, pytest.raises(CaptureInvalid, match="line 12: more than 10 records"):
        read_zeek_conn_csv(stream, max_records=10)


# -- JSON Lines ------------------------------------------------------------------------------------

FLOWS = (
    Flow(T0, DEVICE, SERVER, 6, 50000, 443, packets=6, octets=740, established=True),
    Flow(T0, "2001:db8::5", "2001:db8::1", 58, icmp_type=128, icmp_code=0, packets=2, octets=208),
)


def jsonl(flows: tuple[Flow, ...]) -> bytes:
    sink = io.BytesIO()
    assert write_flows_jsonl(flows, sink) == len(flows)
    return sink.getvalue()


def test_json_lines_round_trip_in_a_stable_form() -> None:
    data = jsonl(FLOWS)
    assert data.splitlines()[0] == (
        b'{"start":"2024-05-01T12:00:00Z","source":"192.168.1.50","destination":"203.0.113.10","protocol":6,'
        b'"source_port":50000,"destination_port":443,"icmp_type":null,"icmp_code":null,"packets":6,"octets":740,'
        b'"established":true}'
    )
    assert read_flows_jsonl(io.BytesIO(data)) == FLOWS


def test_json_lines_fields_with_defaults_may_be_left_out() -> None:
    line = (
        b'{"start":"2024-05-01T14:00:00+02:00","source":"10.0.0.1","destination":"10.0.0.2","protocol":17}\n'
    )
    assert read_flows_jsonl(io.BytesIO(b"\n" + line)) == (Flow(T0, "10.0.0.1", "10.0.0.2", 17),)


GOOD_LINE = jsonl(FLOWS[:1]).decode()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[1, 2]\n", "line 1: not a JSON object"),
        ("{nope\n", "line 1: Expecting property name"),
        (
            GOOD_LINE.replace('"protocol":6', '"protocol":true'),
            "line 1: protocol is not an integer in 0..255",
        ),
        (GOOD_LINE.replace('"octets":740', '"octets":-1'), "line 1: octets is not an integer"),
        (GOOD_LINE.replace("12:00:00Z", "12:00:00"), "line 1: start '2024-05-01T12:00:00' has no UTC offset"),
        (GOOD_LINE.replace('"source":', '"src":'), r"unknown fields \['src'\], missing fields \['source'\]"),
        (GOOD_LINE.replace('"established":true', '"established":1'), "established is not true or false"),
        (GOOD_LINE.replace("192.168.1.50", "host.example"), "'host.example' is not an IP address"),
        (GOOD_LINE + GOOD_LINE + "{}\n", r"line 3: unknown fields \[\], missing fields"),
        (GOOD_LINE.replace("}", ', "pad": "' + "x" * 5000 + '"}'), "line 1: longer than 4096 bytes"),
    ],
)
def test_bad_json_lines_name_their_line(text: str, match: str) -> None:
    with pytest.raises(CaptureInvalid, match=match):
        read_flows_jsonl(io.BytesIO(text.encode()))


def test_json_lines_record_count_is_bounded() -> None:
    with pytest.raises(CaptureInvalid, match="line 2: more than 1 records"):
        read_flows_jsonl(io.BytesIO(jsonl(FLOWS)), max_records=1)


addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
flows = st.builds(
    Flow,
    start=st.datetimes(timezones=st.just(dt.UTC)).map(lambda t: t.replace(microsecond=t.microsecond)),
    source=addresses,
    destination=addresses,
    protocol=st.integers(0, 255),
    source_port=st.integers(0, 65535),
    destination_port=st.integers(0, 65535),
    icmp_type=st.none() | st.integers(0, 255),
    icmp_code=st.none() | st.integers(0, 255),
    packets=st.integers(0, 2**40),
    octets=st.integers(0, 2**50),
    established=st.booleans(),
)


@settings(max_examples=200)
@given(st.lists(flows, max_size=5))
def test_any_flows_round_trip_through_json_lines(records: list[Flow]) -> None:
    assert read_flows_jsonl(io.BytesIO(jsonl(tuple(records)))) == tuple(records)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_are_flows_or_capture_invalid(data: bytes) -> None:
    with contextlib.suppress(CaptureInvalid):
        read_flows_jsonl(io.BytesIO(data))
    with contextlib.suppress(CaptureInvalid):
        read_zeek_conn_csv(io.BytesIO(HEADER.encode() + b"\n" + data))


def test_observed_traffic_of_flow_records_has_no_dns_or_macs() -> None:
    traffic = ObservedTraffic.of_flows(FLOWS)
    assert (traffic.flows, traffic.resolutions, traffic.hosts, traffic.packets) == (FLOWS, (), (), 8)


def test_json_lines_are_json() -> None:
    assert [json.loads(line)["protocol"] for line in jsonl(FLOWS).splitlines()] == [6, 58]
