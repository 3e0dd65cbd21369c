"""Discovery: IEEE registry parsing, DHCP and ClientHello parsers (hand-built and hostile bytes),
fingerprints, and discovered devices from flows and packets."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.monitor.discovery import (
    ClientHello,
    DeviceKind,
    DhcpInfo,
    Hints,
    OuiTable,
    PayloadInvalid,
    discover_devices,
    fingerprint,
    parse_client_hello,
    parse_dhcp,
)
from fleetguard.monitor.model import FlowRecord, PacketColumns, address_key

OUI_TXT = (
    """\
OUI/MA-L                                                    Organization
company_id                                                  Organization
                                                            Address

00-22-72   (hex)\t\tAmerican Micro-Fuel Device Corp.
002272     (base 16)\t\tAmerican Micro-Fuel Device Corp.
\t\t\t\t2181 Buchanan Loop
\t\t\t\tFerndale  WA  98248
\t\t\t\tUS

44-19-B6   (hex)\t\tHangzhou Hikvision Digital Technology Co.,Ltd.
4419B6     (base 16)\t\tHangzhou Hikvision Digital Technology Co.,Ltd.

ZZ-ZZ-ZZ   (hex)\t\tBroken Hex Line
0A0B0C     (base 16)\t\t
"""
    + "X" * 2000
    + "\n"
)

MAM_TXT = """\
8C-1F-64   (hex)\t\tSmall Camera Maker
F00000-FFFFFF     (base 16)\t\tSmall Camera Maker

8C-1F-64   (hex)\t\tBad Range Maker
F00000-F0FFFE     (base 16)\t\tBad Range Maker
"""

OUI36_CSV = """\
Registry,Assignment,Organization Name,Organization Address
MA-S,70B3D5F2F,"Tiny Sensors, Inc.",Somewhere
MA-S,70B3D5XYZ,Not Hex,Somewhere
MA-S,70B3,Short,Somewhere
MA-S
"""


@pytest.fixture
def ieee(tmp_path: Path) -> Path:
    (tmp_path / "oui.txt").write_text(OUI_TXT)
    (tmp_path / "mam.txt").write_text(MAM_TXT)
    (tmp_path / "oui36.csv").write_text(OUI36_CSV)
    return tmp_path


def test_oui_table_reads_every_registry_and_counts_malformed_lines(ieee: Path) -> None:
    table = OuiTable.load(ieee)
    assert table.reason is None
    assert table.sources == (str(ieee / "oui.txt"), str(ieee / "mam.txt"), str(ieee / "oui36.csv"))
    assert table.entries == {
        (24, 0x002272): "American Micro-Fuel Device Corp.",
        (24, 0x4419B6): "Hangzhou Hikvision Digital Technology Co.,Ltd.",
        (28, 0x8C1F64F): "Small Camera Maker",
        (36, 0x70B3D5F2F): "Tiny Sensors, Inc.",
    }
    assert table.skipped.counts == {
        "no organization": 1,
        "line too long": 1,
        "malformed range": 1,
        "malformed csv row": 3,
    }


def test_vendor_lookup_prefers_the_longest_prefix(ieee: Path) -> None:
    table = OuiTable.load(ieee)
    assert table.vendor("00:22:72:01:02:03") == "American Micro-Fuel Device Corp."
    assert table.vendor(bytes.fromhex("8c1f64f00001")) == "Small Camera Maker"
    assert table.vendor("70-b3-d5-f2-f0-01") == "Tiny Sensors, Inc."
    assert table.vendor("70:b3:d5:f3:00:01") is None
    assert table.vendor("not a mac") is None
    assert table.vendor(0) is None


def test_a_single_csv_file_can_be_loaded(tmp_path: Path) -> None:
    path = tmp_path / "oui.csv"
    path.write_text('Registry,Assignment,Organization Name,Organization Address\nMA-L,4419B6,"Hikvision",x\n')
    assert OuiTable.load(path).entries == {(24, 0x4419B6): "Hikvision"}


def test_missing_ieee_data_is_an_empty_table_with_a_reason(tmp_path: Path) -> None:
    table = OuiTable.load(tmp_path / "nowhere")
    assert table.entries == {}
    assert table.reason == f"no IEEE registry in {tmp_path / 'nowhere'} (install Debian's ieee-data)"
    assert table.vendor("00:22:72:01:02:03") is None


# --- DHCP ---------------------------------------------------------------------------------------


def dhcp_request(options: bytes, *, mac: bytes = bytes.fromhex("4419b6000001"), op: int = 1) -> bytes:
    fixed = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s", op, 1, 6, 0, 0x1234, 0, 0, b"", b"", b"", b"", mac, b"", b""
    )
    return fixed + b"\x63\x82\x53\x63" + options


def test_parse_dhcp_request() -> None:
    options = (
        b"\x35\x01\x03"  # message type: REQUEST
        + b"\x0c\x07ipcam01"  # host name
        + b"\x3c\x0cudhcp 1.30.1"  # vendor class
        + b"\x37\x04\x01\x03\x06\x0f"  # parameter request list
        + b"\x32\x04\xc0\xa8\x01\x17"  # requested address
        + b"\x00\x00\xff"
    )
    assert parse_dhcp(dhcp_request(options)) == DhcpInfo(
        op=1,
        message_type=3,
        mac="44:19:b6:00:00:01",
        hostname="ipcam01",
        vendor_class="udhcp 1.30.1",
        parameter_request_list=(1, 3, 6, 15),
        requested_address="192.168.1.23",
    )


def test_parse_dhcp_not_dhcp_and_broken() -> None:
    assert parse_dhcp(b"") is None
    assert parse_dhcp(dhcp_request(b"\xff")[:-5] + b"XXXX\xff") is None  # no magic cookie
    assert parse_dhcp(dhcp_request(b"\xff", op=7)) is None
    with pytest.raises(PayloadInvalid, match="DHCP option 12 at offset 240 overruns the message"):
        parse_dhcp(dhcp_request(b"\x0c\x09short"))
    with pytest.raises(PayloadInvalid, match="exceeds 65535"):
        parse_dhcp(b"\x00" * 65536)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_dhcp_parser_on_hostile_bytes(data: bytes) -> None:
    for payload in (data, dhcp_request(data)):
        try:
            result = parse_dhcp(payload)
        except PayloadInvalid:
            continue
        assert result is None or isinstance(result, DhcpInfo)


# --- TLS ClientHello ----------------------------------------------------------------------------


def vector(length_bytes: int, data: bytes) -> bytes:
    return len(data).to_bytes(length_bytes, "big") + data


def client_hello(server_name: bytes | None = b"a2.tuyaus.com", alpn: tuple[bytes, ...] = (b"h2",)) -> bytes:
    extensions = b""
    if server_name is not None:
        entry = b"\x00" + vector(2, server_name)
        extensions += b"\x00\x00" + vector(2, vector(2, entry))
    if alpn:
        extensions += b"\x00\x10" + vector(2, vector(2, b"".join(vector(1, p) for p in alpn)))
    body = b"\x03\x03" + bytes(32) + vector(1, b"") + vector(2, b"\x13\x01") + vector(1, b"\x00")
    body += vector(2, extensions)
    handshake = b"\x01" + vector(3, body)
    return b"\x16\x03\x01" + vector(2, handshake)


def test_parse_client_hello() -> None:
    assert parse_client_hello(client_hello()) == ClientHello("a2.tuyaus.com", ("h2",))
    assert parse_client_hello(client_hello(server_name=None, alpn=())) == ClientHello(None, ())


def test_client_hello_not_tls_or_broken() -> None:
    assert parse_client_hello(b"GET / HTTP/1.1\r\n") is None
    assert parse_client_hello(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00") is None  # a ServerHello
    with pytest.raises(PayloadInvalid, match="truncated"):
        parse_client_hello(client_hello()[:-3])
    with pytest.raises(PayloadInvalid, match="is not a host name"):
        parse_client_hello(client_hello(server_name=b"evil\x00name"))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_client_hello_parser_on_hostile_bytes(data: bytes) -> None:
    for payload in (data, b"\x16\x03\x01" + vector(2, b"\x01" + data), client_hello()[: len(data)]):
        try:
            result = parse_client_hello(payload)
        except PayloadInvalid:
            continue
        assert result is None or isinstance(result, ClientHello)


# --- fingerprints -------------------------------------------------------------------------------


def test_fingerprint_of_a_camera(ieee: Path) -> None:
    found = fingerprint(mac="44:19:b6:00:00:01", oui=OuiTable.load(ieee), listening_ports={554, 80})
    assert found.vendor == "Hangzhou Hikvision Digital Technology Co.,Ltd."
    assert found.guessed_type is DeviceKind.CAMERA
    assert found.confidence == pytest.approx(1 - 0.5 * 0.8)
    assert found.reasons == (
        "MAC 44:19:b6:00:00:01 is registered to Hangzhou Hikvision Digital Technology Co.,Ltd.",
        "listens on 554 (RTSP)",
        "Hangzhou Hikvision Digital Technology Co.,Ltd. makes cameras",
    )


def test_fingerprint_of_a_smart_plug_with_a_random_mac() -> None:
    dhcp = DhcpInfo(1, 3, "02:00:00:00:00:01", "HS110", "udhcp 1.30.1", (1, 3), None)
    found = fingerprint(
        mac="02:00:00:00:00:01",
        oui=OuiTable(),
        hints=Hints(dhcp=(dhcp,), dns_names=("devs.tplinkcloud.com",)),
        used_ports={443},
    )
    assert found.vendor == "TP-Link"
    assert found.guessed_type is DeviceKind.SMART_PLUG
    assert found.confidence == pytest.approx(1 - 0.6 * 0.7)
    assert found.reasons == (
        "MAC 02:00:00:00:00:01 is locally administered (random), no vendor registration",
        "talks to devs.tplinkcloud.com (TP-Link's cloud)",
        "DHCP vendor class 'udhcp 1.30.1' (embedded Linux)",
        "looks up devs.tplinkcloud.com (TP-Link)",
        "DHCP host name 'HS110'",
    )


def test_fingerprint_without_clues_is_unknown() -> None:
    found = fingerprint(mac=None, oui=OuiTable())
    assert (found.vendor, found.guessed_type, found.confidence, found.reasons) == (
        None,
        DeviceKind.UNKNOWN,
        0.0,
        (),
    )


def test_mqtt_client_by_port_profile() -> None:
    found = fingerprint(mac=None, oui=OuiTable(), used_ports={8883, 443})
    assert (found.guessed_type, found.reasons) == (
        DeviceKind.MQTT_CLIENT,
        ("connects to port 8883 (MQTT over TLS)",),
    )


# --- discovery ----------------------------------------------------------------------------------

LAN = [ipaddress.ip_network("192.168.1.0/24")]


def conn(start: float, src: str, dst: str, dport: int, state: str = "SF") -> FlowRecord:
    return FlowRecord(
        start, 1.0, src, dst, 40000, dport, "tcp", 100, 100 if state == "SF" else 0, 1, 1, state
    )


def test_discover_unknown_local_addresses_from_flows(ieee: Path) -> None:
    flows = [
        conn(100.0, "192.168.1.10", "192.168.1.20", 554),  # known viewer -> unknown camera
        conn(200.0, "192.168.1.20", "203.0.113.9", 8883),  # camera -> cloud (not local)
        conn(300.0, "192.168.1.30", "192.168.1.10", 22, state="REJ"),  # unknown scanner, refused
        conn(50.0, "192.168.1.30", "224.0.0.251", 5353),  # multicast is never a device
    ]
    discovery = discover_devices(
        known={"192.168.1.10"}, local_networks=LAN, oui=OuiTable.load(ieee), flows=flows
    )
    assert [
        (d.address, d.first_seen, d.last_seen, d.listening_ports, d.used_ports) for d in discovery.devices
    ] == [
        ("192.168.1.20", 100.0, 200.0, (554,), (8883,)),
        ("192.168.1.30", 50.0, 300.0, (), (22, 5353)),
    ]
    camera = discovery.devices[0].fingerprint
    assert camera.guessed_type is DeviceKind.CAMERA
    assert discovery.skipped.total == 0


def test_discover_from_packets_takes_the_mac_and_syn_ack_ports(ieee: Path) -> None:
    camera, viewer = address_key("192.168.1.20"), address_key("192.168.1.10")
    packets = PacketColumns(
        ts=np.array([10.0, 10.1], np.float64),
        src=np.array([viewer, camera], np.uint64),
        dst=np.array([camera, viewer], np.uint64),
        sport=np.array([40000, 8554], np.uint16),
        dport=np.array([8554, 40000], np.uint16),
        proto=np.array([6, 6], np.uint8),
        length=np.array([60, 60], np.uint32),
        tcp_flags=np.array([0x02, 0x12], np.uint8),
        src_mac=np.array([0, 0x4419B6000001], np.uint64),
        addresses={camera: "192.168.1.20", viewer: "192.168.1.10"},
    )
    discovery = discover_devices(
        known={"192.168.1.10"}, local_networks=LAN, oui=OuiTable.load(ieee), packets=[packets]
    )
    (device,) = discovery.devices
    assert (device.address, device.mac, device.listening_ports) == (
        "192.168.1.20",
        "44:19:b6:00:00:01",
        (8554,),
    )
    assert device.fingerprint.vendor == "Hangzhou Hikvision Digital Technology Co.,Ltd."
    assert device.fingerprint.guessed_type is DeviceKind.CAMERA


def test_discovered_devices_are_bounded() -> None:
    flows = [conn(float(i), f"192.168.1.{i}", "203.0.113.9", 443) for i in range(1, 11)]
    discovery = discover_devices(known=set(), local_networks=LAN, oui=OuiTable(), flows=flows, max_devices=4)
    assert len(discovery.devices) == 4
    assert discovery.skipped.counts == {"too many discovered devices (max_devices)": 6}


def test_dhcp_hint_fills_in_the_mac(ieee: Path) -> None:
    info = parse_dhcp(dhcp_request(b"\x35\x01\x01\xff"))
    assert info is not None
    discovery = discover_devices(
        known=set(),
        local_networks=LAN,
        oui=OuiTable.load(ieee),
        flows=[conn(1.0, "192.168.1.5", "8.8.8.8", 53)],
        hints={"192.168.1.5": Hints(dhcp=(info,))},
    )
    assert discovery.devices[0].mac == "44:19:b6:00:00:01"
