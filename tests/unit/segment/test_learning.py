"""Learning a MUD profile from observed traffic; the profile must parse back with ``parse_mud``."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import ipaddress
import itertools
import json
import random
from pathlib import Path

import pytest

from fleetguard.segment.capture import DnsAnswer, Packet, read_capture
from fleetguard.segment.errors import CaptureInvalid, MudInvalid, MudTooLarge
from fleetguard.segment.flows import ObservedTraffic, assemble_flows
from fleetguard.segment.learning import DeviceMatch, LearnedProfile, LearningSummary, learn_profile
from fleetguard.segment.model import ANY_PORT, Direction, Flow, Peer, PeerKind, PortRange

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "net"
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
NOW = dt.datetime(2024, 5, 2, 9, 30, tzinfo=dt.UTC)
DEVICE, DEVICE6, GATEWAY = "192.168.1.50", "2001:db8::50", "192.168.1.1"
DEVICE_MAC, GATEWAY_MAC, OTHER_MAC = "aa:bb:cc:00:00:01", "00:1c:7f:53:d0:28", "aa:bb:cc:00:00:99"
LAN = [ipaddress.ip_network("192.168.1.0/24")]
URL = "https://devices.example.com/thermostat.json"
SYN, ACK = 0x02, 0x10
clock = itertools.count()


def packet(
    src: str,
    dst: str,
    protocol: int,
    sport: int = 0,
    dport: int = 0,
    *,
    flags: int | None = None,
    icmp: int | None = None,
    answers: tuple[DnsAnswer, ...] = (),
    mac: str | None = None,
) -> Packet:
    return Packet(
        timestamp=T0 + dt.timedelta(seconds=next(clock)),
        length=100,
        source_mac=mac or (DEVICE_MAC if src in {DEVICE, DEVICE6} else GATEWAY_MAC),
        ethertype=0x86DD if ":" in src else 0x0800,
        ip_version=6 if ":" in src else 4,
        source=src,
        destination=dst,
        protocol=protocol,
        ip_length=86,
        source_port=sport,
        destination_port=dport,
        tcp_flags=flags,
        icmp_type=icmp,
        icmp_code=None if icmp is None else 0,
        dns_answers=answers,
    )


def handshake(src: str, dst: str, sport: int, dport: int) -> list[Packet]:
    return [
        packet(src, dst, 6, sport, dport, flags=SYN),
        packet(dst, src, 6, dport, sport, flags=SYN | ACK),
        packet(src, dst, 6, sport, dport, flags=ACK),
    ]


def day_of_a_thermostat() -> list[Packet]:
    """DNS, NTP and ping to the gateway; HTTPS and MQTT to named servers; one unnamed server; a LAN
    client of the device's web page; CoAP over IPv6; and another host's traffic, which is not ours."""
    first: tuple[DnsAnswer, ...] = (
        DnsAnswer("api.example.com", "203.0.113.10"),
        DnsAnswer("api.example.com", "2001:db8::10"),
    )
    first += (DnsAnswer("old.example.com", "198.51.100.7"),)
    return [
        packet(DEVICE, GATEWAY, 17, 40000, 53),
        packet(GATEWAY, DEVICE, 17, 53, 40000, answers=first),
        packet(DEVICE, GATEWAY, 17, 40001, 53),
        packet(GATEWAY, DEVICE, 17, 53, 40001, answers=(DnsAnswer("mqtt.example.com", "198.51.100.7"),)),
        packet(GATEWAY, "192.168.1.77", 17, 53, 40002, answers=(DnsAnswer("evil.example", "192.0.2.99"),)),
        *handshake(DEVICE, "203.0.113.10", 50000, 443),
        *handshake(DEVICE, "203.0.113.10", 50001, 443),  # merged with the first
        *handshake(DEVICE, "198.51.100.7", 50002, 8883),
        packet(DEVICE, "192.0.2.99", 6, 50003, 8080, flags=SYN),
        *handshake("192.168.1.20", DEVICE, 60000, 80),
        packet(DEVICE, GATEWAY, 17, 40003, 123),
        packet(GATEWAY, DEVICE, 17, 123, 40003),
        packet(DEVICE, GATEWAY, 1, icmp=8),
        packet(GATEWAY, DEVICE, 1, icmp=0),
        packet(DEVICE6, "2001:db8::10", 17, 40004, 5683),
        *handshake("192.168.1.77", "203.0.113.10", 51000, 443),
    ]


TRAFFIC = assemble_flows(day_of_a_thermostat())


def learn(traffic: ObservedTraffic | list[Flow] = TRAFFIC, /, **overrides: object) -> LearnedProfile:
    arguments: dict[str, object] = {
        "mud_url": URL,
        "local_networks": LAN,
        "gateway": ipaddress.ip_address(GATEWAY),
        "systeminfo": "Example thermostat",
        "now": NOW,
    }
    arguments |= overrides
    device = arguments.pop("device", DeviceMatch(mac=DEVICE_MAC))
    return learn_profile(traffic, device, **arguments)  # type: ignore[arg-type]


def test_learned_profile_summary() -> None:
    assert learn().summary == LearningSummary(
        flows_seen=12,
        flows_used=10,
        device_addresses=(DEVICE, DEVICE6),
        names=("api.example.com", "mqtt.example.com"),
        answers_seen=4,
        aces_from_device=8,
        aces_to_device=8,
    )


def test_learned_profile_parses_and_allows_exactly_what_the_device_did() -> None:
    mud = pytest.importorskip("fleetguard.segment.mud", reason="the MUD parser is not written yet")
    profile = mud.parse_mud(learn().document)
    assert (profile.url, profile.last_update, profile.systeminfo, profile.cache_validity) == (
        URL,
        NOW,
        "Example thermostat",
        48,
    )
    dns, local = Peer(PeerKind.DNS_NAME, "api.example.com"), Peer(PeerKind.LOCAL_NETWORKS)
    mqtt = Peer(PeerKind.DNS_NAME, "mqtt.example.com")
    unnamed = Peer(PeerKind.NETWORK, "192.0.2.99/32")
    dns_controller = Peer(PeerKind.CONTROLLER, "urn:ietf:params:mud:dns")
    ntp = Peer(PeerKind.CONTROLLER, "urn:ietf:params:mud:ntp")
    out, inbound = Direction.FROM_DEVICE, Direction.TO_DEVICE

    def eq(port: int) -> tuple[PortRange, ...]:
        return (PortRange(port, port),)

    expected = [
        ("from-ipv4-0", 1, local, ANY_PORT, ANY_PORT, None, 8),
        ("from-ipv4-1", 6, unnamed, eq(8080), ANY_PORT, out, None),
        ("from-ipv4-2", 6, dns, eq(443), ANY_PORT, out, None),
        ("from-ipv4-3", 6, mqtt, eq(8883), ANY_PORT, out, None),
        ("from-ipv4-4", 6, local, ANY_PORT, eq(80), inbound, None),
        ("from-ipv4-5", 17, dns_controller, eq(53), ANY_PORT, None, None),
        ("from-ipv4-6", 17, ntp, eq(123), ANY_PORT, None, None),
        ("from-ipv6-0", 17, dns, eq(5683), ANY_PORT, None, None),
    ]
    got = [
        (a.name, a.protocol, *a.peers, a.remote_ports, a.device_ports, a.initiated, a.icmp_type)
        for a in profile.by_direction(out)
    ]
    assert got == expected
    back = [
        (a.name, a.protocol, *a.peers, a.remote_ports, a.device_ports, a.initiated, a.icmp_type)
        for a in profile.by_direction(inbound)
    ]
    assert back == [
        (name.replace("from", "to"), protocol, peer, remote, device, initiated, 0 if icmp == 8 else icmp)
        for name, protocol, peer, remote, device, initiated, icmp in expected
    ]


def test_learned_document_is_rfc8520_json() -> None:
    document = json.loads(learn().document)
    mud = document["ietf-mud:mud"]
    assert mud["from-device-policy"] == {
        "access-lists": {"access-list": [{"name": "from-ipv4"}, {"name": "from-ipv6"}]}
    }
    assert mud["last-update"] == "2024-05-02T09:30:00+00:00"
    acls = {acl["name"]: acl for acl in document["ietf-access-control-list:acls"]["acl"]}
    assert acls["to-ipv4"]["type"] == "ipv4-acl-type"
    assert acls["to-ipv4"]["aces"]["ace"][2] == {
        "name": "to-ipv4-2",
        "matches": {
            "ipv4": {"protocol": 6, "ietf-acldns:src-dnsname": "api.example.com"},
            "tcp": {
                "source-port": {"operator": "eq", "port": 443},
                "ietf-mud:direction-initiated": "from-device",
            },
        },
        "actions": {"forwarding": "accept"},
    }
    assert acls["from-ipv4"]["aces"]["ace"][5]["matches"]["ietf-mud:mud"] == {
        "controller": "urn:ietf:params:mud:dns"
    }


def test_learning_is_deterministic_whatever_the_flow_order() -> None:
    shuffled = list(TRAFFIC.flows)
    random.Random(7).shuffle(shuffled)  # noqa: S311 - a reproducible order, not a secret
    again = dataclasses.replace(TRAFFIC, flows=tuple(shuffled))
    assert learn(again).document == learn().document
    assert learn().document.endswith(b"}\n")


def test_the_last_dns_answer_for_an_address_wins() -> None:
    names = learn().summary.names
    assert "mqtt.example.com" in names
    assert "old.example.com" not in names


def test_a_device_matched_by_address_alone_uses_that_address_only() -> None:
    summary = learn(device=DeviceMatch(address=DEVICE)).summary
    assert (summary.device_addresses, summary.flows_used, summary.aces_from_device) == ((DEVICE,), 9, 7)


def test_flow_records_without_dns_give_addresses() -> None:
    flows = [Flow(T0, DEVICE, "203.0.113.10", 6, 50000, 443, established=True)]
    profile = learn(flows, device=DeviceMatch(address=DEVICE))
    acl = json.loads(profile.document)["ietf-access-control-list:acls"]["acl"][0]
    assert acl["aces"]["ace"][0]["matches"]["ipv4"] == {
        "destination-ipv4-network": "203.0.113.10/32",
        "protocol": 6,
    }


def test_too_many_aces_tells_the_user_to_shorten_the_learning_period() -> None:
    with pytest.raises(MudTooLarge, match=r"16 ACEs, over the limit of 15 \(shorten the learning period"):
        learn(max_aces=15)


def test_a_device_that_was_not_seen_is_an_error_not_an_empty_profile() -> None:
    with pytest.raises(CaptureInvalid, match=f"device with MAC {OTHER_MAC} was not seen"):
        learn(device=DeviceMatch(mac=OTHER_MAC))
    with pytest.raises(CaptureInvalid, match=r"the device \(10.9.9.9\) has no flows in the traffic"):
        learn(device=DeviceMatch(address="10.9.9.9"))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"mud_url": "http://devices.example.com/x.json"}, "is not an https URL"),
        ({"systeminfo": "x" * 61}, "systeminfo must be 1..60"),
        ({"systeminfo": "bad\nline"}, "systeminfo must be 1..60 printable"),
        ({"cache_validity": 169}, "cache-validity is 1..168"),
    ],
)
def test_bad_header_fields_are_refused(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(MudInvalid, match=match):
        learn(**overrides)


def test_device_match_is_checked_and_normalised() -> None:
    assert DeviceMatch(address="2001:DB8::0:50", mac="AA-BB-CC-00-00-01") == DeviceMatch(
        "2001:db8::50", DEVICE_MAC
    )
    with pytest.raises(ValueError, match="an IP address, a MAC address or both"):
        DeviceMatch()
    with pytest.raises(ValueError, match="is not a MAC address"):
        DeviceMatch(mac="aa:bb")
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        learn(now=dt.datetime(2024, 5, 2))  # noqa: DTZ001 - the naive time under test


BENIGN = DATA / "benign-devices" / "blink-cam-01.pcap"


@pytest.mark.skipif(not BENIGN.is_file(), reason=f"no shared benign capture at {BENIGN}")
def test_learning_the_most_active_device_of_a_real_capture_finds_its_dns_names() -> None:
    with BENIGN.open("rb") as stream:
        packets = list(itertools.islice(read_capture(stream), 200_000))
    senders = collections.Counter(p.source_mac for p in packets if isinstance(p, Packet) and p.source)
    traffic = assemble_flows(packets)
    busiest = next(mac for mac, _ in senders.most_common() if mac != GATEWAY_MAC)
    learned = learn_profile(
        traffic,
        DeviceMatch(mac=busiest),
        mud_url="https://immedia-semi.com/blink-camera.json",
        local_networks=[ipaddress.ip_network("192.168.0.0/16")],
        gateway=ipaddress.ip_address("192.168.1.1"),
        systeminfo="Blink camera",
        now=NOW,
    )
    assert learned.summary.device_addresses == ("192.168.1.129",)
    assert learned.summary.names == ("vs-cam.u011.immedia-semi.com",)
    mud = pytest.importorskip("fleetguard.segment.mud", reason="the MUD parser is not written yet")
    profile = mud.parse_mud(learned.document)
    assert Peer(PeerKind.DNS_NAME, "vs-cam.u011.immedia-semi.com") in {
        p for a in profile.aces for p in a.peers
    }
