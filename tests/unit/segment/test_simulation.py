"""simulate judges recorded flows against the compiled elements, with exact verdicts and reasons."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest

from fleetguard.segment.compiler import CompiledFleet, DeviceBinding, FleetContext, compile_fleet
from fleetguard.segment.model import Ace, Direction, Family, Flow, MudProfile, Peer, PeerKind, PortRange
from fleetguard.segment.simulation import DeviceReport, FlowVerdict, Verdict, simulate

OUT, IN = Direction.FROM_DEVICE, Direction.TO_DEVICE
CAMERA = "https://things.example.com/camera/v1"
HUB = "https://hub.example.net/hub"
LAMP = "https://lamps.example.org/lamp"  # no profile is stored for it
T0 = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
CLOUD = "192.0.2.10"


def profile(url: str, *aces: Ace) -> MudProfile:
    return MudProfile(url, "0" * 64, 1, T0, 48, True, "", "", "", "", "", "", None, aces)


def ports(low: int, high: int | None = None) -> tuple[PortRange, ...]:
    return (PortRange(low, low if high is None else high),)


CAMERA_PROFILE = profile(
    CAMERA,
    Ace(
        "cloud", "out", OUT, Family.IPV4, 6, (Peer(PeerKind.NETWORK, f"{CLOUD}/32"),), remote_ports=ports(443)
    ),
    Ace(
        "ping",
        "out",
        OUT,
        Family.IPV4,
        1,
        (Peer(PeerKind.NETWORK, "192.0.2.0/24"),),
        icmp_type=8,
        icmp_code=0,
    ),
    Ace("sync", "out", OUT, Family.IPV4, 6, (Peer(PeerKind.SAME_MANUFACTURER),), remote_ports=ports(8080)),
    Ace("sync-in", "in", IN, Family.IPV4, 6, (Peer(PeerKind.SAME_MANUFACTURER),), device_ports=ports(8080)),
    Ace(
        "v6",
        "out",
        OUT,
        Family.IPV6,
        17,
        (Peer(PeerKind.NETWORK, "2001:db8:c::/48"),),
        remote_ports=ports(123),
    ),
)
HUB_PROFILE = profile(
    HUB,
    # The hub may open anything to the cameras' subnet; the cameras' to-device policy still decides.
    Ace("cams", "out", OUT, Family.IPV4, 6, (Peer(PeerKind.NETWORK, "10.1.0.0/24"),)),
    Ace("api", "in", IN, Family.IPV4, 6, (Peer(PeerKind.NETWORK, "10.1.0.0/24"),), device_ports=ports(8443)),
)


@pytest.fixture(scope="module")
def fleet() -> CompiledFleet:
    devices = [
        DeviceBinding(
            "cam-1", CAMERA, ipaddress.IPv4Address("10.1.0.2"), ipaddress.IPv6Address("2001:db8:1::2")
        ),
        DeviceBinding("cam-2", CAMERA, ipaddress.IPv4Address("10.1.0.3")),
        DeviceBinding("hub", HUB, ipaddress.IPv4Address("10.1.0.50")),
        DeviceBinding("lamp", LAMP, ipaddress.IPv4Address("10.1.0.9")),
    ]
    return compile_fleet({CAMERA: CAMERA_PROFILE, HUB: HUB_PROFILE}, devices, FleetContext(), {})


def tcp(source: str, destination: str, dport: int, sport: int = 40000) -> Flow:
    return Flow(T0, source, destination, 6, source_port=sport, destination_port=dport)


def icmp(source: str, destination: str, icmp_type: int, icmp_code: int, protocol: int = 1) -> Flow:
    return Flow(T0, source, destination, protocol, icmp_type=icmp_type, icmp_code=icmp_code)


def verdict_of(fleet: CompiledFleet, flow: Flow) -> FlowVerdict | None:
    """The verdict of one flow (None when it counted as allowed)."""
    result = simulate(fleet, [flow])
    blocked = [v for report in result.devices.values() for v in report.blocked]
    return blocked[0] if blocked else None


@pytest.mark.parametrize(
    ("flow", "reason"),
    [
        pytest.param(tcp("10.1.0.2", CLOUD, 443), None, id="camera to its cloud"),
        pytest.param(tcp("10.1.0.2", CLOUD, 80), "not in cam-1's from-device policy", id="wrong port"),
        pytest.param(
            tcp("10.1.0.2", "192.0.2.11", 443), "not in cam-1's from-device policy", id="wrong host"
        ),
        pytest.param(
            Flow(T0, "10.1.0.2", CLOUD, 17, source_port=40000, destination_port=443),
            "not in cam-1's from-device policy",
            id="wrong protocol",
        ),
        pytest.param(
            tcp("203.0.113.5", "10.1.0.2", 8080), "not in cam-1's to-device policy", id="outsider to camera"
        ),
        pytest.param(icmp("10.1.0.2", "192.0.2.99", 8, 0), None, id="echo request"),
        pytest.param(
            icmp("10.1.0.2", "192.0.2.99", 13, 0), "not in cam-1's from-device policy", id="timestamp"
        ),
        pytest.param(
            icmp("10.1.0.2", "192.0.2.99", 8, 1), "not in cam-1's from-device policy", id="other code"
        ),
        pytest.param(
            icmp("10.1.0.2", "198.51.100.1", 8, 0), "not in cam-1's from-device policy", id="ping elsewhere"
        ),
        pytest.param(
            Flow(T0, "2001:db8:1::2", "2001:db8:c::7", 17, source_port=123, destination_port=123),
            None,
            id="ntp v6",
        ),
        pytest.param(
            Flow(T0, "2001:db8:1::2", "2001:db8:d::7", 17, source_port=123, destination_port=123),
            "not in cam-1's from-device policy",
            id="v6 elsewhere",
        ),
        pytest.param(tcp("10.1.0.9", CLOUD, 443), "lamp has no MUD profile", id="device without profile"),
        pytest.param(
            tcp("203.0.113.5", "10.1.0.9", 22), "lamp has no MUD profile", id="to device without profile"
        ),
    ],
)
def test_flows_are_judged_with_exact_reasons(fleet: CompiledFleet, flow: Flow, reason: str | None) -> None:
    expected = None if reason is None else FlowVerdict(flow, Verdict.BLOCKED, reason)

    assert verdict_of(fleet, flow) == expected


def test_a_flow_between_managed_devices_needs_both_policies(fleet: CompiledFleet) -> None:
    both = tcp("10.1.0.3", "10.1.0.2", 8080)
    receiver_refuses = tcp("10.1.0.50", "10.1.0.2", 9000)
    sender_refuses = tcp("10.1.0.2", "10.1.0.50", 8443)

    result = simulate(fleet, [both, receiver_refuses, sender_refuses])

    refused_by_camera = FlowVerdict(receiver_refuses, Verdict.BLOCKED, "not in cam-1's to-device policy")
    refused_by_sender = FlowVerdict(sender_refuses, Verdict.BLOCKED, "not in cam-1's from-device policy")
    assert result.devices == {
        "cam-1": DeviceReport("cam-1", allowed=1, blocked=[refused_by_camera, refused_by_sender]),
        "cam-2": DeviceReport("cam-2", allowed=1),
        "hub": DeviceReport("hub", blocked=[refused_by_camera, refused_by_sender]),
        "lamp": DeviceReport("lamp"),
    }
    assert (result.flows, result.unmanaged, result.blocked) == (3, 0, 4)


def test_the_senders_policy_is_checked_first(fleet: CompiledFleet) -> None:
    # cam-1 may not open port 22 on the hub, and the hub's to-device policy does not allow it either.
    flow = tcp("10.1.0.2", "10.1.0.50", 22)

    assert verdict_of(fleet, flow) == FlowVerdict(flow, Verdict.BLOCKED, "not in cam-1's from-device policy")


def test_flows_between_unmanaged_hosts_are_counted_and_not_judged(fleet: CompiledFleet) -> None:
    flows = [
        tcp("198.51.100.1", "203.0.113.1", 443),
        tcp("10.1.0.200", CLOUD, 443),
        tcp("10.1.0.2", CLOUD, 443),
    ]

    result = simulate(fleet, flows)

    assert (result.flows, result.unmanaged, result.blocked) == (3, 2, 0)
    assert result.devices["cam-1"] == DeviceReport("cam-1", allowed=1)


def test_a_quarantined_devices_flows_are_all_quarantined(fleet: CompiledFleet) -> None:
    allowed_otherwise = tcp("10.1.0.3", CLOUD, 443)
    to_it = tcp("10.1.0.2", "10.1.0.3", 8080)
    unrelated = tcp("10.1.0.2", CLOUD, 443)

    result = simulate(
        fleet, [allowed_otherwise, to_it, unrelated], quarantined=[ipaddress.IPv4Address("10.1.0.3")]
    )

    assert result.devices["cam-2"] == DeviceReport(
        "cam-2",
        blocked=[
            FlowVerdict(allowed_otherwise, Verdict.QUARANTINED, "quarantined"),
            FlowVerdict(to_it, Verdict.QUARANTINED, "quarantined"),
        ],
    )
    assert result.devices["cam-1"] == DeviceReport(
        "cam-1", allowed=1, blocked=[FlowVerdict(to_it, Verdict.QUARANTINED, "quarantined")]
    )


def test_an_empty_recording_gives_empty_reports(fleet: CompiledFleet) -> None:
    result = simulate(fleet, [])

    assert result.devices == {d: DeviceReport(d) for d in ("cam-1", "cam-2", "hub", "lamp")}
    assert (result.flows, result.unmanaged, result.blocked) == (0, 0, 0)
