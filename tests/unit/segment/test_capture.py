"""The capture reader: pcap and pcapng framing, link/IP/transport decoding, DNS answers, limits."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import itertools
import socket
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.segment.capture import (
    MAX_SNAPLEN,
    DnsAnswer,
    Packet,
    SkippedPacket,
    parse_dns_answers,
    read_capture,
)
from fleetguard.segment.errors import CaptureInvalid

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "net"
DEVICE_MAC, GATEWAY_MAC = "aa:bb:cc:00:00:01", "00:1c:7f:53:d0:28"
T0 = dt.datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=dt.UTC)

# -- a tiny packet composer (no checksums: the reader does not check them) -------------------------


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def ether(payload: bytes, ethertype: int = 0x0800, src: str = DEVICE_MAC, dst: str = GATEWAY_MAC) -> bytes:
    return mac(dst) + mac(src) + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, frag: int = 0, options: bytes = b"") -> bytes:
    ihl = 5 + len(options) // 4
    total = ihl * 4 + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        total,
        1,
        frag,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return header + options + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes) -> bytes:
    return (
        struct.pack("!IHBB", 6 << 28, len(payload), next_header, 64)
        + socket.inet_pton(socket.AF_INET6, src)
        + socket.inet_pton(socket.AF_INET6, dst)
        + payload
    )


def tcp(sport: int, dport: int, flags: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(kind: int, code: int, payload: bytes = b"") -> bytes:
    return struct.pack("!BBHHH", kind, code, 0, 7, 1) + payload


def dns_name(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\x00"


def dns_response(question: str, records: list[tuple[str, int, bytes]], *, rcode: int = 0) -> bytes:
    """A response to an A query; records are (owner, type, rdata) with uncompressed names."""
    header = struct.pack("!HHHHHH", 0x1234, 0x8180 | rcode, 1, len(records), 0, 0)
    body = dns_name(question) + struct.pack("!HH", 1, 1)
    for owner, rtype, rdata in records:
        body += dns_name(owner) + struct.pack("!HHIH", rtype, 1, 300, len(rdata)) + rdata
    return header + body


def pcap(
    frames: list[bytes], *, endian: str = "<", nano: bool = False, linktype: int = 1, start: dt.datetime = T0
) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, MAX_SNAPLEN, linktype)
    seconds = int(start.timestamp())
    for index, frame in enumerate(frames):
        fraction = (start.microsecond + index) * (1000 if nano else 1)
        out += struct.pack(endian + "IIII", seconds, fraction, len(frame), len(frame)) + frame
    return out


def block(kind: int, body: bytes, endian: str = "<") -> bytes:
    body += b"\x00" * (-len(body) % 4)
    length = struct.pack(endian + "I", len(body) + 12)
    return struct.pack(endian + "I", kind) + length + body + length


def shb(endian: str = "<") -> bytes:
    return block(0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1), endian)


def idb(linktype: int = 1, endian: str = "<", tsresol: int | None = None) -> bytes:
    options = b""
    if tsresol is not None:
        options = struct.pack(endian + "HH", 9, 1) + bytes([tsresol]) + b"\x00" * 3 + b"\x00" * 4
    return block(1, struct.pack(endian + "HHI", linktype, 0, 0) + options, endian)


def epb(frame: bytes, units: int, endian: str = "<", interface: int = 0) -> bytes:
    header = struct.pack(endian + "IIIII", interface, units >> 32, units & 0xFFFFFFFF, len(frame), len(frame))
    return block(6, header + frame, endian)


def read_all(data: bytes, **limits: int) -> list[Packet | SkippedPacket]:
    return list(read_capture(io.BytesIO(data), **limits))


SYN = ether(ipv4("192.168.1.50", "203.0.113.10", 6, tcp(50000, 443, 0x02)))

# -- decoding --------------------------------------------------------------------------------------


def test_ethernet_ipv4_tcp_syn_decodes_every_field() -> None:
    assert read_all(pcap([SYN])) == [
        Packet(
            timestamp=T0,
            length=54,
            source_mac=DEVICE_MAC,
            destination_mac=GATEWAY_MAC,
            ethertype=0x0800,
            ip_version=4,
            source="192.168.1.50",
            destination="203.0.113.10",
            protocol=6,
            ip_length=40,
            source_port=50000,
            destination_port=443,
            tcp_flags=0x02,
            payload_length=0,
        )
    ]


def test_big_endian_nanosecond_pcap_keeps_microseconds() -> None:
    packets = read_all(pcap([SYN, SYN], endian=">", nano=True))
    assert [p.timestamp for p in packets if isinstance(p, Packet)] == [T0, T0 + dt.timedelta(microseconds=1)]


def test_ip_options_vlan_tags_and_udp_payload_length() -> None:
    tagged = ether(
        struct.pack("!HH", 7, 0x0800)
        + ipv4("10.0.0.2", "10.0.0.1", 17, udp(5683, 5683, b"hello"), options=b"\x01" * 4),
        0x8100,
    )
    (packet,) = read_all(pcap([tagged]))
    assert isinstance(packet, Packet)
    assert (packet.ethertype, packet.ip_length, packet.source_port, packet.payload_length) == (
        0x0800,
        37,
        5683,
        5,
    )


def test_ipv6_extension_headers_are_walked_to_the_transport_header() -> None:
    hop_by_hop = bytes([44, 0]) + b"\x00" * 6  # next: fragment
    first_fragment = bytes([17, 0]) + struct.pack("!HI", 0x0001, 99)  # offset 0, more fragments
    payload = hop_by_hop + first_fragment + udp(5353, 5353, b"x" * 4)
    (packet,) = read_all(pcap([ether(ipv6("fe80::1", "ff02::fb", 0, payload), 0x86DD)]))
    assert isinstance(packet, Packet)
    assert (packet.ip_version, packet.source, packet.destination, packet.protocol) == (
        6,
        "fe80::1",
        "ff02::fb",
        17,
    )
    assert (packet.source_port, packet.destination_port, packet.payload_length, packet.fragment) == (
        5353,
        5353,
        4,
        False,
    )
    assert packet.ip_length == 40 + len(payload)


def test_non_first_fragments_carry_no_ports() -> None:
    later = ipv4("192.168.1.50", "203.0.113.10", 17, b"\x00" * 16, frag=185)
    (packet,) = read_all(pcap([ether(later)]))
    assert isinstance(packet, Packet)
    assert (packet.fragment, packet.source_port, packet.protocol, packet.payload_length) == (True, 0, 17, 16)


def test_icmpv6_and_icmp_types() -> None:
    frames = [
        ether(ipv4("192.168.1.50", "192.168.1.1", 1, icmp(8, 0, b"ping")), 0x0800),
        ether(ipv6("2001:db8::5", "2001:db8::1", 58, icmp(128, 0)), 0x86DD),
    ]
    kinds = [
        (p.protocol, p.icmp_type, p.icmp_code, p.payload_length)
        for p in read_all(pcap(frames))
        if isinstance(p, Packet)
    ]
    assert kinds == [(1, 8, 0, 8), (58, 128, 0, 4)]


SLL = struct.pack("!HHH8sH", 0, 1, 6, mac(DEVICE_MAC) + b"\0\0", 0x0800)  # sent by us, ARPHRD_ETHER
SLL2 = struct.pack("!HHIHBB8s", 0x86DD, 0, 3, 1, 0, 6, mac(DEVICE_MAC) + b"\0\0")


@pytest.mark.parametrize(
    ("linktype", "frame", "source_mac"),
    [
        (101, ipv4("10.1.1.1", "10.1.1.2", 6, tcp(1, 2, 0x10)), None),
        (228, ipv4("10.1.1.1", "10.1.1.2", 6, tcp(1, 2, 0x10)), None),
        (229, ipv6("2001:db8::a", "2001:db8::b", 6, tcp(1, 2, 0x10)), None),
        (113, SLL + ipv4("10.1.1.1", "10.1.1.2", 6, tcp(1, 2, 0x10)), DEVICE_MAC),
        (276, SLL2 + ipv6("2001:db8::a", "2001:db8::b", 6, tcp(1, 2, 0x10)), DEVICE_MAC),
    ],
)  # fmt: skip
def test_raw_and_linux_cooked_link_types(linktype: int, frame: bytes, source_mac: str | None) -> None:
    (packet,) = read_all(pcap([frame], linktype=linktype))
    assert isinstance(packet, Packet)
    assert (packet.source_mac, packet.destination_mac, packet.protocol, packet.tcp_flags) == (
        source_mac,
        None,
        6,
        0x10,
    )
    assert packet.source in {"10.1.1.1", "2001:db8::a"}


def test_raw_ipv4_link_type_refuses_an_ipv6_packet() -> None:
    frame = ipv6("2001:db8::a", "2001:db8::b", 6, tcp(1, 2, 0x10))
    assert read_all(pcap([frame], linktype=228)) == [SkippedPacket(24, "raw IP packet of version 6")]


def test_non_ip_frames_are_packets_without_ip_fields() -> None:
    (packet,) = read_all(pcap([ether(b"\x00" * 28, 0x0806)]))
    assert packet == Packet(T0, 42, DEVICE_MAC, GATEWAY_MAC, 0x0806)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (ether(b"\x45\x00"), "short IPv4 header"),
        (ether(b"\x43" + b"\x00" * 19), "bad IPv4 version/IHL 0x43"),
        (ether(b"\x46" + b"\x00" * 19), "truncated IPv4 options"),
        (ether(ipv4("1.1.1.1", "2.2.2.2", 6, b"\x00" * 8)), "truncated TCP header"),
        (
            ether(ipv4("1.1.1.1", "2.2.2.2", 6, tcp(1, 2, 0x02)[:12] + b"\x30" + b"\x00" * 7)),
            "bad TCP data offset 3",
        ),
        (ether(ipv4("1.1.1.1", "2.2.2.2", 17, b"\x00" * 4)), "truncated UDP header"),
        (ether(b"\x60" + b"\x00" * 20, 0x86DD), "short IPv6 header"),
        (ether(ipv6("::1", "::2", 0, bytes([0, 0]) * 40), 0x86DD), "more than 8 IPv6 extension headers"),
        (b"\x00" * 10, "short Ethernet header"),
    ],
)
def test_malformed_inner_packets_are_skipped_not_fatal(frame: bytes, reason: str) -> None:
    packets = read_all(pcap([frame, SYN]))
    assert packets[0] == SkippedPacket(24, reason)
    assert isinstance(packets[1], Packet)


# -- pcapng ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_sections_interfaces_and_packet_blocks(endian: str) -> None:
    units = int(T0.timestamp()) * 10**9 + 250_000_123  # nanosecond resolution: if_tsresol 9
    custom = block(0x00000BAD, b"vendor data", endian)
    spb = block(3, struct.pack(endian + "I", len(SYN)) + SYN, endian)
    data = shb(endian) + idb(1, endian) + idb(101, endian, tsresol=9) + custom
    data += (
        epb(SYN, int(T0.timestamp()) * 10**6 + 250_000, endian)
        + epb(SYN[14:], units, endian, interface=1)
        + spb
    )
    packets = read_all(data)
    assert [type(p).__name__ for p in packets] == ["Packet"] * 3
    first, second, simple = (p for p in packets if isinstance(p, Packet))
    assert (first.timestamp, first.source_mac, first.destination_port) == (T0, DEVICE_MAC, 443)
    assert (second.timestamp, second.source_mac, second.destination_port) == (T0, None, 443)
    assert (simple.timestamp, simple.destination_port) == (dt.datetime(1970, 1, 1, tzinfo=dt.UTC), 443)


def test_pcapng_new_section_resets_byte_order_and_interfaces() -> None:
    data = shb("<") + idb(1, "<") + epb(SYN, 0, "<") + shb(">") + idb(1, ">") + epb(SYN, 0, ">")
    assert len([p for p in read_all(data) if isinstance(p, Packet)]) == 2


def test_pcapng_packets_on_an_unsupported_link_type_are_skipped() -> None:
    data = shb() + idb(147) + epb(b"\x01\x02", 0)
    assert read_all(data) == [SkippedPacket(48, "unsupported link type")]


# -- DNS -------------------------------------------------------------------------------------------


def test_dns_answers_follow_cname_chains_back_to_the_question() -> None:
    message = dns_response(
        "api.example.com",
        [
            ("api.example.com", 5, dns_name("edge.cdn.example.net")),
            ("edge.cdn.example.net", 5, dns_name("e1.cdn.example.net")),
            ("e1.cdn.example.net", 1, socket.inet_aton("203.0.113.10")),
            ("e1.cdn.example.net", 28, socket.inet_pton(socket.AF_INET6, "2001:db8::10")),
            ("unrelated.example.org", 1, socket.inet_aton("198.51.100.1")),
            ("api.example.com", 16, b"\x03txt"),  # TXT: not an address
        ],
    )
    assert parse_dns_answers(message) == (
        DnsAnswer("api.example.com", "203.0.113.10"),
        DnsAnswer("api.example.com", "2001:db8::10"),
        DnsAnswer("unrelated.example.org", "198.51.100.1"),
    )


def test_dns_names_may_be_compressed_and_are_lower_cased() -> None:
    header = struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0)
    question = dns_name("Cloud.Example.COM") + struct.pack("!HH", 1, 1)
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton("192.0.2.7")
    assert parse_dns_answers(header + question + answer) == (DnsAnswer("cloud.example.com", "192.0.2.7"),)


def test_dns_queries_and_error_responses_have_no_answers() -> None:
    response = dns_response("a.example", [("a.example", 1, socket.inet_aton("192.0.2.1"))])
    query = response[:2] + b"\x01\x00" + response[4:]
    assert parse_dns_answers(query) == ()
    assert parse_dns_answers(dns_response("a.example", [], rcode=3)) == ()


def test_dns_answers_of_a_udp_53_response_are_on_the_packet() -> None:
    message = dns_response("a.example", [("a.example", 1, socket.inet_aton("192.0.2.1"))])
    frame = ether(
        ipv4("192.168.1.1", "192.168.1.50", 17, udp(53, 40000, message)), src=GATEWAY_MAC, dst=DEVICE_MAC
    )
    (packet,) = read_all(pcap([frame]))
    assert isinstance(packet, Packet)
    assert (packet.dns_answers, packet.dns_error) == ((DnsAnswer("a.example", "192.0.2.1"),), None)


LOOP = struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + b"\xc0\x0c" + struct.pack("!HH", 1, 1)


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (LOOP, r"DNS name at offset 12: compression pointer to 12 does not point before the name \(a loop\)"),
        (struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + b"\x01a\xc0\x0e", r"pointer to 14 .* \(a loop\)"),
        (b"\x00" * 11, "DNS message of 11 bytes is shorter than its header"),
        (struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + b"\x05ab", "runs past the end of the message"),
        (struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + b"\x40", "reserved label type 0x40"),
        (struct.pack("!HHHHHH", 1, 0x8180, 17, 0, 0, 0), "17 questions and 0 answers"),
        (struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + b"\x3fa" * 5, "runs past the end"),
        (
            struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + (b"\x3f" + b"a" * 63) * 5 + b"\x00",
            "longer than 255",
        ),
    ],
)
def test_malformed_dns_messages_are_rejected(message: bytes, match: str) -> None:
    with pytest.raises(CaptureInvalid, match=match):
        parse_dns_answers(message)


def test_a_dns_compression_loop_in_a_capture_is_recorded_on_the_packet_not_fatal() -> None:
    frame = ether(ipv4("192.168.1.1", "192.168.1.50", 17, udp(53, 40000, LOOP)))
    packets = read_all(pcap([frame, SYN]))
    assert isinstance(packets[0], Packet)
    assert packets[0].dns_answers == ()
    assert "does not point before the name (a loop)" in (packets[0].dns_error or "")
    assert len(packets) == 2


# -- corrupt files ---------------------------------------------------------------------------------

GOOD = pcap([SYN])


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"GIF89a" + b"\x00" * 40, r"offset 0: not a pcap or pcapng file \(magic 47494638\)"),
        (GOOD[:14], "offset 4: truncated file header: 10 of 20 bytes"),
        (GOOD[:30], "offset 24: truncated record header: 6 of 16 bytes"),
        (GOOD[:-1], "offset 24: truncated packet data: 53 of 54 bytes"),
        (GOOD[:4] + struct.pack("<H", 3) + GOOD[6:], "offset 4: pcap version 3 is not 2"),
        (GOOD[:20] + struct.pack("<I", 147) + GOOD[24:], "offset 20: link type 147 is not supported"),
        (GOOD[:32] + struct.pack("<I", MAX_SNAPLEN + 1) + GOOD[36:], "offset 24: captured length 262145 "),
        (shb() + idb() + epb(SYN, 0)[:-8], r"offset 48: truncated block \(length 88 overruns the file\)"),
        (shb() + struct.pack("<II", 1, 14) + b"\x00" * 8, "offset 28: block length 14 is not a multiple"),
        (shb() + struct.pack("<II", 1, 1 << 30) + b"\x00" * 8, "offset 28: block length 1073741824"),
        (shb() + epb(SYN, 0), "offset 28: packet of interface 0, which was not described"),
        (shb() + idb() + block(6, struct.pack("<5I", 0, 0, 0, 500, 500)), "offset 48: captured length 500"),
        (shb()[:8] + struct.pack("<I", 0x11223344) + shb()[12:], "offset 8: bad pcapng byte-order magic"),
        (shb() + idb()[:-4] + b"\x00\x00\x00\x00", "offset 28: block's trailing length differs"),
    ],
)  # fmt: skip
def test_corrupt_captures_raise_with_the_offset(data: bytes, match: str) -> None:
    with pytest.raises(CaptureInvalid, match=match):
        read_all(data)


def test_packet_and_byte_limits() -> None:
    with pytest.raises(CaptureInvalid, match="offset 94: more than 1 packets"):
        read_all(pcap([SYN, SYN]), max_packets=1)
    with pytest.raises(CaptureInvalid, match="offset 40: capture is larger than the limit of 60 bytes"):
        read_all(pcap([SYN]), max_bytes=60)


def test_reading_is_lazy_so_a_corrupt_tail_is_not_reached_by_an_early_stop() -> None:
    packets = list(itertools.islice(read_capture(io.BytesIO(pcap([SYN, SYN]) + b"\x01")), 2))
    assert len(packets) == 2


# -- properties ------------------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_random_bytes_after_a_pcap_header_only_ever_raise_capture_invalid(tail: bytes) -> None:
    with contextlib.suppress(CaptureInvalid):
        read_all(GOOD[:24] + tail)


@settings(max_examples=300)
@given(st.binary(max_size=400), st.sampled_from([1, 101, 113, 276, 228, 229]))
def test_random_frames_decode_or_are_skipped(frame: bytes, linktype: int) -> None:
    (packet,) = read_all(pcap([frame], linktype=linktype))
    assert isinstance(packet, Packet | SkippedPacket)


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_random_bytes_after_a_pcapng_section_header_only_ever_raise_capture_invalid(tail: bytes) -> None:
    with contextlib.suppress(CaptureInvalid):
        read_all(shb() + idb() + tail)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_dns_messages_parse_or_raise_capture_invalid(body: bytes) -> None:
    try:
        answers = parse_dns_answers(struct.pack("!HHHHHH", 1, 0x8180, 1, 3, 0, 0) + body)
    except CaptureInvalid:
        return
    assert all(isinstance(answer, DnsAnswer) for answer in answers)


# -- real captures ---------------------------------------------------------------------------------

REAL = sorted(DATA.glob("*/*.pcap")) if DATA.is_dir() else []
needs_data = pytest.mark.skipif(not REAL, reason=f"no shared captures under {DATA}")


@needs_data
@pytest.mark.parametrize("path", REAL, ids=lambda path: path.name)
def test_every_shared_capture_reads_without_error(path: Path) -> None:
    with path.open("rb") as stream:
        packets = list(itertools.islice(read_capture(stream), 200_000))
    assert packets
    assert not [p for p in packets if isinstance(p, SkippedPacket)]


@needs_data
def test_a_benign_capture_has_the_expected_packets_and_dns_answers() -> None:
    with (DATA / "benign-devices" / "blink-cam-01.pcap").open("rb") as stream:
        packets = [p for p in read_capture(stream) if isinstance(p, Packet)]
    answers = {answer for p in packets for answer in p.dns_answers}
    assert len(packets) == 24_022
    assert DnsAnswer("vs-cam.u011.immedia-semi.com", "52.70.158.224") in answers
