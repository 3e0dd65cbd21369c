"""Segmentation enforced by real nftables in a gateway namespace, with real traffic between namespaces.

A camera whose MUD profile allows its cloud endpoint (by DNS name) and DNS reaches both and not
the corporate host; quarantine cuts its established TCP flow within 20 ms with no packet leaking,
and release lets the same connection go on; a refused apply leaves the ruleset in force; a DNS
change moves the allowed address with an element update and no reload.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from network_lab import Lab, lab_available
from prerequisites import require

from fleetguard.segment.compiler import (
    CompiledFleet,
    DeviceBinding,
    FleetContext,
    compile_fleet,
    profile_names,
)
from fleetguard.segment.errors import RulesetRejected
from fleetguard.segment.model import Flow
from fleetguard.segment.mud import parse_mud
from fleetguard.segment.nftables import (
    ElementUpdate,
    Nftables,
    quarantine_update,
    read_counters,
    read_violations,
    render_fleet,
    set_elements,
)
from fleetguard.segment.resolver import NameTable, StaticResolver
from fleetguard.segment.simulation import simulate

CAMERA_URL = "https://camera.example.com/cam-1000"
CAMERA_MUD = {
    "ietf-mud:mud": {
        "mud-version": 1,
        "mud-url": CAMERA_URL,
        "last-update": "2026-11-01T00:00:00+00:00",
        "cache-validity": 48,
        "is-supported": True,
        "systeminfo": "Example camera",
        "from-device-policy": {"access-lists": {"access-list": [{"name": "cam-from"}]}},
        "to-device-policy": {"access-lists": {"access-list": [{"name": "cam-to"}]}},
    },
    "ietf-access-control-list:acls": {
        "acl": [
            {
                "name": "cam-from",
                "type": "ipv4-acl-type",
                "aces": {
                    "ace": [
                        {
                            "name": "cloud",
                            "matches": {
                                "ipv4": {"protocol": 6, "ietf-acldns:dst-dnsname": "cloud.example.com"},
                                "tcp": {
                                    "destination-port": {"operator": "eq", "port": 443},
                                    "ietf-mud:direction-initiated": "from-device",
                                },
                            },
                            "actions": {"forwarding": "accept"},
                        },
                        {
                            "name": "dns",
                            "matches": {
                                "ietf-mud:mud": {"controller": "urn:ietf:params:mud:dns"},
                                "ipv4": {"protocol": 17},
                                "udp": {"destination-port": {"operator": "eq", "port": 53}},
                            },
                            "actions": {"forwarding": "accept"},
                        },
                    ]
                },
            },
            {
                "name": "cam-to",
                "type": "ipv4-acl-type",
                "aces": {
                    "ace": [
                        {
                            "name": "cloud-replies",
                            "matches": {
                                "ipv4": {"protocol": 6, "ietf-acldns:src-dnsname": "cloud.example.com"},
                                "tcp": {
                                    "source-port": {"operator": "eq", "port": 443},
                                    "ietf-mud:direction-initiated": "from-device",
                                },
                            },
                            "actions": {"forwarding": "accept"},
                        }
                    ]
                },
            },
        ]
    },
}

TCP_SERVER = """
import socket, sys, time
port, log = int(sys.argv[1]), sys.argv[2]
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", port)); server.listen(16)
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    with conn, open(log, "a") as out:
        buffer = b""
        while chunk := conn.recv(65536):
            now = time.monotonic_ns()
            buffer += chunk
            *lines, buffer = buffer.split(b"\\n")
            for line in lines:
                out.write(f"{now} {line.decode()}\\n")
            out.flush()
            conn.sendall(b"k")
"""

UDP_ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 53))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048); s.sendto(data, peer)
"""

CONNECT = """
import socket, sys
host, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    if proto == "tcp":
        s = socket.create_connection((host, port), timeout=1.0); s.sendall(b"hello\\n"); s.recv(1)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.0)
        s.sendto(b"q", (host, port)); s.recvfrom(16)
    print("open")
except OSError as exc:
    print("blocked", type(exc).__name__)
"""

STREAM = """
import socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection((host, port), timeout=2.0)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
end = time.monotonic() + seconds
n = 0
while time.monotonic() < end:
    s.sendall(f"{n} {time.monotonic_ns()}\\n".encode()); n += 1
    time.sleep(0.0005)
s.close()
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    why = lab_available()
    require(why is None, f"network namespace lab ({why})")
    lab = Lab().start([("camera", "10.1.0.2"), ("sensor", "10.2.0.2")])
    # A second address for cloud.example.com to move to.
    subprocess.run(["ip", "-n", lab.hosts["cloud"].namespace, "addr", "add", "198.51.100.8/24", "dev", "v2h"],
                   check=True)  # fmt: skip
    servers = [
        lab.python("cloud", TCP_SERVER, args=["443", "/dev/null"]),
        lab.python("corp", TCP_SERVER, args=["443", "/dev/null"]),
        lab.python("dns", UDP_ECHO),
    ]
    for server in servers:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == b"ready"
    try:
        yield lab
    finally:
        for server in servers:
            lab.stop(server)
        lab.close()


def _fleet(dns: dict[str, tuple[str, ...]]) -> CompiledFleet:
    profile = parse_mud(json.dumps(CAMERA_MUD).encode())
    devices = [
        DeviceBinding("cam-1", CAMERA_URL, ipaddress.IPv4Address("10.1.0.2")),
        DeviceBinding("sensor-1", "https://unknown.example.com/s", ipaddress.IPv4Address("10.2.0.2")),
    ]
    context = FleetContext(
        local_networks=(ipaddress.ip_network("10.0.0.0/8"),),
        controllers={"urn:ietf:params:mud:dns": (ipaddress.ip_address("10.9.0.53"),)},
    )
    addresses = {name: tuple(ipaddress.ip_address(a) for a in values) for name, values in dns.items()}
    return compile_fleet({CAMERA_URL: profile}, devices, context, addresses)


@pytest.fixture
def gateway(lab: Lab) -> Iterator[Nftables]:
    nft = Nftables(prefix=lab.nft_prefix())
    nft.run(render_fleet(_fleet({"cloud.example.com": ("198.51.100.7",)}), comment="test"))
    yield nft
    nft.run("table inet fleetguard\ndelete table inet fleetguard\n")


def _connect(lab: Lab, host: str, target: str, port: int, proto: str = "tcp") -> str:
    return lab.run(host, CONNECT, args=[target, str(port), proto]).split()[0]


def test_camera_reaches_its_cloud_and_dns_but_not_the_corporate_host(lab: Lab, gateway: Nftables) -> None:
    assert _connect(lab, "camera", "198.51.100.7", 443) == "open"
    assert _connect(lab, "camera", "10.9.0.53", 53, "udp") == "open"
    assert _connect(lab, "camera", "10.20.0.10", 443) == "blocked"
    assert _connect(lab, "camera", "198.51.100.8", 443) == "blocked"  # not what the name resolves to
    # Nobody may open a connection to the camera, and a device without a profile may do nothing.
    assert _connect(lab, "corp", "10.1.0.2", 443) == "blocked"
    assert _connect(lab, "sensor", "198.51.100.7", 443) == "blocked"
    # Unmanaged traffic is not ours.
    assert _connect(lab, "corp", "198.51.100.7", 443) == "open"

    violations = {
        (str(v.source), v.protocol, str(v.destination), v.destination_port) for v in read_violations(gateway)
    }
    assert ("10.1.0.2", 6, "10.20.0.10", 443) in violations
    assert ("10.20.0.10", 6, "10.1.0.2", 443) in violations
    assert ("10.2.0.2", 6, "198.51.100.7", 443) in violations
    assert not any(v[0] == "10.20.0.10" and v[2] == "198.51.100.7" for v in violations)
    counters = read_counters(gateway)
    assert counters["denied4"]["10.1.0.2"][0] >= 1
    assert counters["denied4"]["10.2.0.2"][0] >= 1


def test_quarantine_cuts_an_established_flow_within_20_ms_and_release_resumes_it(
    lab: Lab, gateway: Nftables, tmp_path: Path
) -> None:
    log = tmp_path / "stream.log"
    server = lab.python("cloud", TCP_SERVER, args=["8443", str(log)])
    assert server.stdout is not None
    assert server.stdout.readline().strip() == b"ready"
    # Port 8443 is not in the profile: allow it for this test through the allow set itself.
    gateway.run("add element inet fleetguard out4 { 1 . 6 . 198.51.100.7 . 0-65535 . 8443 }\n")
    client = lab.python("camera", STREAM, args=["198.51.100.7", "8443", "3.0"])
    try:
        _wait_for_lines(log, 200)
        before = time.monotonic_ns()
        gateway.run(quarantine_update([ipaddress.IPv4Address("10.1.0.2")]))
        in_force = time.monotonic_ns()
        time.sleep(0.5)
        released = time.monotonic_ns()
        gateway.run(quarantine_update([ipaddress.IPv4Address("10.1.0.2")], release=True))
        assert client.wait(timeout=10) == 0
        time.sleep(0.3)
    finally:
        lab.stop(client)
        lab.stop(server)
    records = [tuple(int(x) for x in line.split()) for line in log.read_text().splitlines()]
    # (received at, sequence number, sent at)
    assert (in_force - before) / 1e6 <= 20
    leaked = [r for r in records if r[2] > in_force and r[0] < released]
    assert leaked == []
    during = [r for r in records if in_force < r[0] < released]
    assert during == []
    assert any(r[2] > released for r in records), "the connection did not resume after release"
    sequence = [r[1] for r in records]
    assert sequence == list(range(len(sequence))), "TCP delivered everything, in order, after release"
    counters = read_counters(gateway)
    assert counters["quarantine4"] == {}


def test_a_refused_apply_leaves_the_ruleset_in_force(lab: Lab, gateway: Nftables) -> None:
    before = _ruleset(lab)
    broken = render_fleet(_fleet({"cloud.example.com": ("198.51.100.7",)})).replace(
        "chain to_device4 {", "chain to_device4 {\n\t\tip saddr @no_such_set drop", 1
    )
    with pytest.raises(RulesetRejected, match=r"(?s)the ruleset in force is unchanged: .*no_such_set"):
        gateway.run(broken)
    with pytest.raises(RulesetRejected, match="no_such_set"):
        gateway.run(broken, check_only=True)
    # One the parser accepts and the kernel refuses half-way through the transaction (after the old
    # table was deleted in it): an element inside another is "File exists".
    refused = render_fleet(_fleet({"cloud.example.com": ("198.51.100.7",)}))
    refused += "add element inet fleetguard out4 { 1 . 6 . 198.51.100.7 . 1000-2000 . 443 }\n"
    with pytest.raises(RulesetRejected, match="File exists"):
        gateway.run(refused)
    after = _ruleset(lab)
    assert after == before
    assert _connect(lab, "camera", "198.51.100.7", 443) == "open"
    assert _connect(lab, "camera", "10.20.0.10", 443) == "blocked"


def test_a_dns_change_moves_the_allowed_address_by_element_update(lab: Lab, gateway: Nftables) -> None:
    answers = {"cloud.example.com": ["198.51.100.7"]}
    names = NameTable(StaticResolver(answers))
    names.refresh(["cloud.example.com"])
    old = _fleet({k: tuple(map(str, v)) for k, v in names.addresses().items()})
    answers["cloud.example.com"] = ["198.51.100.8"]
    assert names.refresh(["cloud.example.com"], force=True) == {"cloud.example.com"}
    new = _fleet({k: tuple(map(str, v)) for k, v in names.addresses().items()})
    update = ElementUpdate.between(set_elements(old), set_elements(new))
    # Only the allow element moves (the replies ride on connection tracking: no in4 element).
    assert _changed(update.delete) == {"out4": ["1 . 6 . 198.51.100.7 . 0-65535 . 443"]}
    assert _changed(update.add) == {"out4": ["1 . 6 . 198.51.100.8 . 0-65535 . 443"]}
    gateway.run(update.script())
    assert _connect(lab, "camera", "198.51.100.8", 443) == "open"
    assert _connect(lab, "camera", "198.51.100.7", 443) == "blocked"


def _changed(by_set: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    return {name: list(values) for name, values in by_set.items() if values}


def _ruleset(lab: Lab) -> bytes:
    return subprocess.run(
        [*lab.nft_prefix(), "nft", "list", "ruleset"], capture_output=True, check=True
    ).stdout


def _wait_for_lines(path: Path, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} did not reach {count} lines")


START = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
SHARED_MUD = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mud"


def test_every_shared_mud_profile_compiles_into_a_ruleset_nft_accepts(lab: Lab, gateway: Nftables) -> None:
    files = sorted(SHARED_MUD.glob("*/*.json"))
    if not files:
        pytest.skip(f"{SHARED_MUD} is absent (the shared MUD profiles)")
    profiles = {}
    for path in files:
        profile = parse_mud(path.read_bytes())
        profiles.setdefault(profile.url, profile)
    devices = [
        DeviceBinding(f"d{n}", url, ipaddress.IPv4Address(f"10.64.{n // 250}.{1 + n % 250}"),
                      ipaddress.IPv6Address(f"fd00::{n + 1:x}"), f"02:00:00:00:{n // 256:02x}:{n % 256:02x}")
        for n, url in enumerate(sorted(profiles) * 3)
    ]  # fmt: skip
    names = profile_names(profiles.values())
    dns = {
        name: (ipaddress.ip_address(f"198.18.{n // 250}.{1 + n % 250}"),)
        for n, name in enumerate(sorted(names))
    }
    context = FleetContext(
        local_networks=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")),
        controllers={"urn:ietf:params:mud:dns": (ipaddress.ip_address("10.9.0.53"),),
                     "urn:ietf:params:mud:ntp": (ipaddress.ip_address("10.9.0.123"),),
                     "urn:ietf:params:mud:gateway": (ipaddress.ip_address("10.64.0.254"),),
                     "https://controller.nist.local": (ipaddress.ip_address("10.64.9.1"),)},
        my_controllers={url: (ipaddress.ip_address("10.64.9.2"),) for url in profiles},
    )  # fmt: skip
    fleet = compile_fleet(profiles, devices, context, dns)
    assert fleet.unprofiled == ()
    elements = set_elements(fleet)
    assert len(elements["class4"]) == len(devices)
    assert elements["out4"]
    assert elements["eth_out"]
    gateway.run(render_fleet(fleet, comment="every shared profile"), check_only=True)
    gateway.run(render_fleet(fleet, comment="every shared profile"))
    listed = json.loads(gateway.query("list", "map", "inet", "fleetguard", "class4"))
    [entry] = [item["map"] for item in listed["nftables"] if "map" in item]
    assert len(entry["elem"]) == len(devices)


def test_the_simulation_agrees_with_the_gateway(lab: Lab, gateway: Nftables) -> None:
    # The same flows, tried for real through nftables and judged by the simulation.
    tries = [
        ("camera", "198.51.100.7", 443, "tcp"),
        ("camera", "10.9.0.53", 53, "udp"),
        ("camera", "10.20.0.10", 443, "tcp"),
        ("camera", "198.51.100.8", 443, "tcp"),
        ("corp", "10.1.0.2", 443, "tcp"),
        ("sensor", "198.51.100.7", 443, "tcp"),
        ("corp", "198.51.100.7", 443, "tcp"),
    ]
    observed = [_connect(lab, host, target, port, proto) == "open" for host, target, port, proto in tries]
    flows = [
        Flow(START, lab.hosts[host].address, target, 6 if proto == "tcp" else 17, 40000, port)
        for host, target, port, proto in tries
    ]  # fmt: skip
    simulation = simulate(_fleet({"cloud.example.com": ("198.51.100.7",)}), flows)
    verdicts = {id(v.flow): v.verdict for report in simulation.devices.values() for v in report.blocked}
    judged = [id(flow) not in verdicts for flow in flows]
    assert judged == observed == [True, True, False, False, False, False, True]
    assert simulation.unmanaged == 1
