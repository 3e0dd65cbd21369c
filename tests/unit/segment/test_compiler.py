"""compile_fleet turns MUD profiles into exact set elements; abstract peers resolve, never widen to "any"."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.segment.compiler import (
    ANY_PROTOCOL,
    ClassRules,
    DeviceBinding,
    FleetContext,
    IcmpElement,
    IpAddress,
    PortElement,
    compile_fleet,
    profile_names,
)
from fleetguard.segment.model import Ace, Direction, Family, MudProfile, Peer, PeerKind, PortRange

OUT, IN = Direction.FROM_DEVICE, Direction.TO_DEVICE
V4, V6 = Family.IPV4, Family.IPV6
URL = "https://things.example.com/thermostat/v1"
SIBLING_URL = "https://things.example.com/camera/v2"
OTHER_URL = "https://other.example.net/lamp"
ANY = PortRange(0, 65535)
TCP, UDP = (6, 6), (17, 17)
ALL_ICMP = (0, 255)


def profile(url: str, *aces: Ace) -> MudProfile:
    return MudProfile(
        url=url,
        digest="0" * 64,
        mud_version=1,
        last_update=dt.datetime(2024, 3, 1, 10, 0, tzinfo=dt.UTC),
        cache_validity=48,
        is_supported=True,
        systeminfo="",
        mfg_name="",
        model_name="",
        firmware_rev="",
        software_rev="",
        documentation="",
        signature_url=None,
        aces=aces,
    )


def out_ace(name: str, *peers: Peer, family: Family = V4, **fields: object) -> Ace:
    return Ace(name, "out", OUT, family, peers=peers, **fields)  # type: ignore[arg-type]


def in_ace(name: str, *peers: Peer, family: Family = V4, **fields: object) -> Ace:
    return Ace(name, "in", IN, family, peers=peers, **fields)  # type: ignore[arg-type]


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def addr(text: str) -> IpAddress:
    return ipaddress.ip_address(text)


def device(
    device_id: str, url: str | None, ipv4: str | None = None, ipv6: str | None = None
) -> DeviceBinding:
    return DeviceBinding(
        device_id,
        url,
        None if ipv4 is None else ipaddress.IPv4Address(ipv4),
        None if ipv6 is None else ipaddress.IPv6Address(ipv6),
    )


def rules_of(
    *aces: Ace,
    devices: Sequence[DeviceBinding] = (),
    context: FleetContext | None = None,
    dns: Mapping[str, tuple[IpAddress, ...]] | None = None,
    extra: Iterable[MudProfile] = (),
) -> ClassRules:
    """The rules of a one-profile fleet (``URL``, class 1 unless ``extra`` sorts before it)."""
    profiles = {URL: profile(URL, *aces)} | {p.url: p for p in extra}
    fleet = compile_fleet(
        profiles, devices or [device("me", URL, "10.1.0.2")], context or FleetContext(), dns or {}
    )
    return fleet.rules[fleet.classes[URL]]


def tcp(klass: int, remote: str, remote_ports: PortRange = ANY, device_ports: PortRange = ANY) -> PortElement:
    return PortElement(klass, TCP, net(remote), remote_ports, device_ports)


# --- peers ------------------------------------------------------------------------------------------


def test_a_dns_name_with_two_addresses_gives_two_elements() -> None:
    cloud = out_ace(
        "cloud", Peer(PeerKind.DNS_NAME, "cloud.example.com"), protocol=6, remote_ports=(PortRange(443, 443),)
    )
    dns = {"cloud.example.com": (addr("198.51.100.7"), addr("192.0.2.10"), addr("2001:db8::10"))}

    rules = rules_of(cloud, dns=dns)

    assert rules.ports == {
        (V4, OUT): frozenset(
            {
                tcp(1, "192.0.2.10/32", PortRange(443, 443)),
                tcp(1, "198.51.100.7/32", PortRange(443, 443)),
            }
        )
    }
    assert rules.icmp == {}
    assert rules.unresolved == ()


def test_the_dns_controller_comes_from_the_context() -> None:
    dns = out_ace("dns", Peer(PeerKind.CONTROLLER, "urn:ietf:params:mud:dns"), protocol=17,
                  remote_ports=(PortRange(53, 53),))  # fmt: skip
    context = FleetContext(controllers={"urn:ietf:params:mud:dns": (addr("10.0.0.53"), addr("10.0.0.52"))})

    rules = rules_of(dns, context=context)

    # Two consecutive addresses are one /31.
    assert rules.ports == {
        (V4, OUT): frozenset({PortElement(1, UDP, net("10.0.0.52/31"), PortRange(53, 53), ANY)})
    }
    assert rules.unresolved == ()


def test_my_controller_is_the_controller_configured_for_this_mud_url() -> None:
    mine = out_ace("mc", Peer(PeerKind.MY_CONTROLLER), protocol=6, remote_ports=(PortRange(8883, 8883),))
    context = FleetContext(my_controllers={URL: (addr("10.0.0.7"),), OTHER_URL: (addr("10.0.0.99"),)})

    rules = rules_of(mine, context=context)

    assert rules.ports == {(V4, OUT): frozenset({tcp(1, "10.0.0.7/32", PortRange(8883, 8883))})}


def test_same_manufacturer_is_every_fleet_device_of_the_mud_url_authority() -> None:
    peers = in_ace(
        "peers", Peer(PeerKind.SAME_MANUFACTURER), protocol=6, device_ports=(PortRange(8080, 8080),)
    )
    devices = [
        device("t-1", URL, "10.1.0.1"),
        device("t-2", URL, "10.1.0.2"),
        device("c-1", SIBLING_URL, "10.1.0.3"),
        device("c-2", SIBLING_URL, "10.1.0.4"),
        device("t-3", URL, "10.1.0.9"),
        device("lamp", OTHER_URL, "10.1.0.5"),
        device("bare", None, "10.1.0.6"),
    ]

    rules = rules_of(peers, devices=devices)

    # 10.1.0.1-10.1.0.4 are consecutive: the fewest prefixes that cover exactly them; .9 stays a /32.
    expected = {tcp(1, n, ANY, PortRange(8080, 8080)) for n in ("10.1.0.1/32", "10.1.0.2/31", "10.1.0.4/32",
                                                                 "10.1.0.9/32")}  # fmt: skip
    assert rules.ports == {(V4, IN): frozenset(expected)}


def test_manufacturer_and_model_resolve_to_the_fleet_devices() -> None:
    by_maker = out_ace("m", Peer(PeerKind.MANUFACTURER, "other.example.net"), protocol=6)
    by_model = out_ace("mo", Peer(PeerKind.MODEL, SIBLING_URL), protocol=17)
    devices = [
        device("me", URL, "10.1.0.2"),
        device("lamp-1", OTHER_URL, "10.1.0.20"),
        device("lamp-2", "https://other.example.net/lamp/v2", "10.1.0.40"),
        device("cam", SIBLING_URL, "10.1.0.30", "2001:db8::30"),
    ]

    rules = rules_of(by_maker, by_model, devices=devices)

    assert rules.ports == {
        (V4, OUT): frozenset(
            {
                tcp(1, "10.1.0.20/32"),
                tcp(1, "10.1.0.40/32"),
                PortElement(1, UDP, net("10.1.0.30/32"), ANY, ANY),
            }
        )
    }


def test_local_networks_intersect_with_a_destination_network() -> None:
    both = out_ace(
        "lan", Peer(PeerKind.LOCAL_NETWORKS), Peer(PeerKind.NETWORK, "10.0.0.0/8"), protocol=6,
        remote_ports=(PortRange(22, 22),),
    )  # fmt: skip
    narrower = out_ace(
        "subnet", Peer(PeerKind.LOCAL_NETWORKS), Peer(PeerKind.NETWORK, "192.168.1.128/25"), protocol=17
    )
    context = FleetContext(local_networks=(net("10.20.0.0/16"), net("192.168.1.0/24"), net("fd00::/8")))

    rules = rules_of(both, narrower, context=context)

    assert rules.ports == {
        (V4, OUT): frozenset(
            {
                tcp(1, "10.20.0.0/16", PortRange(22, 22)),
                PortElement(1, UDP, net("192.168.1.128/25"), ANY, ANY),
            }
        )
    }
    assert rules.unresolved == ()


@pytest.mark.parametrize(
    ("ace", "why"),
    [
        pytest.param(
            out_ace("x", Peer(PeerKind.LOCAL_NETWORKS), Peer(PeerKind.NETWORK, "172.16.0.0/12"), protocol=6),
            "out/x: its address constraints do not overlap",
            id="empty intersection",
        ),
        pytest.param(
            out_ace("x", Peer(PeerKind.DNS_NAME, "gone.example.com"), protocol=6),
            "out/x: dns-name gone.example.com has no addresses of this family",
            id="name without addresses",
        ),
        pytest.param(
            out_ace("x", Peer(PeerKind.DNS_NAME, "v4only.example.com"), protocol=6, family=V6),
            "out/x: dns-name v4only.example.com has no addresses of this family",
            id="name without addresses of the ACE's family",
        ),
        pytest.param(
            out_ace("x", Peer(PeerKind.CONTROLLER, "urn:ietf:params:mud:ntp"), protocol=17),
            "out/x: controller urn:ietf:params:mud:ntp has no addresses of this family",
            id="controller nobody configured",
        ),
        pytest.param(
            in_ace("x", Peer(PeerKind.MY_CONTROLLER), protocol=6),
            "in/x: my-controller has no addresses of this family",
            id="my-controller nobody configured",
        ),
        pytest.param(
            in_ace("x", Peer(PeerKind.MANUFACTURER, "nobody.example"), protocol=6),
            "in/x: manufacturer nobody.example has no addresses of this family",
            id="manufacturer with no devices",
        ),
        pytest.param(
            out_ace("x", Peer(PeerKind.SAME_MANUFACTURER)),
            "out/x: same-manufacturer has no addresses of this family",
            id="no IPv4 device of the manufacturer",
        ),
    ],
)
def test_what_resolves_to_nothing_allows_nothing_and_is_reported(ace: Ace, why: str) -> None:
    context = FleetContext(
        local_networks=(net("10.0.0.0/8"),), controllers={"urn:ietf:params:mud:dns": (addr("10.0.0.53"),)}
    )
    dns = {"v4only.example.com": (addr("192.0.2.1"),)}
    devices = [device("me", URL, None, "2001:db8::2")]
    fleet = compile_fleet({URL: profile(URL, ace)}, devices, context, dns)

    assert fleet.rules[1].ports == {}
    assert fleet.rules[1].icmp == {}
    assert fleet.rules[1].unresolved == (why,)
    assert fleet.unresolved == {URL: (why,)}


def test_unresolved_entries_never_become_any() -> None:
    aces = (
        out_ace("a", Peer(PeerKind.DNS_NAME, "gone.example.com")),
        out_ace("b", Peer(PeerKind.CONTROLLER, "urn:ietf:params:mud:dns")),
        out_ace("c", Peer(PeerKind.NETWORK, "192.0.2.0/24"), protocol=6),
    )

    rules = rules_of(*aces)

    assert rules.ports == {(V4, OUT): frozenset({tcp(1, "192.0.2.0/24")})}
    assert rules.unresolved == (
        "out/a: dns-name gone.example.com has no addresses of this family",
        "out/b: controller urn:ietf:params:mud:dns has no addresses of this family",
    )


# --- directions and protocols ---------------------------------------------------------------------


def test_replies_only_tcp_aces_give_no_element() -> None:
    cloud = Peer(PeerKind.NETWORK, "192.0.2.10/32")
    aces = (
        # The device opens the connection: its from-device ACE allows it, the to-device one is replies.
        out_ace("opens", cloud, protocol=6, remote_ports=(PortRange(443, 443),), initiated=OUT),
        in_ace("replies", cloud, protocol=6, device_ports=(PortRange(443, 443),), initiated=OUT),
        # Others open connections to the device's port 80: the from-device ACE is the replies.
        in_ace("serves", cloud, protocol=6, device_ports=(PortRange(80, 80),), initiated=IN),
        out_ace("answers", cloud, protocol=6, device_ports=(PortRange(80, 80),), initiated=IN),
    )

    rules = rules_of(*aces)

    assert rules.ports == {
        (V4, OUT): frozenset({tcp(1, "192.0.2.10/32", PortRange(443, 443))}),
        (V4, IN): frozenset({tcp(1, "192.0.2.10/32", ANY, PortRange(80, 80))}),
    }
    assert rules.unresolved == ()


def test_an_ace_for_any_protocol_gives_port_and_icmp_elements() -> None:
    aces = (
        out_ace("v4", Peer(PeerKind.NETWORK, "192.0.2.0/24")),
        in_ace("v6", Peer(PeerKind.NETWORK, "2001:db8::/32"), family=V6),
    )

    rules = rules_of(*aces)

    assert rules.ports == {
        (V4, OUT): frozenset({PortElement(1, ANY_PROTOCOL, net("192.0.2.0/24"), ANY, ANY)}),
        (V6, IN): frozenset({PortElement(1, ANY_PROTOCOL, net("2001:db8::/32"), ANY, ANY)}),
    }
    assert rules.icmp == {
        (V4, OUT): frozenset({IcmpElement(1, net("192.0.2.0/24"), ALL_ICMP, ALL_ICMP)}),
        (V6, IN): frozenset({IcmpElement(1, net("2001:db8::/32"), ALL_ICMP, ALL_ICMP)}),
    }


def test_an_icmp_ace_gives_only_icmp_elements_with_its_type_and_code() -> None:
    aces = (
        out_ace("ping", Peer(PeerKind.NETWORK, "192.0.2.0/24"), protocol=1, icmp_type=8, icmp_code=0),
        out_ace("unreach", Peer(PeerKind.NETWORK, "192.0.2.1/32"), protocol=1, icmp_type=3),
        in_ace("nd", Peer(PeerKind.NETWORK, "fe80::/10"), family=V6, protocol=58, icmp_type=135, icmp_code=0),
    )

    rules = rules_of(*aces)

    assert rules.ports == {}
    assert rules.icmp == {
        (V4, OUT): frozenset(
            {
                IcmpElement(1, net("192.0.2.0/24"), (8, 8), (0, 0)),
                IcmpElement(1, net("192.0.2.1/32"), (3, 3), ALL_ICMP),
            }
        ),
        (V6, IN): frozenset({IcmpElement(1, net("fe80::/10"), (135, 135), (0, 0))}),
    }


def test_port_unions_give_one_element_per_pair_of_ranges() -> None:
    ace = out_ace(
        "neq", Peer(PeerKind.NETWORK, "192.0.2.0/24"), protocol=17,
        remote_ports=(PortRange(0, 52), PortRange(54, 65535)),
        device_ports=(PortRange(1024, 2047), PortRange(4000, 4000)),
    )  # fmt: skip

    rules = rules_of(ace)

    assert rules.ports == {
        (V4, OUT): frozenset(
            PortElement(1, UDP, net("192.0.2.0/24"), remote, local)
            for remote in (PortRange(0, 52), PortRange(54, 65535))
            for local in (PortRange(1024, 2047), PortRange(4000, 4000))
        )
    }


# --- subsumption ------------------------------------------------------------------------------------


def test_a_host_inside_a_network_with_the_same_ports_is_dropped() -> None:
    https = (PortRange(443, 443),)
    aces = (
        out_ace("host", Peer(PeerKind.NETWORK, "192.0.2.10/32"), protocol=6, remote_ports=https),
        out_ace("net", Peer(PeerKind.NETWORK, "192.0.2.0/24"), protocol=6, remote_ports=https),
    )

    assert rules_of(*aces).ports == {(V4, OUT): frozenset({tcp(1, "192.0.2.0/24", PortRange(443, 443))})}


def test_a_narrower_port_range_inside_a_wider_one_is_dropped() -> None:
    aces = (
        out_ace(
            "one", Peer(PeerKind.NETWORK, "192.0.2.0/24"), protocol=6, remote_ports=(PortRange(8080, 8080),)
        ),
        out_ace(
            "range", Peer(PeerKind.NETWORK, "192.0.2.0/24"), protocol=6, remote_ports=(PortRange(8000, 8999),)
        ),
        out_ace(
            "host", Peer(PeerKind.NETWORK, "192.0.2.7/32"), protocol=6, remote_ports=(PortRange(8500, 8600),)
        ),
    )

    assert rules_of(*aces).ports == {(V4, OUT): frozenset({tcp(1, "192.0.2.0/24", PortRange(8000, 8999))})}


def test_a_protocol_any_element_subsumes_a_tcp_one_and_icmp_types() -> None:
    aces = (
        out_ace(
            "tcp", Peer(PeerKind.NETWORK, "192.0.2.7/32"), protocol=6, remote_ports=(PortRange(443, 443),)
        ),
        out_ace("ping", Peer(PeerKind.NETWORK, "192.0.2.8/32"), protocol=1, icmp_type=8, icmp_code=0),
        out_ace("all", Peer(PeerKind.NETWORK, "192.0.2.0/24")),
    )

    rules = rules_of(*aces)

    assert rules.ports == {
        (V4, OUT): frozenset({PortElement(1, ANY_PROTOCOL, net("192.0.2.0/24"), ANY, ANY)})
    }
    assert rules.icmp == {(V4, OUT): frozenset({IcmpElement(1, net("192.0.2.0/24"), ALL_ICMP, ALL_ICMP)})}


def test_partially_overlapping_elements_are_cut_into_disjoint_ones_with_the_same_union() -> None:
    aces = (
        out_ace(
            "net", Peer(PeerKind.NETWORK, "192.0.2.0/24"), protocol=6, remote_ports=(PortRange(443, 443),)
        ),
        out_ace("host", Peer(PeerKind.NETWORK, "192.0.2.7/32"), protocol=6),
    )

    # Neither covers the other (the network is wider, the host's ports are), and nftables refuses
    # overlapping elements: the network keeps 443, the host every other port.
    assert rules_of(*aces).ports == {
        (V4, OUT): frozenset(
            {
                tcp(1, "192.0.2.0/24", PortRange(443, 443)),
                tcp(1, "192.0.2.7/32", PortRange(0, 442)),
                tcp(1, "192.0.2.7/32", PortRange(444, 65535)),
            }
        )
    }


def _corner_inside(inner: PortElement, outer: PortElement) -> bool:
    def point_in(protocol: int, address: int, rport: int, dport: int) -> bool:
        return (
            outer.protocol[0] <= protocol <= outer.protocol[1]
            and int(outer.remote.network_address) <= address <= int(outer.remote.broadcast_address)
            and rport in outer.remote_ports
            and dport in outer.device_ports
        )

    first = (
        inner.protocol[0],
        int(inner.remote.network_address),
        inner.remote_ports.low,
        inner.device_ports.low,
    )
    last = (
        inner.protocol[1],
        int(inner.remote.broadcast_address),
        inner.remote_ports.high,
        inner.device_ports.high,
    )
    return point_in(*first) or point_in(*last)


def test_no_element_starts_or_ends_inside_another_because_nftables_refuses_it() -> None:
    # The kernel's concatenated-range set (nft_set_pipapo) refuses an element whose first or last key
    # lies inside an element already in the set ("File exists"), not only one wholly inside it: the
    # rendered out4 set below makes ``nft -c -f`` fail, so a fleet with this valid profile cannot be
    # applied at all. (Checked against nftables 1.0.6 on Linux 6.18.)
    aces = (
        out_ace("low", Peer(PeerKind.LOCAL_NETWORKS), protocol=6, remote_ports=(PortRange(0, 1023),)),
        out_ace(
            "peers", Peer(PeerKind.NETWORK, "10.0.0.0/25"), protocol=6, remote_ports=(PortRange(443, 8443),)
        ),
    )
    context = FleetContext(local_networks=(net("10.0.0.0/24"),))

    elements = sorted(rules_of(*aces, context=context).ports[(V4, OUT)])

    clashes = [(a, b) for a in elements for b in elements if a != b and _corner_inside(a, b)]
    assert clashes == []


# --- the fleet --------------------------------------------------------------------------------------


def test_classes_members_and_unprofiled_devices() -> None:
    thermostat = profile(URL, out_ace("a", Peer(PeerKind.NETWORK, "192.0.2.0/24"), protocol=6))
    lamp = profile(OTHER_URL, out_ace("b", Peer(PeerKind.NETWORK, "198.51.100.0/24"), protocol=17))
    devices = [
        device("t-1", URL, "10.1.0.2", "2001:db8:1::2"),
        device("lamp-1", OTHER_URL, "10.1.0.3"),
        device("nobody", None, "10.1.0.4"),
        device("unknown", "https://unknown.example/x", None, "2001:db8:1::5"),
    ]

    fleet = compile_fleet({URL: thermostat, OTHER_URL: lamp}, devices, FleetContext(), {})

    # Classes are numbered by sorted URL from 1; 0 is "no profile".
    assert fleet.classes == {OTHER_URL: 1, URL: 2}
    assert fleet.members4 == {addr("10.1.0.2"): 2, addr("10.1.0.3"): 1, addr("10.1.0.4"): 0}
    assert fleet.members6 == {addr("2001:db8:1::2"): 2, addr("2001:db8:1::5"): 0}
    assert fleet.unprofiled == ("nobody", "unknown")
    assert [fleet.class_of(d) for d in ("t-1", "lamp-1", "nobody", "unknown")] == [2, 1, 0, 0]
    assert sorted(fleet.rules) == [1, 2]
    assert fleet.rules[2].ports == {(V4, OUT): frozenset({tcp(2, "192.0.2.0/24")})}
    assert fleet.unresolved == {}


def test_ipv6_devices_resolve_to_host_prefixes() -> None:
    peers = in_ace(
        "peers",
        Peer(PeerKind.SAME_MANUFACTURER),
        family=V6,
        protocol=17,
        device_ports=(PortRange(5683, 5683),),
    )
    devices = [
        device("a", URL, "10.1.0.2", "2001:db8::2"),
        device("b", URL, None, "2001:db8::3"),
        device("c", URL, None, "2001:db8::10"),
    ]

    rules = rules_of(peers, devices=devices)

    assert rules.ports == {
        (V6, IN): frozenset(
            PortElement(1, UDP, net(n), ANY, PortRange(5683, 5683))
            for n in ("2001:db8::2/127", "2001:db8::10/128")
        )
    }


def test_eth_aces_give_ethertypes_and_macs_map_to_classes() -> None:
    eapol = Ace("eapol", "out", OUT, Family.ETH, ethertype=0x888E)
    lldp = Ace("lldp", "out", OUT, Family.ETH, ethertype=0x88CC, destination_mac="01:80:c2:00:00:0e")
    ignored = Ace("in-eth", "in", IN, Family.ETH, ethertype=0x88CC)
    binding = DeviceBinding("t-1", URL, ipaddress.IPv4Address("10.1.0.2"), None, "02:00:00:00:00:01")

    fleet = compile_fleet({URL: profile(URL, eapol, lldp, ignored)}, [binding], FleetContext(), {})

    assert fleet.rules[1].ethertypes == frozenset({(0x888E, None), (0x88CC, "01:80:c2:00:00:0e")})
    assert fleet.macs == {"02:00:00:00:00:01": 1}


def test_profile_names_are_the_dns_names_of_every_ace() -> None:
    first = profile(
        URL,
        out_ace("a", Peer(PeerKind.DNS_NAME, "a.example.com")),
        in_ace("b", Peer(PeerKind.DNS_NAME, "b.example.com")),
    )
    second = profile(
        OTHER_URL, out_ace("c", Peer(PeerKind.DNS_NAME, "a.example.com"), Peer(PeerKind.LOCAL_NETWORKS))
    )

    assert profile_names([first, second]) == frozenset({"a.example.com", "b.example.com"})


# --- properties -------------------------------------------------------------------------------------

_PREFIXES = st.builds(
    lambda host, length: ipaddress.IPv4Network((0x0A000000 | host, length), strict=False),
    st.integers(0, 255),
    st.integers(22, 32),
)
_BOUNDS = st.sampled_from([0, 22, 80, 443, 1023, 1024, 8080, 65535])
_RANGES = st.tuples(_BOUNDS, _BOUNDS).map(lambda b: PortRange(min(b), max(b)))
_ACES = st.builds(
    lambda network, protocol, remote, local: out_ace(
        "x",
        Peer(PeerKind.NETWORK, str(network)),
        protocol=protocol,
        remote_ports=(remote,),
        device_ports=(local,),
    ),
    _PREFIXES,
    st.sampled_from([None, 6, 17]),
    _RANGES,
    _RANGES,
)


def _element_of(ace: Ace) -> PortElement:
    protocol = ANY_PROTOCOL if ace.protocol is None else (ace.protocol, ace.protocol)
    return PortElement(1, protocol, net(ace.peers[0].value), ace.remote_ports[0], ace.device_ports[0])


def _range_within(inner: PortRange, outer: PortRange) -> bool:
    return outer.low <= inner.low and inner.high <= outer.high


def _contains(outer: PortElement, inner: PortElement) -> bool:
    return (
        outer.protocol[0] <= inner.protocol[0] and inner.protocol[1] <= outer.protocol[1]
        and inner.remote.subnet_of(outer.remote)  # type: ignore[arg-type]
        and _range_within(inner.remote_ports, outer.remote_ports)
        and _range_within(inner.device_ports, outer.device_ports)
    )  # fmt: skip


def _allows(elements: Iterable[PortElement], protocol: int, address: int, rport: int, dport: int) -> bool:
    return any(
        e.protocol[0] <= protocol <= e.protocol[1]
        and int(e.remote.network_address) <= address <= int(e.remote.broadcast_address)
        and rport in e.remote_ports
        and dport in e.device_ports
        for e in elements
    )


def _points(element: PortElement, pick: int) -> list[tuple[int, int, int, int]]:
    low, high = int(element.remote.network_address), int(element.remote.broadcast_address)
    middle = (
        element.protocol[0] + pick % (element.protocol[1] - element.protocol[0] + 1),
        low + pick % (high - low + 1),
        element.remote_ports.low + pick % (element.remote_ports.high - element.remote_ports.low + 1),
        element.device_ports.low + pick % (element.device_ports.high - element.device_ports.low + 1),
    )
    first = (element.protocol[0], low, element.remote_ports.low, element.device_ports.low)
    last = (element.protocol[1], high, element.remote_ports.high, element.device_ports.high)
    return [first, middle, last]


@settings(max_examples=200, deadline=None)
@given(aces=st.lists(_ACES, min_size=1, max_size=8), pick=st.integers(0, 2**32))
def test_compilation_keeps_every_allowed_point_and_leaves_no_element_touching_another(
    aces: list[Ace], pick: int
) -> None:
    before = {_element_of(ace) for ace in aces}

    after = rules_of(*aces).ports[(V4, OUT)]

    # Never widened: every corner and a middle point of what is left was allowed before.
    for element in after:
        for point in _points(element, pick):
            assert _allows(before, *point), (element, point)
    assert [(a, b) for a in after for b in after if a != b and _contains(b, a)] == []
    assert [(a, b) for a in after for b in after if a != b and _corner_inside(a, b)] == []
    for element in before:
        for point in _points(element, pick):
            assert _allows(after, *point), (element, point)


@settings(max_examples=100, deadline=None)
@given(
    aces=st.lists(
        st.builds(
            lambda network, icmp_type, icmp_code: out_ace(
                "p",
                Peer(PeerKind.NETWORK, str(network)),
                protocol=1,
                icmp_type=icmp_type,
                icmp_code=icmp_code,
            ),
            _PREFIXES,
            st.sampled_from([None, 0, 3, 8]),
            st.sampled_from([None, 0, 1]),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_icmp_subsumption_keeps_every_allowed_type_and_code(aces: list[Ace]) -> None:
    after = rules_of(*aces).icmp[(V4, OUT)]

    def inside(inner: IcmpElement, outer: IcmpElement) -> bool:
        return (
            inner.remote.subnet_of(outer.remote)  # type: ignore[arg-type]
            and outer.types[0] <= inner.types[0] and inner.types[1] <= outer.types[1]
            and outer.codes[0] <= inner.codes[0] and inner.codes[1] <= outer.codes[1]
        )  # fmt: skip

    assert [(a, b) for a in after for b in after if a != b and inside(a, b)] == []
    for ace in aces:
        network = net(ace.peers[0].value)
        icmp_type = 0 if ace.icmp_type is None else ace.icmp_type
        icmp_code = 0 if ace.icmp_code is None else ace.icmp_code
        for address in (network.network_address, network.broadcast_address):
            assert any(
                address in e.remote
                and e.types[0] <= icmp_type <= e.types[1]
                and e.codes[0] <= icmp_code <= e.codes[1]
                for e in after
            ), (ace, address)
