"""RFC 8520 MUD files parse to exact, normalised ACEs; everything else is refused with its JSON pointer."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import ipaddress
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetguard.segment.errors import MudInvalid, MudTooLarge
from fleetguard.segment.model import ANY_PORT, Ace, Direction, Family, Peer, PeerKind, PortRange
from fleetguard.segment.mud import MAX_ACES, MAX_ACLS, MAX_DEPTH, MAX_MUD_BYTES, parse_mud

MUD_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "mud"
REFERENCE_FILES = sorted(MUD_DATA.glob("*/*.json")) if MUD_DATA.is_dir() else []
needs_reference_files = pytest.mark.skipif(
    not REFERENCE_FILES, reason=f"the reference MUD files are not at {MUD_DATA} (shared data not mounted)"
)

URL = "https://things.example.com/thermostat/v1"
ACL_ROOT = "ietf-access-control-list:acls"
Json = dict[str, Any]


def ace(name: str, matches: Json, forwarding: str = "accept") -> Json:
    return {"name": name, "matches": matches, "actions": {"forwarding": forwarding}}


def document(
    from_aces: list[Json] | None = None,
    to_aces: list[Json] | None = None,
    *,
    acl_type: str = "ipv4-acl-type",
    extra: Json | None = None,
) -> Json:
    """A MUD file with one from-device ACL ``out`` and one to-device ACL ``in``."""
    return {
        "ietf-mud:mud": {
            "mud-version": 1,
            "mud-url": URL,
            "last-update": "2024-03-01T12:00:00+02:00",
            "is-supported": True,
            "systeminfo": "A thermostat",
            "from-device-policy": {"access-lists": {"access-list": [{"name": "out"}]}},
            "to-device-policy": {"access-lists": {"access-list": [{"name": "in"}]}},
            **(extra or {}),
        },
        ACL_ROOT: {
            "acl": [
                {"name": "out", "type": acl_type, "aces": {"ace": from_aces or []}},
                {"name": "in", "type": acl_type, "aces": {"ace": to_aces or []}},
            ]
        },
    }


def encode(doc: object) -> bytes:
    return json.dumps(doc).encode()


def only_ace(doc: Json) -> Ace:
    (result,) = parse_mud(encode(doc)).aces
    return result


# --- exact outcomes ---------------------------------------------------------------------------


def test_a_small_mud_file_parses_to_the_exact_profile_and_aces() -> None:
    doc = document(
        [
            ace(
                "cloud",
                {
                    "ipv4": {"protocol": 6, "ietf-acldns:dst-dnsname": "Cloud.Example.COM."},
                    "tcp": {
                        "destination-port": {"operator": "eq", "port": 443},
                        "ietf-mud:direction-initiated": "from-device",
                    },
                },
            ),
            ace(
                "ntp",
                {
                    "ipv4": {"destination-ipv4-network": "192.0.2.0/24"},
                    "udp": {"destination-port": {"port": 123}},
                },
            ),
            ace("dns", {"ietf-mud:mud": {"controller": "urn:ietf:params:mud:dns"}, "udp": {}}),
            ace("ping", {"ietf-mud:mud": {"local-networks": [None]}, "icmp": {"type": 8, "code": 0}}),
        ],
        [
            ace(
                "peers",
                {
                    "ietf-mud:mud": {"same-manufacturer": [None]},
                    "tcp": {
                        "source-port": {"operator": "gte", "port": 1024},
                        "destination-port": {"lower-port": 8000, "upper-port": 8080},
                        "ietf-mud:direction-initiated": "to-device",
                    },
                },
            )
        ],
    )
    data = encode(doc)

    profile = parse_mud(data)

    out, inbound = Direction.FROM_DEVICE, Direction.TO_DEVICE
    assert profile.aces == (
        Ace(
            "cloud",
            "out",
            out,
            Family.IPV4,
            protocol=6,
            peers=(Peer(PeerKind.DNS_NAME, "cloud.example.com"),),
            remote_ports=(PortRange(443, 443),),
            initiated=out,
        ),
        Ace(
            "ntp",
            "out",
            out,
            Family.IPV4,
            protocol=17,
            peers=(Peer(PeerKind.NETWORK, "192.0.2.0/24"),),
            remote_ports=(PortRange(123, 123),),
        ),
        Ace(
            "dns",
            "out",
            out,
            Family.IPV4,
            protocol=17,
            peers=(Peer(PeerKind.CONTROLLER, "urn:ietf:params:mud:dns"),),
        ),
        Ace(
            "ping",
            "out",
            out,
            Family.IPV4,
            protocol=1,
            peers=(Peer(PeerKind.LOCAL_NETWORKS),),
            icmp_type=8,
            icmp_code=0,
        ),
        Ace(
            "peers",
            "in",
            inbound,
            Family.IPV4,
            protocol=6,
            peers=(Peer(PeerKind.SAME_MANUFACTURER),),
            remote_ports=(PortRange(1024, 65535),),
            device_ports=(PortRange(8000, 8080),),
            initiated=inbound,
        ),
    )
    assert profile.url == URL
    assert profile.authority == "things.example.com"
    assert profile.digest == hashlib.sha256(data).hexdigest()
    assert profile.mud_version == 1
    assert profile.last_update == dt.datetime(2024, 3, 1, 10, 0, tzinfo=dt.UTC)
    assert profile.cache_validity == 48
    assert profile.is_supported is True
    assert profile.systeminfo == "A thermostat"
    assert (profile.mfg_name, profile.model_name, profile.firmware_rev, profile.software_rev) == (
        "",
        "",
        "",
        "",
    )
    assert profile.documentation == ""
    assert profile.signature_url is None


def test_optional_top_level_fields_are_read() -> None:
    doc = document(
        extra={
            "cache-validity": 168,
            "mfg-name": "Example",
            "model-name": "T1",
            "firmware-rev": "1.2",
            "software-rev": "3.4",
            "documentation": "https://things.example.com/docs",
            "mud-signature": "https://things.example.com/thermostat/v1.p7s",
            "last-update": "2024-03-01T12:00:00.123456789Z",
        }
    )

    profile = parse_mud(encode(doc))

    assert profile.cache_validity == 168
    assert (profile.mfg_name, profile.model_name, profile.firmware_rev, profile.software_rev) == (
        "Example",
        "T1",
        "1.2",
        "3.4",
    )
    assert profile.documentation == "https://things.example.com/docs"
    assert profile.signature_url == "https://things.example.com/thermostat/v1.p7s"
    assert profile.last_update == dt.datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
    assert profile.aces == ()


def test_port_operator_neq_becomes_two_ranges() -> None:
    doc = document([ace("a", {"udp": {"destination-port": {"operator": "neq", "port": 53}}})])

    assert only_ace(doc).remote_ports == (PortRange(0, 52), PortRange(54, 65535))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"operator": "neq", "port": 0}, (PortRange(1, 65535),)),
        ({"operator": "neq", "port": 65535}, (PortRange(0, 65534),)),
        ({"operator": "lte", "port": 1023}, (PortRange(0, 1023),)),
        ({"lower-port": 5000, "upper-port": 5010}, (PortRange(5000, 5010),)),
        ({"lower-port": 7, "upper-port": 7}, (PortRange(7, 7),)),
    ],
)
def test_port_specs_become_ranges(spec: Json, expected: tuple[PortRange, ...]) -> None:
    doc = document([ace("a", {"tcp": {"source-port": spec}})])

    result = only_ace(doc)

    assert result.device_ports == expected
    assert result.remote_ports == ANY_PORT


def test_to_device_aces_name_the_remote_side_by_source_fields() -> None:
    doc = document(
        to_aces=[
            ace(
                "a",
                {
                    "ipv4": {"protocol": 17, "source-ipv4-network": "198.51.100.7/32"},
                    "udp": {"source-port": {"port": 53}, "destination-port": {"port": 5353}},
                },
            ),
            ace("b", {"ipv4": {"ietf-acldns:src-dnsname": "ntp.example.org"}}),
        ]
    )

    first, second = parse_mud(encode(doc)).aces

    assert first.peers == (Peer(PeerKind.NETWORK, "198.51.100.7/32"),)
    assert (first.remote_ports, first.device_ports) == ((PortRange(53, 53),), (PortRange(5353, 5353),))
    assert second == Ace(
        "b", "in", Direction.TO_DEVICE, Family.IPV4, peers=(Peer(PeerKind.DNS_NAME, "ntp.example.org"),)
    )


def test_ipv6_and_eth_acls() -> None:
    doc = document(
        [
            ace("v6", {"ipv6": {"destination-ipv6-network": "2001:DB8:0::/32"}, "icmp": {"type": 135}}),
            ace("mdns", {"ipv6": {"ietf-acldns:dst-dnsname": "mdns.example"}, "udp": {}}),
        ],
        acl_type="ietf-access-control-list:ipv6-acl-type",
    )
    doc[ACL_ROOT]["acl"].append(
        {
            "name": "l2",
            "type": "ethernet-acl-type",
            "aces": {
                "ace": [
                    ace("eapol", {"eth": {"ethertype": "0x888E"}, "ietf-mud:mud": {"local-networks": [None]}})
                ]
            },
        }
    )
    doc["ietf-mud:mud"]["from-device-policy"]["access-lists"]["access-list"].append({"name": "l2"})

    v6, mdns, eapol = parse_mud(encode(doc)).aces

    assert v6 == Ace(
        "v6",
        "out",
        Direction.FROM_DEVICE,
        Family.IPV6,
        protocol=58,
        peers=(Peer(PeerKind.NETWORK, "2001:db8::/32"),),
        icmp_type=135,
    )
    assert (mdns.family, mdns.protocol) == (Family.IPV6, 17)
    assert eapol == Ace(
        "eapol",
        "l2",
        Direction.FROM_DEVICE,
        Family.ETH,
        peers=(Peer(PeerKind.LOCAL_NETWORKS),),
        ethertype=0x888E,
    )


def test_an_eth_match_in_an_ipv4_ace_is_kept() -> None:
    # MUDgee's DHCP discover: ipv4 + udp 67 + broadcast MAC, all in one ipv4 ACE.
    doc = document(
        [
            ace(
                "dhcp",
                {
                    "ipv4": {"protocol": 17, "destination-ipv4-network": "255.255.255.255/32"},
                    "udp": {"destination-port": {"operator": "eq", "port": 67}},
                    "eth": {"destination-mac-address": "FF:FF:FF:FF:FF:FF", "ethertype": "0x0800"},
                },
            )
        ]
    )

    result = only_ace(doc)

    assert (result.ethertype, result.destination_mac) == (0x0800, "ff:ff:ff:ff:ff:ff")
    assert result.peers == (Peer(PeerKind.NETWORK, "255.255.255.255/32"),)


def test_abstractions_become_peers() -> None:
    doc = document(
        [
            ace("m", {"ietf-mud:mud": {"manufacturer": "Brush.Example.com"}}),
            ace("mo", {"ietf-mud:mud": {"model": "https://brush.example.com/b2"}}),
            ace("c", {"ietf-mud:mud": {"controller": "https://controller.example"}}),
            ace("mc", {"ietf-mud:mud": {"my-controller": [None]}}),
        ]
    )

    assert [result.peers for result in parse_mud(encode(doc)).aces] == [
        (Peer(PeerKind.MANUFACTURER, "brush.example.com"),),
        (Peer(PeerKind.MODEL, "https://brush.example.com/b2"),),
        (Peer(PeerKind.CONTROLLER, "https://controller.example"),),
        (Peer(PeerKind.MY_CONTROLLER),),
    ]


def test_the_draft_acl_root_and_unknown_extensions_are_accepted() -> None:
    doc = document([ace("a", {"udp": {}})], extra={"nist-mud:quarantined-device-policy": {"x": [1]}})
    doc["ietf-access-control-list:access-lists"] = doc.pop(ACL_ROOT)
    doc["ietf-mud:mud"]["ietf-mud-reporter-extension:reporter"] = {"report-uri": "http://localhost:8080"}
    doc["ietf-mud:mud"]["extensions"] = ["reporter"]
    doc["vendor:other-root"] = {"anything": True}

    assert only_ace(doc).protocol == 17


def test_an_acl_referenced_by_no_policy_is_ignored() -> None:
    doc = document([ace("a", {"udp": {}})])
    doc[ACL_ROOT]["acl"].append({"name": "spare", "type": "ipv4-acl-type", "aces": {"ace": [ace("x", {})]}})

    assert [result.name for result in parse_mud(encode(doc)).aces] == ["a"]


# --- refusals ---------------------------------------------------------------------------------

Mutation = Callable[[Json], None]
MUD = "/ietf-mud:mud"
OUT_ACE = f"/{ACL_ROOT}/acl/0/aces/ace/0"


def set_mud(key: str, value: object) -> Mutation:
    return lambda doc: doc["ietf-mud:mud"].__setitem__(key, value)


def drop_mud(key: str) -> Mutation:
    return lambda doc: doc["ietf-mud:mud"].pop(key)


def first_ace(matches: Json, forwarding: str = "accept") -> Mutation:
    return lambda doc: doc[ACL_ROOT]["acl"][0]["aces"].__setitem__("ace", [ace("a", matches, forwarding)])


def reference(policy: str, name: str) -> Mutation:
    return lambda doc: doc["ietf-mud:mud"][policy]["access-lists"]["access-list"].append({"name": name})


def acl_type(value: str) -> Mutation:
    return lambda doc: doc[ACL_ROOT]["acl"][0].__setitem__("type", value)


def both_roots(doc: Json) -> None:
    doc["ietf-access-control-list:access-lists"] = doc[ACL_ROOT]


REFUSALS = [
    pytest.param(
        reference("to-device-policy", "ghost"),
        f"{MUD}/to-device-policy/access-lists/access-list/1/name",
        "references ACL 'ghost', which the file does not define",
        id="missing ACL reference",
    ),
    pytest.param(
        reference("to-device-policy", "out"),
        f"{MUD}/to-device-policy",
        "'out' is referenced by both",
        id="ACL in both directions",
    ),
    pytest.param(
        first_ace({"ietf-mud:mud": {"same-model": [None]}}),
        f"{OUT_ACE}/matches/ietf-mud:mud/same-model",
        "unknown MUD abstraction 'same-model'",
        id="unknown abstraction",
    ),
    pytest.param(
        first_ace({"ipv4": {"ttl": 3}}),
        f"{OUT_ACE}/matches/ipv4/ttl",
        "unknown or unsupported ipv4 field 'ttl'",
        id="unknown match field",
    ),
    pytest.param(
        first_ace({"egress-interface": "eth0"}),
        f"{OUT_ACE}/matches/egress-interface",
        "unknown or unsupported match 'egress-interface'",
        id="unknown match container",
    ),
    pytest.param(
        first_ace({"tcp": {"flags": "syn"}}),
        f"{OUT_ACE}/matches/tcp/flags",
        "unknown or unsupported tcp field 'flags'",
        id="unknown tcp field",
    ),
    pytest.param(
        set_mud("mud-url", "http://things.example.com/t"),
        f"{MUD}/mud-url",
        "is not an https URL",
        id="http MUD URL",
    ),
    pytest.param(
        first_ace({"ietf-mud:mud": {"model": "http://a.example/b"}}),
        f"{OUT_ACE}/matches/ietf-mud:mud/model",
        "is not an https URL",
        id="http model URL",
    ),
    pytest.param(
        first_ace({"udp": {}}, "drop"),
        f"{OUT_ACE}/actions/forwarding",
        "allow-lists with a default deny",
        id="drop action",
    ),
    pytest.param(
        first_ace({"udp": {}}, "ietf-access-control-list:reject"),
        f"{OUT_ACE}/actions/forwarding",
        "every ACE must accept",
        id="reject action",
    ),
    pytest.param(
        first_ace({"ipv6": {"protocol": 6}}),
        f"{OUT_ACE}/matches/ipv6",
        "a 'ipv6' match cannot be in an ipv4 ACL",
        id="ipv6 match in an ipv4 ACL",
    ),
    pytest.param(
        first_ace({"ipv4": {"destination-ipv4-network": "2001:db8::/32"}}),
        f"{OUT_ACE}/matches/ipv4/destination-ipv4-network",
        "is not an ipv4 prefix",
        id="ipv6 network in an ipv6-named field",
    ),
    pytest.param(
        first_ace({"udp": {"ietf-mud:direction-initiated": "from-device"}}),
        f"{OUT_ACE}/matches/udp/ietf-mud:direction-initiated",
        "only defined for tcp",
        id="direction-initiated on udp",
    ),
    pytest.param(
        first_ace({"tcp": {"ietf-mud:direction-initiated": "both"}}),
        f"{OUT_ACE}/matches/tcp/ietf-mud:direction-initiated",
        "neither 'from-device' nor 'to-device'",
        id="bad direction",
    ),
    pytest.param(
        first_ace({"ipv4": {"source-ipv4-network": "10.0.0.5/32"}}),
        f"{OUT_ACE}/matches/ipv4/source-ipv4-network",
        "device's own address",
        id="own source address",
    ),
    pytest.param(
        first_ace({"ipv4": {"ietf-acldns:src-dnsname": "me.example"}}),
        f"{OUT_ACE}/matches/ipv4/ietf-acldns:src-dnsname",
        "device's own address",
        id="own source name",
    ),
    pytest.param(
        first_ace({"ipv4": {"destination-ipv4-network": "192.0.2.1/24"}}),
        f"{OUT_ACE}/matches/ipv4/destination-ipv4-network",
        "has host bits set",
        id="host bits set",
    ),
    pytest.param(
        first_ace({"ipv4": {"destination-ipv4-network": "192.0.2.1"}}),
        f"{OUT_ACE}/matches/ipv4/destination-ipv4-network",
        "no prefix length",
        id="no prefix length",
    ),
    pytest.param(
        first_ace(
            {"ipv4": {"destination-ipv4-network": "192.0.2.0/24", "ietf-acldns:dst-dnsname": "a.example"}}
        ),
        f"{OUT_ACE}/matches/ipv4",
        "cannot both match",
        id="network and name",
    ),
    pytest.param(
        first_ace({"ipv4": {"ietf-acldns:dst-dnsname": "bad name.example"}}),
        f"{OUT_ACE}/matches/ipv4/ietf-acldns:dst-dnsname",
        "not a valid host name",
        id="bad host name",
    ),
    pytest.param(
        first_ace({"ipv4": {"protocol": 17}, "tcp": {}}),
        f"{OUT_ACE}/matches/ipv4/protocol",
        "protocol 17 contradicts the 'tcp' match",
        id="tcp with protocol 17",
    ),
    pytest.param(
        first_ace({"tcp": {}, "udp": {}}),
        f"{OUT_ACE}/matches",
        "'tcp' and 'udp' cannot both match",
        id="tcp and udp",
    ),
    pytest.param(
        first_ace({"tcp": {"source-port": {"operator": "lt", "port": 3}}}),
        f"{OUT_ACE}/matches/tcp/source-port/operator",
        "unknown port operator 'lt'",
        id="neq-less operator",
    ),
    pytest.param(
        first_ace({"tcp": {"source-port": {"lower-port": 9, "upper-port": 3}}}),
        f"{OUT_ACE}/matches/tcp/source-port",
        "lower-port 9 is above upper-port 3",
        id="inverted range",
    ),
    pytest.param(
        first_ace({"udp": {"source-port": {"port": 65536}}}),
        f"{OUT_ACE}/matches/udp/source-port/port",
        "65536 is outside 0..65535",
        id="port out of range",
    ),
    pytest.param(
        first_ace({"icmp": {"type": 256}}),
        f"{OUT_ACE}/matches/icmp/type",
        "256 is outside 0..255",
        id="icmp type out of range",
    ),
    pytest.param(
        first_ace({"ietf-mud:mud": {"local-networks": True}}),
        f"{OUT_ACE}/matches/ietf-mud:mud/local-networks",
        r"expected \[null\]",
        id="empty leaf not [null]",
    ),
    pytest.param(
        first_ace({"eth": {"ethertype": "0x86dd"}}),
        f"{OUT_ACE}/matches/eth/ethertype",
        "contradicts an ipv4 ACL",
        id="wrong EtherType for ipv4",
    ),
    pytest.param(
        acl_type("mixed-eth-ipv4-acl-type"),
        f"/{ACL_ROOT}/acl/0/type",
        "ACLs are not supported",
        id="mixed ACL type",
    ),
    pytest.param(
        acl_type("ipv5-acl-type"), f"/{ACL_ROOT}/acl/0/type", "unknown ACL type", id="unknown ACL type"
    ),
    pytest.param(both_roots, "", "are present; use one", id="both ACL roots"),
    pytest.param(
        lambda doc: doc.pop("ietf-mud:mud"), "", "'ietf-mud:mud' is missing", id="missing ietf-mud:mud"
    ),
    pytest.param(drop_mud("mud-version"), MUD, "'mud-version' is missing", id="missing mud-version"),
    pytest.param(set_mud("mud-version", 2), f"{MUD}/mud-version", "2 is outside 1..1", id="mud-version 2"),
    pytest.param(
        set_mud("mud-version", 1.0), f"{MUD}/mud-version", "expected an integer", id="mud-version as float"
    ),
    pytest.param(
        set_mud("last-update", "2024-03-01T12:00:00"),
        f"{MUD}/last-update",
        "not an RFC 3339 date-time",
        id="last-update without zone",
    ),
    pytest.param(
        set_mud("last-update", "2024-02-30T12:00:00Z"),
        f"{MUD}/last-update",
        "not a valid date-time",
        id="last-update invalid date",
    ),
    pytest.param(
        set_mud("cache-validity", 0), f"{MUD}/cache-validity", "0 is outside 1..168", id="cache-validity 0"
    ),
    pytest.param(
        set_mud("cache-validity", 169),
        f"{MUD}/cache-validity",
        "169 is outside 1..168",
        id="cache-validity 169",
    ),
    pytest.param(
        set_mud("is-supported", "yes"),
        f"{MUD}/is-supported",
        "expected true or false",
        id="is-supported a string",
    ),
    pytest.param(
        set_mud("systeminfo", "x" * 61),
        f"{MUD}/systeminfo",
        "longer than 60 characters",
        id="systeminfo over 60",
    ),
    pytest.param(
        set_mud("mud-signature", "http://a.example/s.p7s"),
        f"{MUD}/mud-signature",
        "not an https URL",
        id="http signature URL",
    ),
    pytest.param(
        set_mud("extensions", "reporter"),
        f"{MUD}/extensions",
        "expected a JSON array",
        id="extensions not a list",
    ),
    pytest.param(
        lambda doc: doc[ACL_ROOT]["acl"][0]["aces"].__setitem__("ace", [ace("a", {}), ace("a", {})]),
        f"/{ACL_ROOT}/acl/0/aces/ace/1/name",
        "ACE 'a' appears twice",
        id="duplicate ACE",
    ),
    pytest.param(
        lambda doc: doc[ACL_ROOT]["acl"].append({"name": "in", "type": "ipv4-acl-type"}),
        f"/{ACL_ROOT}/acl/2/name",
        "ACL 'in' is defined twice",
        id="duplicate ACL",
    ),
    pytest.param(
        lambda doc: doc[ACL_ROOT]["acl"][0]["aces"].__setitem__("ace", [{"name": "a"}]),
        OUT_ACE,
        "'actions' is missing",
        id="ACE without actions",
    ),
    pytest.param(
        lambda doc: doc[ACL_ROOT]["acl"][0]["aces"].__setitem__("ace", [ace("n" * 65, {})]),
        f"{OUT_ACE}/name",
        "longer than 64 characters",
        id="ACE name too long",
    ),
]


@pytest.mark.parametrize(("mutate", "path", "message"), REFUSALS)
def test_invalid_mud_files_are_refused_with_the_path(mutate: Mutation, path: str, message: str) -> None:
    doc = document([ace("a", {"udp": {}})], [ace("b", {"udp": {}})])
    mutate(doc)

    with pytest.raises(MudInvalid, match=message) as caught:
        parse_mud(encode(doc))

    assert caught.value.path == path


def test_duplicate_keys_are_refused_with_the_path() -> None:
    data = encode(document()).replace(b'"mud-version": 1,', b'"mud-version": 1, "mud-version": 1,')

    with pytest.raises(MudInvalid, match="duplicate key 'mud-version'") as caught:
        parse_mud(data)

    assert caught.value.path == MUD


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{", "not JSON"),
        (b'{"ietf-mud:mud": NaN}', "not JSON: NaN is not JSON"),
        (b"[1]", "expected a JSON object"),
        (b"[" * (MAX_DEPTH + 2) + b"]" * (MAX_DEPTH + 2), f"nested deeper than {MAX_DEPTH}"),
        (b"[" * 100_000 + b"]" * 100_000, f"nested deeper than {MAX_DEPTH}"),
        (b'{"a": ' + b"9" * 5000 + b"}", "not JSON"),
    ],
    ids=["not-utf8", "truncated", "nan", "array-root", "deep", "very-deep", "huge-integer"],
)
def test_malformed_documents_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(MudInvalid, match=message):
        parse_mud(data)


def test_a_file_over_the_size_limit_is_refused_before_parsing() -> None:
    data = b" " * (MAX_MUD_BYTES - 1) + b"{}"

    with pytest.raises(MudTooLarge, match=f"over the limit of {MAX_MUD_BYTES}"):
        parse_mud(data)


def test_too_many_aces_in_all_acls_together_are_refused() -> None:
    half = MAX_ACES // 2 + 1
    doc = document([ace(f"a{i}", {}) for i in range(half)], [ace(f"b{i}", {}) for i in range(half)])

    with pytest.raises(MudTooLarge, match=f"more than {MAX_ACES} ACEs"):
        parse_mud(encode(doc))


def test_too_many_acls_are_refused() -> None:
    doc = document()
    doc[ACL_ROOT]["acl"] = [{"name": f"acl{i}", "type": "ipv4-acl-type"} for i in range(MAX_ACLS + 1)]

    with pytest.raises(MudTooLarge, match=f"over the limit of {MAX_ACLS}"):
        parse_mud(encode(doc))


# --- the reference files ----------------------------------------------------------------------


def referenced_ace_count(doc: Json) -> int:
    mud = doc["ietf-mud:mud"]
    names = {
        entry["name"]
        for policy in ("from-device-policy", "to-device-policy")
        for entry in mud.get(policy, {}).get("access-lists", {}).get("access-list", [])
    }
    acls = doc.get(ACL_ROOT) or doc["ietf-access-control-list:access-lists"]
    return sum(len(acl["aces"]["ace"]) for acl in acls["acl"] if acl["name"] in names)


@needs_reference_files
@pytest.mark.parametrize("path", REFERENCE_FILES, ids=[f"{p.parent.name}/{p.name}" for p in REFERENCE_FILES])
def test_every_reference_file_parses(path: Path) -> None:
    data = path.read_bytes()

    profile = parse_mud(data)

    assert len(profile.aces) == referenced_ace_count(json.loads(data))
    assert profile.url.startswith("https://")
    assert profile.last_update.tzinfo is dt.UTC


@needs_reference_files
def test_there_are_45_reference_files() -> None:
    assert len(REFERENCE_FILES) == 45


@needs_reference_files
def test_the_tplink_plug_profile_checked_by_hand() -> None:
    profile = parse_mud((MUD_DATA / "mudgee-us" / "tplink_plug_merged_usMud.json").read_bytes())

    assert len(profile.aces) == 19
    assert profile.cache_validity == 100
    assert profile.last_update == dt.datetime(2021, 8, 7, 7, 7, 18, 876000, tzinfo=dt.UTC)
    assert profile.aces[0] == Ace(
        "from-ipv4-tplink_plug_merged_us-0",
        "from-ipv4-tplink_plug_merged_us",
        Direction.FROM_DEVICE,
        Family.IPV4,
        protocol=17,
        peers=(Peer(PeerKind.CONTROLLER, "urn:ietf:params:mud:gateway"),),
        remote_ports=(PortRange(67, 67),),
    )
    assert profile.aces[3] == Ace(
        "from-ipv4-tplink_plug_merged_us-3",
        "from-ipv4-tplink_plug_merged_us",
        Direction.FROM_DEVICE,
        Family.IPV4,
        protocol=6,
        peers=(Peer(PeerKind.DNS_NAME, "use1-api.tplinkra.com"),),
        remote_ports=(PortRange(443, 443),),
        initiated=Direction.FROM_DEVICE,
    )


@needs_reference_files
def test_the_nist_model_test_profile_checked_by_hand() -> None:
    path = MUD_DATA / "nist-mud-tests" / "unittest__mud-model-test__mudfile-model-test.json"

    profile = parse_mud(path.read_bytes())

    # The to-device ACL comes first in the file; from-device ACEs still come first in the profile.
    assert [(a.name, a.direction) for a in profile.aces] == [
        ("man0-frdev", Direction.FROM_DEVICE),
        ("man1-frdev", Direction.FROM_DEVICE),
        ("man0-todev", Direction.TO_DEVICE),
        ("man1-todev", Direction.TO_DEVICE),
    ]
    assert profile.aces[3] == Ace(
        "man1-todev",
        "mud-99365-v4to",
        Direction.TO_DEVICE,
        Family.IPV4,
        protocol=6,
        peers=(Peer(PeerKind.MODEL, "https://hairbrush.nist.local/super1"),),
        remote_ports=(PortRange(8010, 8010),),
        initiated=Direction.FROM_DEVICE,
    )


# --- properties -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=30,
)
match_keys = st.sampled_from(["ipv4", "ipv6", "tcp", "udp", "icmp", "eth", "ietf-mud:mud", "l2"])
field_keys = st.sampled_from(
    [
        "protocol",
        "destination-ipv4-network",
        "source-ipv4-network",
        "ietf-acldns:dst-dnsname",
        "destination-port",
        "source-port",
        "operator",
        "port",
        "lower-port",
        "upper-port",
        "ietf-mud:direction-initiated",
        "type",
        "code",
        "ethertype",
        "manufacturer",
        "controller",
        "local-networks",
    ]
)
match_values = st.dictionaries(match_keys, st.dictionaries(field_keys, json_values, max_size=3), max_size=3)


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_mud_errors(data: bytes) -> None:
    with contextlib.suppress(MudInvalid, MudTooLarge):
        parse_mud(data)


@given(json_values)
def test_random_json_raises_only_mud_errors(value: object) -> None:
    with contextlib.suppress(MudInvalid, MudTooLarge):
        parse_mud(encode(value))


@settings(max_examples=300)
@given(match_values, st.sampled_from(["ipv4-acl-type", "ipv6-acl-type", "eth-acl-type"]))
def test_random_matches_in_a_valid_file_raise_only_mud_errors(matches: Json, kind: str) -> None:
    doc = document([ace("a", matches)], [ace("b", matches)], acl_type=kind)
    with contextlib.suppress(MudInvalid, MudTooLarge):
        parse_mud(encode(doc))


mud_field_keys = st.sampled_from(
    [
        "mud-version",
        "mud-url",
        "last-update",
        "cache-validity",
        "is-supported",
        "systeminfo",
        "mfg-name",
        "documentation",
        "mud-signature",
        "extensions",
        "from-device-policy",
        "to-device-policy",
    ]
) | st.text(max_size=8)


@given(st.dictionaries(mud_field_keys, json_values, max_size=3))
def test_random_top_level_mud_fields_raise_only_mud_errors(fields: Json) -> None:
    doc = document([ace("a", {"udp": {}})])
    doc["ietf-mud:mud"].update(copy.deepcopy(fields))
    with contextlib.suppress(MudInvalid, MudTooLarge):
        parse_mud(encode(doc))


ports = st.integers(0, 65535)
port_specs = st.one_of(
    ports.map(lambda p: ({"operator": "eq", "port": p}, (PortRange(p, p),))),
    ports.map(lambda p: ({"port": p}, (PortRange(p, p),))),
    ports.map(lambda p: ({"operator": "lte", "port": p}, (PortRange(0, p),))),
    ports.map(lambda p: ({"operator": "gte", "port": p}, (PortRange(p, 65535),))),
    st.tuples(ports, ports)
    .map(sorted)
    .map(lambda r: ({"lower-port": r[0], "upper-port": r[1]}, (PortRange(r[0], r[1]),))),
)
networks = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
    lambda t: ipaddress.ip_network((t[0], t[1]), strict=False)
)


@st.composite
def generated_aces(draw: st.DrawFn) -> tuple[Direction, Json, Ace]:
    """A valid ipv4 ACE dict and the Ace it must become."""
    direction = draw(st.sampled_from(Direction))
    transport = draw(st.sampled_from(["tcp", "udp"]))
    remote_spec, remote_ports = draw(port_specs)
    device_spec, device_ports = draw(port_specs)
    network = draw(networks)
    initiated = draw(st.none() | st.sampled_from(Direction)) if transport == "tcp" else None
    remote_side, device_side = (
        ("destination", "source") if direction is Direction.FROM_DEVICE else ("source", "destination")
    )
    layer4: Json = {f"{remote_side}-port": remote_spec, f"{device_side}-port": device_spec}
    if initiated is not None:
        layer4["ietf-mud:direction-initiated"] = initiated.value
    ip: Json = {f"{remote_side}-ipv4-network": str(network)}
    if draw(st.booleans()):
        ip["protocol"] = 6 if transport == "tcp" else 17
    acl = "out" if direction is Direction.FROM_DEVICE else "in"
    expected = Ace(
        "gen",
        acl,
        direction,
        Family.IPV4,
        protocol=6 if transport == "tcp" else 17,
        peers=(Peer(PeerKind.NETWORK, str(network)),),
        remote_ports=remote_ports,
        device_ports=device_ports,
        initiated=initiated,
    )
    return direction, ace("gen", {"ipv4": ip, transport: layer4}), expected


@given(generated_aces())
def test_generated_valid_aces_parse_to_the_expected_fields(case: tuple[Direction, Json, Ace]) -> None:
    direction, raw, expected = case
    doc = document([raw]) if direction is Direction.FROM_DEVICE else document(to_aces=[raw])

    assert parse_mud(encode(doc)).aces == (expected,)
