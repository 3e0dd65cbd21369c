"""fleetguard.monitor.packets: exact decoding of hand-built captures, the shared captures, hostile input."""

from __future__ import annotations

import ipaddress
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.monitor.errors import CaptureCorrupt
from fleetguard.monitor.model import PacketColumns, Skipped, address_key, mac_key
from fleetguard.monitor.packets import iter_batches, read_packets
from fleetguard.segment.capture import Packet, read_capture

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "net"
MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("0200000000ff")

# -- building frames -------------------------------------------------------------------------------


def ethernet(payload: bytes, ethertype: int = 0x0800, vlans: tuple[int, ...] = ()) -> bytes:
    tags = b"".join(struct.pack("!HH", tpid, 7) for tpid in vlans)
    return MAC_B + MAC_A + tags + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, fragment: int = 0, ihl: int = 5) -> bytes:
    options = b"\x01" * (max(ihl, 5) * 4 - 20)
    total = 20 + len(options) + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 1, fragment, 64, proto, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    return header + options + payload


def ipv6(
    src: str, dst: str, proto: int, payload: bytes, extensions: tuple[tuple[int, bytes], ...] = ()
) -> bytes:
    # extensions: (type, 8-byte-multiple body without the next-header byte), chained in order
    chain, types = b"", [ext for ext, _ in extensions] + [proto]
    for index, (_ext, body) in enumerate(extensions):
        chain += bytes([types[index + 1]]) + body
    first = types[0]
    head = struct.pack("!IHBB", 6 << 28, len(chain) + len(payload), first, 64)
    return head + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + chain + payload


def tcp(sport: int, dport: int, flags: int, offset: int = 5) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, offset << 4, flags, 1024, 0, 0) + b"\0" * (
        max(offset, 5) * 4 - 20
    )


def udp(sport: int, dport: int, payload: bytes = b"hi") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(kind: int, code: int) -> bytes:
    return bytes([kind, code, 0, 0]) + b"\0\0\0\0"


def pcap(
    frames: list[bytes], *, link: int = 1, endian: str = "<", nano: bool = False, start: int = 1_700_000_000
) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, link)
    for index, frame in enumerate(frames):
        out += struct.pack(endian + "IIII", start + index, 250, len(frame), len(frame)) + frame
    return out


def block(kind: int, body: bytes, endian: str = "<") -> bytes:
    body += b"\0" * (-len(body) % 4)
    total = len(body) + 12
    return struct.pack(endian + "II", kind, total) + body + struct.pack(endian + "I", total)


def shb(endian: str = "<") -> bytes:
    return block(0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1), endian)


def idb(link: int, tsresol: int | None = None, endian: str = "<") -> bytes:
    options = b"" if tsresol is None else struct.pack(endian + "HH", 9, 1) + bytes([tsresol, 0, 0, 0])
    return block(1, struct.pack(endian + "HHI", link, 0, 0) + options, endian)


def epb(interface: int, units: int, frame: bytes, endian: str = "<", wire: int | None = None) -> bytes:
    head = struct.pack(
        endian + "IIIII", interface, units >> 32, units & 0xFFFFFFFF, len(frame), wire or len(frame)
    )
    return block(6, head + frame, endian)


def spb(frame: bytes) -> bytes:
    return block(3, struct.pack("<I", len(frame)) + frame)


def read(tmp_path: Path, data: bytes, **limits: int) -> tuple[PacketColumns, Skipped]:
    path = tmp_path / "capture"
    path.write_bytes(data)
    return read_packets(path, **limits)


TCP_SYN = ethernet(ipv4("192.0.2.1", "198.51.100.7", 6, tcp(40000, 443, 0x02)))


def row(columns: PacketColumns, index: int) -> tuple[object, ...]:
    return (
        float(columns.ts[index]), int(columns.src[index]), int(columns.dst[index]), int(columns.sport[index]),
        int(columns.dport[index]), int(columns.proto[index]), int(columns.length[index]),
        int(columns.tcp_flags[index]), int(columns.src_mac[index]),
    )  # fmt: skip


# -- exact values ----------------------------------------------------------------------------------


def test_ethernet_ipv4_tcp_is_decoded_exactly(tmp_path: Path) -> None:
    columns, skipped = read(tmp_path, pcap([TCP_SYN]))
    assert skipped.total == 0
    source, destination = address_key("192.0.2.1"), address_key("198.51.100.7")
    assert row(columns, 0) == (
        1_700_000_000.00025,
        source,
        destination,
        40000,
        443,
        6,
        54,
        0x02,
        mac_key(MAC_A),
    )
    assert columns.addresses == {
        address_key("192.0.2.1"): "192.0.2.1",
        address_key("198.51.100.7"): "198.51.100.7",
    }
    assert columns.src.dtype == np.uint64
    assert columns.sport.dtype == np.uint16


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_byte_orders_and_timestamp_resolutions(tmp_path: Path, endian: str, nano: bool) -> None:
    columns, _ = read(tmp_path, pcap([TCP_SYN, TCP_SYN], endian=endian, nano=nano))
    fraction = 250e-9 if nano else 250e-6
    assert columns.ts.tolist() == [1_700_000_000 + fraction, 1_700_000_001 + fraction]
    assert columns.dport.tolist() == [443, 443]


def test_vlan_and_qinq_tags_are_stepped_over(tmp_path: Path) -> None:
    frame = ethernet(ipv4("10.0.0.1", "10.0.0.2", 17, udp(5353, 53)), vlans=(0x88A8, 0x8100))
    columns, skipped = read(tmp_path, pcap([frame]))
    assert skipped.total == 0
    assert (int(columns.sport[0]), int(columns.dport[0]), int(columns.proto[0])) == (5353, 53, 17)


def test_ipv6_extension_headers_and_fragments(tmp_path: Path) -> None:
    hop = (0, b"\x00" + b"\0" * 6)  # hop-by-hop, 8 bytes
    first = (44, b"\0" + struct.pack("!HI", 0x0001, 9))  # fragment offset 0, more fragments
    later = (44, b"\0" + struct.pack("!HI", 0x0100, 9))  # offset 32: no transport header
    frames = [
        ethernet(ipv6("2001:db8::1", "2001:db8::2", 17, udp(1000, 2000), (hop, first)), 0x86DD),
        ethernet(ipv6("2001:db8::1", "2001:db8::2", 17, b"\xff" * 16, (later,)), 0x86DD),
    ]
    columns, skipped = read(tmp_path, pcap(frames))
    assert skipped.total == 0
    assert columns.sport.tolist() == [1000, 0]
    assert columns.proto.tolist() == [17, 17]
    assert columns.addresses[int(columns.src[0])] == "2001:db8::1"
    assert int(columns.dst[0]) == address_key("2001:db8::2")


def test_ipv4_non_first_fragment_has_no_ports(tmp_path: Path) -> None:
    frame = ethernet(ipv4("10.0.0.1", "10.0.0.2", 6, b"\x01" * 24, fragment=0x0010))
    columns, skipped = read(tmp_path, pcap([frame]))
    assert skipped.total == 0
    assert (int(columns.sport[0]), int(columns.tcp_flags[0]), int(columns.proto[0])) == (0, 0, 6)


def test_icmp_type_and_code_stand_in_for_ports(tmp_path: Path) -> None:
    frames = [
        ethernet(ipv4("10.0.0.1", "10.0.0.2", 1, icmp(8, 0))),
        ethernet(ipv4("10.0.0.2", "10.0.0.1", 1, icmp(3, 3))),
        ethernet(ipv6("fe80::1", "ff02::1", 58, icmp(135, 0)), 0x86DD),
    ]
    columns, _ = read(tmp_path, pcap(frames))
    assert columns.sport.tolist() == [8, 3, 135]
    assert columns.dport.tolist() == [0, 3, 0]
    assert columns.proto.tolist() == [1, 1, 58]


def test_non_ip_frames_are_kept_without_addresses(tmp_path: Path) -> None:
    arp = ethernet(b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\0" * 20, 0x0806)
    columns, skipped = read(tmp_path, pcap([arp]))
    assert skipped.total == 0
    assert row(columns, 0)[1:6] == (0, 0, 0, 0, 0)
    assert int(columns.src_mac[0]) == mac_key(MAC_A)


SEGMENT = ipv4("10.1.1.1", "10.1.1.2", 6, tcp(1, 2, 0x10))
SLL = struct.pack("!HHH8sH", 0, 1, 6, MAC_A + b"\0\0", 0x0800)
SLL2 = struct.pack("!HHIHBB8s", 0x0800, 0, 3, 1, 0, 6, MAC_A + b"\0\0")


@pytest.mark.parametrize(("link", "frame"), [
    (101, SEGMENT),
    (228, SEGMENT),
    (229, ipv6("2001:db8::1", "2001:db8::2", 6, tcp(1, 2, 0x10))),
    (113, SLL + SEGMENT),
    (276, SLL2 + SEGMENT),
])  # fmt: skip
def test_link_types(tmp_path: Path, link: int, frame: bytes) -> None:
    columns, skipped = read(tmp_path, pcap([frame], link=link))
    assert skipped.total == 0
    assert (int(columns.sport[0]), int(columns.dport[0]), int(columns.tcp_flags[0])) == (1, 2, 0x10)
    assert int(columns.src_mac[0]) == (mac_key(MAC_A) if link in (113, 276) else 0)


def test_raw_ipv4_link_refuses_ipv6(tmp_path: Path) -> None:
    columns, skipped = read(tmp_path, pcap([ipv6("::1", "::2", 6, tcp(1, 2, 2))], link=228))
    assert len(columns) == 0
    assert skipped.counts == {"raw IP packet of another version": 1}


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_interfaces_keep_their_link_type_and_resolution(tmp_path: Path, endian: str) -> None:
    raw = ipv4("10.2.0.1", "10.2.0.2", 17, udp(1, 2))
    data = (
        shb(endian) + idb(1, None, endian) + idb(101, 9, endian)
        + epb(0, 1_700_000_000_500_000, TCP_SYN, endian) + epb(1, 1_700_000_001_000_000_123, raw, endian)
    )  # fmt: skip
    columns, skipped = read(tmp_path, data)
    assert skipped.total == 0
    assert columns.ts.tolist() == [1_700_000_000.5, 1_700_000_001 + 123e-9]
    assert columns.dport.tolist() == [443, 2]


def test_pcapng_simple_packet_takes_the_previous_timestamp_and_new_sections_reset(tmp_path: Path) -> None:
    data = (
        shb()
        + idb(1)
        + epb(0, 5_000_000, TCP_SYN)
        + spb(TCP_SYN)
        + shb(">")
        + idb(1, None, ">")
        + epb(0, 7_000_000, TCP_SYN, ">")
    )
    columns, skipped = read(tmp_path, data)
    assert skipped.total == 0
    assert columns.ts.tolist() == [5.0, 5.0, 7.0]


def test_captured_length_over_wire_length_keeps_the_larger(tmp_path: Path) -> None:
    data = shb() + idb(1) + epb(0, 0, TCP_SYN, wire=10)
    columns, _ = read(tmp_path, data)
    assert columns.length.tolist() == [len(TCP_SYN)]


def test_batches_concatenate_to_the_whole(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap([TCP_SYN] * 10))
    batches = list(iter_batches(path, batch=3))
    assert [len(columns) for columns, _ in batches] == [3, 3, 3, 1]
    assert sum(skipped.total for _, skipped in batches) == 0
    assert all(columns.addresses for columns, _ in batches)
    with pytest.raises(ValueError, match="batch 0"):
        next(iter_batches(path, batch=0))


# -- hostile input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\xd4\xc3", b"GIF89a" + b"\0" * 40, pcap([])[:20], shb()[:8]])
def test_a_file_that_is_not_a_capture_is_corrupt(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(CaptureCorrupt, match="offset 0"):
        read(tmp_path, data)


def test_bad_pcapng_byte_order_magic_is_corrupt(tmp_path: Path) -> None:
    with pytest.raises(CaptureCorrupt, match="byte-order magic"):
        read(tmp_path, shb()[:8] + b"\x11\x22\x33\x44" + shb()[12:])


def test_bad_pcap_version_is_corrupt(tmp_path: Path) -> None:
    data = bytearray(pcap([TCP_SYN]))
    data[4] = 9
    with pytest.raises(CaptureCorrupt, match="version 9"):
        read(tmp_path, bytes(data))


def test_truncated_last_record_is_counted(tmp_path: Path) -> None:
    columns, skipped = read(tmp_path, pcap([TCP_SYN, TCP_SYN])[:-5])
    assert len(columns) == 1
    assert skipped.counts == {"record cut off by the end of the file": 1}


def test_absurd_record_length_ends_reading(tmp_path: Path) -> None:
    data = pcap([TCP_SYN]) + struct.pack("<IIII", 0, 0, 0xFFFFFFF0, 60) + TCP_SYN + pcap([TCP_SYN])[24:]
    columns, skipped = read(tmp_path, data)
    assert len(columns) == 1
    assert skipped.counts == {"record length over 262144 (framing lost; rest of file not read)": 1}


def test_unsupported_link_type_skips_each_packet(tmp_path: Path) -> None:
    columns, skipped = read(tmp_path, pcap([TCP_SYN] * 3, link=0xBEEF))
    assert len(columns) == 0
    assert skipped.counts == {"unsupported link type": 3}


HOP = (0, b"\0" * 7)  # an empty hop-by-hop options header


@pytest.mark.parametrize(("frame", "reason"), [
    (TCP_SYN[:10], "short link-layer header"),
    (ethernet(b"", vlans=(0x8100,))[:15], "short VLAN tag"),
    (ethernet(ipv4("1.1.1.1", "2.2.2.2", 6, tcp(1, 2, 2)))[:30], "short IPv4 header"),
    (ethernet(ipv4("1.1.1.1", "2.2.2.2", 6, tcp(1, 2, 2), ihl=3)), "bad IPv4 version/IHL"),
    (ethernet(ipv4("1.1.1.1", "2.2.2.2", 6, b"", ihl=15))[:40], "truncated IPv4 options"),
    (ethernet(ipv4("1.1.1.1", "2.2.2.2", 6, tcp(1, 2, 2))[:20]), "truncated TCP header"),
    (ethernet(ipv4("1.1.1.1", "2.2.2.2", 6, tcp(1, 2, 2, offset=2))), "bad TCP data offset"),
    (ethernet(ipv4("1.1.1.1", "2.2.2.2", 17, b"\0\1")), "truncated UDP header"),
    (ethernet(ipv4("1.1.1.1", "2.2.2.2", 1, b"\x08")), "truncated ICMP header"),
    (ethernet(b"\x45" * 10, 0x86DD), "short IPv6 header"),
    (ethernet(b"\x45" * 40, 0x86DD), "bad IPv6 version"),
    (ethernet(ipv6("::1", "::2", 17, b"", (HOP,) * 9), 0x86DD), "too many IPv6 extension headers"),
    (ethernet(ipv6("::1", "::2", 17, b"", (HOP,))[:-4], 0x86DD), "truncated IPv6 extension header"),
])  # fmt: skip
def test_malformed_packets_are_skipped_with_a_reason(tmp_path: Path, frame: bytes, reason: str) -> None:
    columns, skipped = read(tmp_path, pcap([frame, TCP_SYN]))
    assert skipped.counts == {reason: 1}
    assert columns.dport.tolist() == [443]


def test_ipv4_total_length_under_header_is_skipped(tmp_path: Path) -> None:
    frame = bytearray(ethernet(ipv4("1.1.1.1", "2.2.2.2", 6, tcp(1, 2, 2))))
    frame[16:18] = struct.pack("!H", 12)
    _, skipped = read(tmp_path, pcap([bytes(frame)]))
    assert skipped.counts == {"IPv4 total length shorter than its header": 1}


BAD_BLOCK = "bad pcapng block length (framing lost; rest of file not read)"


@pytest.mark.parametrize(("data", "reason"), [
    (shb() + idb(1) + struct.pack("<II", 6, 13) + b"\0" * 20, BAD_BLOCK),
    (shb() + idb(1) + epb(0, 0, TCP_SYN)[:-4] + b"\0\0\0\0", BAD_BLOCK),
    (shb() + idb(1) + epb(3, 0, TCP_SYN), "packet of an undescribed pcapng interface"),
    (shb() + idb(0xBEEF) + epb(0, 0, TCP_SYN), "unsupported link type"),
    (shb() + idb(1) + block(6, b"\0" * 12), "pcapng packet block too short for its captured length"),
    (shb() + block(1, b"\0\0"), "bad pcapng interface description"),
    (shb() + idb(1) + epb(0, 0, TCP_SYN)[:-8], "record cut off by the end of the file"),
])  # fmt: skip
def test_pcapng_damage_is_counted(tmp_path: Path, data: bytes, reason: str) -> None:
    columns, skipped = read(tmp_path, data)
    assert len(columns) == 0
    assert skipped.counts == {reason: 1}


def test_packet_and_byte_limits_are_counted(tmp_path: Path) -> None:
    columns, skipped = read(tmp_path, pcap([TCP_SYN] * 5), max_packets=2)
    assert len(columns) == 2
    assert skipped.counts == {"packet limit reached (rest of file not read)": 1}
    columns, skipped = read(tmp_path, pcap([TCP_SYN] * 5), max_packets=5)
    assert (len(columns), skipped.total) == (5, 0)
    columns, skipped = read(tmp_path, pcap([TCP_SYN] * 5), max_bytes=24 + 2 * (16 + len(TCP_SYN)) + 3)
    assert len(columns) == 2
    assert skipped.counts == {"byte limit reached (rest of file not read)": 1}


@settings(max_examples=150, deadline=None)
@given(
    header=st.sampled_from([pcap([]), pcap([], link=113, endian=">"), shb() + idb(1), shb(">")]),
    tail=st.binary(max_size=600),
)
def test_random_bytes_after_a_valid_header_never_raise(header: bytes, tail: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        columns, skipped = read(Path(directory), header + tail)
    assert len(columns) + skipped.total >= 0
    assert len(columns.addresses) <= 2 * len(columns)


@settings(max_examples=100, deadline=None)
@given(frame=st.binary(min_size=0, max_size=200), link=st.sampled_from([1, 101, 113, 228, 229, 276]))
def test_random_frames_are_decoded_or_skipped(frame: bytes, link: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        columns, skipped = read(Path(directory), pcap([frame, TCP_SYN], link=link))
    assert len(columns) + skipped.total == 2


# -- the shared captures ---------------------------------------------------------------------------

CAPTURES = sorted(DATA.glob("*/*.pcap")) if DATA.is_dir() else []


@pytest.mark.skipif(not CAPTURES, reason=f"the shared captures are not at {DATA}")
def test_shared_captures_decode_without_skips() -> None:
    total = 0
    for path in CAPTURES:
        columns, skipped = read_packets(path)
        assert skipped.total == 0, (path, skipped.counts)
        assert len(columns) > 0
        assert bool(np.all(np.diff(columns.ts) > -3600)), path
        ip = columns.proto > 0
        for key in set(columns.src[ip].tolist()) | set(columns.dst[ip].tolist()):
            assert address_key(columns.addresses[key]) == key
        total += len(columns)
    assert total > 200_000


@pytest.mark.skipif(not (DATA / "attacks").is_dir(), reason=f"the shared captures are not at {DATA}")
@pytest.mark.parametrize("name", ["test8-malicious.pcap", "test12-icmp-portscan.pcap"])
def test_shared_capture_agrees_with_the_segmentation_reader(name: str) -> None:
    path = DATA / "attacks" / name
    columns, _ = read_packets(path)
    with path.open("rb") as stream:
        packets = [p for p in read_capture(stream) if isinstance(p, Packet)]
    assert len(packets) == len(columns)
    for index, packet in enumerate(packets):
        ported = packet.protocol in (6, 17)
        assert row(columns, index)[1:7] == (
            address_key(packet.source) if packet.source else 0,
            address_key(packet.destination) if packet.destination else 0,
            packet.source_port if ported else packet.icmp_type or 0,
            packet.destination_port if ported else packet.icmp_code or 0,
            packet.protocol or 0,
            packet.length,
        )
